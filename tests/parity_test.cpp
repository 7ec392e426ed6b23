// Parity with the reference Python package flora-opt 0.0.3: the fixtures in
// fixtures/parity/ were written by fixtures/parity/generate.py, which runs
// the real package. Here ProjectionMode::reference must reproduce its
// parameters and state after every step to 1e-6 relative error.

#include "test_util.h"

#include <flora/flora.h>

#include <torch/serialize.h>

#include <fstream>
#include <iterator>

namespace {

using flora::testing::relative_error;

constexpr double kTolerance = 1e-6;

c10::IValue load_fixture(const std::string& name) {
  const std::string path = std::string(FLORA_FIXTURE_DIR) + "/parity/" + name + ".pt";
  std::ifstream file(path, std::ios::binary);
  EXPECT_TRUE(file.good()) << "missing fixture " << path;
  std::vector<char> data((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  return torch::pickle_load(data);
}

c10::IValue get(const c10::IValue& dict, const std::string& key) {
  const auto d = dict.toGenericDict();
  auto it = d.find(key);
  if (it == d.end()) {
    return c10::IValue();
  }
  return it->value();
}

// Applies the keys present in `kwargs` (flora-opt constructor names).
void apply(flora::FloraOptions& o, const c10::IValue& kwargs) {
  for (const auto& entry : kwargs.toGenericDict()) {
    const std::string key = entry.key().toStringRef();
    const c10::IValue& v = entry.value();
    if (key == "lr") {
      o.lr(v.toOptional<double>());
    } else if (key == "rank") {
      o.rank(v.toOptional<int64_t>());
    } else if (key == "kappa") {
      o.kappa(v.toInt());
    } else if (key == "eps") {
      const auto t = v.toTupleRef().elements();
      o.eps(std::make_tuple(t[0].toDouble(), t[1].toDouble()));
    } else if (key == "clip_threshold") {
      o.clip_threshold(v.toDouble());
    } else if (key == "decay_rate") {
      o.decay_rate(v.toDouble());
    } else if (key == "beta1") {
      o.beta1(v.toOptional<double>());
    } else if (key == "weight_decay") {
      o.weight_decay(v.toDouble());
    } else if (key == "scale_parameter") {
      o.scale_parameter(v.toBool());
    } else if (key == "relative_step") {
      o.relative_step(v.toBool());
    } else if (key == "warmup_init") {
      o.warmup_init(v.toBool());
    } else if (key == "factorize_second_moment") {
      o.factorize_second_moment(v.toBool());
    } else if (key == "seed") {
      o.seed(v.toInt());
    } else {
      FAIL() << "unknown option in fixture: " << key;
    }
  }
}

double worst_error = 0.0; // over one fixture, reported at its end

void expect_close(const torch::Tensor& actual, const torch::Tensor& expected, const std::string& what) {
  ASSERT_TRUE(actual.defined()) << what << " is missing";
  ASSERT_EQ(actual.sizes(), expected.sizes()) << what;
  const double error = relative_error(actual, expected);
  worst_error = std::max(worst_error, error);
  EXPECT_LE(error, kTolerance) << what;
}

class Parity : public ::testing::TestWithParam<std::string> {};

TEST_P(Parity, MatchesFloraOptEveryStep) {
  const auto fixture = load_fixture(GetParam());
  ASSERT_TRUE(fixture.isGenericDict());
  worst_error = 0.0;

  const auto initial = get(fixture, "params").toList();
  const auto requires_grad = get(fixture, "requires_grad").toList();
  std::vector<torch::Tensor> params;
  for (size_t i = 0; i < initial.size(); ++i) {
    params.push_back(initial.get(i).toTensor().clone().requires_grad_(requires_grad.get(i).toBool()));
  }

  flora::FloraOptions defaults;
  apply(defaults, get(fixture, "options"));
  defaults.projection(flora::ProjectionMode::reference);

  std::vector<torch::optim::OptimizerParamGroup> groups;
  for (const c10::IValue group : get(fixture, "groups").toList()) {
    std::vector<torch::Tensor> members;
    for (const auto& index : get(group, "params").toList()) {
      members.push_back(params.at(static_cast<c10::IValue>(index).toInt()));
    }
    auto options = std::make_unique<flora::FloraOptions>(defaults);
    apply(*options, get(group, "options"));
    groups.emplace_back(std::move(members), std::move(options));
  }
  flora::Flora optimizer(groups, defaults);

  const auto grads = get(fixture, "grads").toList();
  const auto params_after = get(fixture, "params_after").toList();
  const auto state_after = get(fixture, "state_after").toList();
  ASSERT_GE(grads.size(), 10u);
  for (size_t step = 0; step < grads.size(); ++step) {
    const auto step_grads = grads.get(step).toList();
    for (size_t i = 0; i < params.size(); ++i) {
      const auto g = step_grads.get(i);
      params[i].mutable_grad() = g.isNone() ? torch::Tensor() : g.toTensor().clone();
    }
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
      const bool has_steps = !get(expected, "step").isNone();
      if (!has_steps) {
        // flora-opt keeps only a seed for parameters that never had a gradient.
        EXPECT_TRUE(found == optimizer.state().end() ||
                    static_cast<const flora::FloraParamState&>(*found->second).step() == 0)
            << where;
        continue;
      }
      ASSERT_TRUE(found != optimizer.state().end()) << where << " has no state";
      const auto& state = static_cast<const flora::FloraParamState&>(*found->second);
      EXPECT_EQ(state.step(), get(expected, "step").toInt()) << where;
      EXPECT_EQ(state.seed(), get(expected, "seed").toInt()) << where;
      expect_close(state.rms(), get(expected, "RMS").toTensor(), where + " RMS");
      const std::pair<const char*, torch::Tensor> tensors[] = {
          {"exp_avg", state.exp_avg()},
          {"exp_avg_sq_row", state.exp_avg_sq_row()},
          {"exp_avg_sq_col", state.exp_avg_sq_col()},
          {"exp_avg_sq", state.exp_avg_sq()}};
      for (const auto& [key, actual] : tensors) {
        const auto reference = get(expected, key);
        if (reference.isNone()) {
          EXPECT_FALSE(actual.defined()) << where << " has an unexpected " << key;
        } else {
          expect_close(actual, reference.toTensor(), where + " " + key);
        }
      }
    }
  }
  std::cout << "[ parity   ] " << GetParam() << ": " << grads.size()
            << " steps, largest relative error " << worst_error << std::endl;
  RecordProperty("largest_relative_error", std::to_string(worst_error));
}

INSTANTIATE_TEST_SUITE_P(
    FloraOpt003,
    Parity,
    ::testing::Values(
        "factored_no_momentum",
        "full_second_moment",
        "momentum_uncompressed",
        "compressed",
        "compressed_kappa1",
        "compressed_full_second_moment",
        "relative_step",
        "relative_step_warmup",
        "no_scale_parameter",
        "weight_decay",
        "half_precision",
        "param_groups",
        "large_seed"),
    [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

} // namespace
