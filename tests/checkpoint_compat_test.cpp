// Checkpoints written by every earlier version load and continue: each
// fixture under fixtures/checkpoints/v<format>/ (written once by
// fixtures/checkpoints/generate.cpp, never rewritten) is loaded into a fresh
// optimizer or accumulator, the loaded state must equal the state that was
// saved, and the run must continue as it did when the fixture was written.

#include "test_util.h"
#include "fixture_values.h"

#include <flora/flora.h>

#include <torch/serialize.h>

#include <dirent.h>

#include <algorithm>
#include <fstream>
#include <iterator>

namespace {

using flora::Flora;
using flora::FloraOptions;
using flora::FloraParamState;
using flora::ProjectionMode;

const std::string kRoot = std::string(FLORA_FIXTURE_DIR) + "/checkpoints";

c10::IValue read_pickle(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  EXPECT_TRUE(file.good()) << "missing " << path;
  std::vector<char> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  return torch::pickle_load(bytes);
}

using flora::testing::fixture_get;
using flora::testing::fixture_tensors;

// Every fixture: "v1/philox_two_groups" for v1/philox_two_groups.pt and .run.pt.
std::vector<std::string> fixture_names() {
  std::vector<std::string> names;
  if (DIR* root = ::opendir(kRoot.c_str())) {
    while (const dirent* version = ::readdir(root)) {
      const std::string v = version->d_name;
      if (v.size() < 2 || v[0] != 'v') {
        continue;
      }
      if (DIR* dir = ::opendir((kRoot + "/" + v).c_str())) {
        while (const dirent* e = ::readdir(dir)) {
          const std::string file = e->d_name;
          const std::string suffix = ".run.pt";
          if (file.size() > suffix.size() && file.compare(file.size() - suffix.size(), suffix.size(), suffix) == 0) {
            names.push_back(v + "/" + file.substr(0, file.size() - suffix.size()));
          }
        }
        ::closedir(dir);
      }
    }
    ::closedir(root);
  }
  std::sort(names.begin(), names.end());
  return names;
}

// How close a continued run must come to the run that wrote the fixture.
// Loading is lossless in every mode (checked bit for bit right after the
// load), and in reference mode the step is flora-opt's, fixed forever: the
// continuation is bit for bit too. The philox step is ours to make faster,
// and it changed since format 1 (the fused step rounds differently), so
// there the continuation agrees to float32 rounding: what the CPU-vs-GPU
// tests accept, with 8-bit codes allowed to differ by one code.
struct Tolerance {
  bool exact = true;
};

double worst_philox_error = 0.0;
int64_t philox_code_flips = 0;

void expect_close(const torch::Tensor& actual, const torch::Tensor& expected, const Tolerance& tol, const std::string& where) {
  ASSERT_EQ(actual.scalar_type(), expected.scalar_type()) << where;
  ASSERT_EQ(actual.sizes(), expected.sizes()) << where;
  if (tol.exact) {
    EXPECT_TRUE(torch::equal(actual, expected)) << where << " differs";
    return;
  }
  if (actual.scalar_type() == torch::kUInt8) {
    const auto diff = (actual.to(torch::kInt) - expected.to(torch::kInt)).abs();
    EXPECT_LE(diff.max().item<int>(), 1) << where << ": an 8-bit code moved by more than one";
    philox_code_flips += diff.ne(0).sum().item<int64_t>();
    return;
  }
  const double error = flora::testing::relative_error(actual, expected);
  worst_philox_error = std::max(worst_philox_error, error);
  const double bound = actual.scalar_type() == torch::kBFloat16 ? std::ldexp(1.0, -7)
      : actual.scalar_type() == torch::kHalf                    ? std::ldexp(1.0, -10)
                                                                : 1e-5;
  EXPECT_LE(error, bound) << where;
}

// The state as the fixture recorded it (a dict of plain values).
void expect_state(
    const FloraParamState* actual, const c10::IValue& expected, const std::string& where, const Tolerance& tol = {}) {
  ASSERT_EQ(actual == nullptr, expected.isNone()) << where;
  if (actual == nullptr) {
    return;
  }
  EXPECT_EQ(actual->step(), fixture_get(expected, "step").toInt()) << where;
  EXPECT_EQ(actual->seed(), fixture_get(expected, "seed").toInt()) << where;
  const std::pair<const char*, const torch::Tensor*> fields[] = {
      {"rms", &actual->rms()},
      {"exp_avg", &actual->exp_avg()},
      {"exp_avg_sq_row", &actual->exp_avg_sq_row()},
      {"exp_avg_sq_col", &actual->exp_avg_sq_col()},
      {"exp_avg_sq", &actual->exp_avg_sq()},
      {"exp_avg_absmax", &actual->exp_avg_absmax()},
      {"exp_avg_sq_absmax", &actual->exp_avg_sq_absmax()}};
  for (const auto& [name, tensor] : fields) {
    const c10::IValue want = fixture_get(expected, name);
    ASSERT_EQ(tensor->defined(), !want.isNone()) << where << ": " << name;
    if (!want.isNone()) {
      expect_close(*tensor, want.toTensor(), tol, where + ": " + name);
    }
  }
}

class OldCheckpoint : public ::testing::TestWithParam<std::string> {};

TEST_P(OldCheckpoint, LoadsAndContinuesAsItDidWhenWritten) {
  const std::string name = GetParam();
  const auto run = read_pickle(kRoot + "/" + name + ".run.pt");
  const std::string checkpoint = kRoot + "/" + name + ".pt";
  const std::string kind = fixture_get(run, "kind").toStringRef();

  std::vector<torch::Tensor> params;
  for (const auto& t : fixture_tensors(fixture_get(run, "params"))) {
    params.push_back(t.clone().requires_grad_(t.requires_grad()));
  }

  if (kind == "accumulator") {
    flora::CompressedAccumulator acc(
        params, flora::AccumulationOptions(fixture_get(run, "rank").toInt())
                    .seed(fixture_get(run, "seed").toInt())
                    .projection(static_cast<ProjectionMode>(fixture_get(run, "projection").toInt())));
    torch::serialize::InputArchive archive;
    archive.load_from(checkpoint);
    acc.load(archive);
    for (const c10::IValue step : fixture_get(run, "grads").toList()) {
      const auto grads = fixture_tensors(step);
      for (size_t i = 0; i < params.size(); ++i) {
        params[i].mutable_grad() = grads[i].defined() ? grads[i].clone() : torch::Tensor();
      }
      acc.accumulate();
    }
    acc.restore();
    const auto expected = fixture_tensors(fixture_get(run, "restored_grads"));
    for (size_t i = 0; i < params.size(); ++i) {
      ASSERT_EQ(params[i].grad().defined(), expected[i].defined()) << name << " param " << i;
      if (expected[i].defined()) {
        EXPECT_TRUE(torch::equal(params[i].grad(), expected[i])) << name << " param " << i;
      }
    }
    return;
  }

  ASSERT_EQ(kind, "optimizer");
  std::vector<torch::optim::OptimizerParamGroup> groups;
  for (const c10::IValue members : fixture_get(run, "groups").toList()) {
    std::vector<torch::Tensor> group;
    for (const auto i : members.toIntVector()) {
      group.push_back(params.at(i));
    }
    // Placeholder options: load() restores each group's own.
    groups.emplace_back(std::move(group), std::make_unique<FloraOptions>(1.0));
  }
  Flora opt(groups, FloraOptions(1.0));
  torch::load(opt, checkpoint);

  const auto saved = fixture_get(run, "saved_states").toList();
  for (size_t i = 0; i < params.size(); ++i) {
    expect_state(flora::testing::state_of<FloraParamState>(opt, params[i]), saved.get(i), name + " (as loaded) param " + std::to_string(i));
  }
  for (const c10::IValue step : fixture_get(run, "grads").toList()) {
    const auto grads = fixture_tensors(step);
    for (size_t i = 0; i < params.size(); ++i) {
      params[i].mutable_grad() = grads[i].defined() ? grads[i].clone() : torch::Tensor();
    }
    opt.step();
  }
  const auto final_params = fixture_tensors(fixture_get(run, "final_params"));
  const auto final_states = fixture_get(run, "final_states").toList();
  Tolerance tol;
  tol.exact = static_cast<const FloraOptions&>(opt.param_groups()[0].options()).projection() == ProjectionMode::reference;
  for (size_t i = 0; i < params.size(); ++i) {
    const std::string where = name + " (continued) param " + std::to_string(i);
    expect_close(params[i].detach(), final_params[i], tol, where);
    expect_state(flora::testing::state_of<FloraParamState>(opt, params[i]), final_states.get(i), where, tol);
  }
  if (!tol.exact) {
    std::cout << "[ compat   ] " << name << ": continued within relative error " << worst_philox_error << ", "
              << philox_code_flips << " 8-bit codes one apart" << std::endl;
    worst_philox_error = 0.0;
    philox_code_flips = 0;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Fixtures,
    OldCheckpoint,
    ::testing::ValuesIn(fixture_names()),
    [](const auto& info) {
      std::string n = info.param;
      std::replace(n.begin(), n.end(), '/', '_');
      return n;
    });

TEST(OldCheckpoint, EveryFormatVersionHasFixtures) {
  const auto names = fixture_names();
  EXPECT_GE(names.size(), 8u) << "fixtures missing under " << kRoot;
  EXPECT_TRUE(std::any_of(names.begin(), names.end(), [](const std::string& n) { return n.rfind("v1/", 0) == 0; }));
}

} // namespace
