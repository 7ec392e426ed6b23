// Parity with the reference Python package flora-opt 0.0.3: the fixtures in
// fixtures/parity/ were written by fixtures/parity/generate.py, which runs
// the real package. Here ProjectionMode::reference must reproduce its
// parameters and state after every step to 1e-6 relative error; it does so
// bit for bit when the BLAS takes the code path the generator took
// (reproducible_blas.cpp pins it for this binary).

#include "parity_fixture.h"
#include "test_util.h"

#include <flora/flora.h>

namespace {

using flora::testing::fixture_get;
using flora::testing::ParityFixture;
using flora::testing::relative_error;

constexpr double kTolerance = 1e-6;

double worst_error = 0.0; // over one fixture, reported at its end
int64_t worst_code_mismatch = 0;

void expect_close(const torch::Tensor& actual, const torch::Tensor& expected, const std::string& what) {
  ASSERT_TRUE(actual.defined()) << what << " is missing";
  ASSERT_EQ(actual.sizes(), expected.sizes()) << what;
  const double error = relative_error(actual, expected);
  worst_error = std::max(worst_error, error);
  EXPECT_LE(error, kTolerance) << what;
}

class Parity : public ::testing::TestWithParam<std::string> {};

TEST_P(Parity, MatchesFloraOptEveryStep) {
  const auto fixture = ParityFixture::load(GetParam());
  worst_error = 0.0;
  worst_code_mismatch = 0;
  auto params = fixture.initial_params();
  auto optimizer_ptr = fixture.make_optimizer(params, flora::ProjectionMode::reference);
  auto& optimizer = *optimizer_ptr;

  const auto params_after = fixture.get("params_after").toList();
  const auto state_after = fixture.get("state_after").toList();
  const size_t steps = fixture.steps();
  ASSERT_GE(steps, 10u);
  for (size_t step = 0; step < steps; ++step) {
    fixture.set_grads(params, step);
    optimizer.step();

    const auto expected_params = params_after.get(step).toList();
    const auto expected_states = state_after.get(step).toList();
    for (size_t i = 0; i < params.size(); ++i) {
      const std::string where = GetParam() + " step " + std::to_string(step + 1) + " param " + std::to_string(i);
      const auto expected_param = expected_params.get(i).toTensor();
      ASSERT_EQ(params[i].scalar_type(), expected_param.scalar_type()) << where;
      expect_close(params[i].detach(), expected_param, where + " value");

      const auto expected = expected_states.get(i);
      auto found = optimizer.state().find(params[i].unsafeGetTensorImpl());
      const bool has_steps = !fixture_get(expected, "step").isNone();
      if (!has_steps) {
        // flora-opt keeps only a seed for parameters that never had a gradient.
        EXPECT_TRUE(found == optimizer.state().end() ||
                    static_cast<const flora::FloraParamState&>(*found->second).step() == 0)
            << where;
        continue;
      }
      ASSERT_TRUE(found != optimizer.state().end()) << where << " has no state";
      const auto& state = static_cast<const flora::FloraParamState&>(*found->second);
      EXPECT_EQ(state.step(), fixture_get(expected, "step").toInt()) << where;
      EXPECT_EQ(state.seed(), fixture_get(expected, "seed").toInt()) << where;
      expect_close(state.rms(), fixture_get(expected, "RMS").toTensor(), where + " RMS");
      struct Moment {
        const char* key;
        torch::Tensor value;
        torch::Tensor absmax; // defined when quantized
      };
      const Moment moments[] = {
          {"exp_avg", state.exp_avg(), state.exp_avg_absmax()},
          {"exp_avg_sq_row", state.exp_avg_sq_row(), {}},
          {"exp_avg_sq_col", state.exp_avg_sq_col(), {}},
          {"exp_avg_sq", state.exp_avg_sq(), state.exp_avg_sq_absmax()}};
      for (const auto& [key, actual, absmax] : moments) {
        const auto reference = fixture_get(expected, key);
        if (reference.isNone()) {
          EXPECT_FALSE(actual.defined()) << where << " has an unexpected " << key;
          continue;
        }
        const auto codes = fixture_get(expected, std::string(key) + "_q");
        if (codes.isNone()) {
          expect_close(actual, reference.toTensor(), where + " " + key);
          continue;
        }
        // Quantized: the same 8-bit codes, absmax, and dequantized values.
        ASSERT_TRUE(absmax.defined()) << where << " " << key << " is not quantized";
        ASSERT_EQ(actual.scalar_type(), torch::kUInt8) << where << " " << key;
        const int64_t differing = actual.ne(codes.toTensor()).sum().item<int64_t>();
        worst_code_mismatch = std::max(worst_code_mismatch, differing);
        EXPECT_EQ(differing, 0) << where << " " << key << " codes";
        expect_close(absmax, fixture_get(expected, std::string(key) + "_absmax").toTensor(), where + " " + key + " absmax");
        const auto block = fixture.get("quant_block_size").toInt();
        expect_close(
            flora::dequantize_blockwise({actual, absmax}, block), reference.toTensor(),
            where + " " + key + " dequantized");
      }
    }
  }
  std::cout << "[ parity   ] " << GetParam() << ": " << steps
            << " steps, largest relative error " << worst_error
            << (fixture.get("quant_code").isNone() ? std::string()
                                                   : ", 8-bit codes differing " + std::to_string(worst_code_mismatch))
            << std::endl;
  RecordProperty("largest_relative_error", std::to_string(worst_error));
}

INSTANTIATE_TEST_SUITE_P(
    FloraOpt003,
    Parity,
    ::testing::ValuesIn(flora::testing::parity_fixture_names()),
    [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

} // namespace
