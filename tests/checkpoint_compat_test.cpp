// Checkpoints written by every earlier version load and continue: each
// fixture under fixtures/checkpoints/v<format>/ (written once by
// fixtures/checkpoints/generate.cpp, never rewritten) is loaded into a fresh
// optimizer or accumulator, the loaded state must equal the state that was
// saved, and the run must continue as it did when the fixture was written.

#include "test_util.h"

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

c10::IValue get(const c10::IValue& dict, const std::string& key) {
  const auto d = dict.toGenericDict();
  const auto it = d.find(key);
  return it == d.end() ? c10::IValue() : it->value();
}

std::vector<torch::Tensor> tensors(const c10::IValue& list) {
  std::vector<torch::Tensor> out;
  for (const c10::IValue v : list.toList()) {
    out.push_back(v.isNone() ? torch::Tensor() : v.toTensor());
  }
  return out;
}

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

// The state as the fixture recorded it (a dict of plain values).
void expect_state(const FloraParamState* actual, const c10::IValue& expected, const std::string& where) {
  ASSERT_EQ(actual == nullptr, expected.isNone()) << where;
  if (actual == nullptr) {
    return;
  }
  EXPECT_EQ(actual->step(), get(expected, "step").toInt()) << where;
  EXPECT_EQ(actual->seed(), get(expected, "seed").toInt()) << where;
  const std::pair<const char*, const torch::Tensor*> fields[] = {
      {"rms", &actual->rms()},
      {"exp_avg", &actual->exp_avg()},
      {"exp_avg_sq_row", &actual->exp_avg_sq_row()},
      {"exp_avg_sq_col", &actual->exp_avg_sq_col()},
      {"exp_avg_sq", &actual->exp_avg_sq()},
      {"exp_avg_absmax", &actual->exp_avg_absmax()},
      {"exp_avg_sq_absmax", &actual->exp_avg_sq_absmax()}};
  for (const auto& [name, tensor] : fields) {
    const c10::IValue want = get(expected, name);
    ASSERT_EQ(tensor->defined(), !want.isNone()) << where << ": " << name;
    if (!want.isNone()) {
      EXPECT_EQ(tensor->scalar_type(), want.toTensor().scalar_type()) << where << ": " << name;
      EXPECT_TRUE(torch::equal(*tensor, want.toTensor())) << where << ": " << name << " differs";
    }
  }
}

class OldCheckpoint : public ::testing::TestWithParam<std::string> {};

TEST_P(OldCheckpoint, LoadsAndContinuesAsItDidWhenWritten) {
  const std::string name = GetParam();
  const auto run = read_pickle(kRoot + "/" + name + ".run.pt");
  const std::string checkpoint = kRoot + "/" + name + ".pt";
  const std::string kind = get(run, "kind").toStringRef();

  std::vector<torch::Tensor> params;
  for (const auto& t : tensors(get(run, "params"))) {
    params.push_back(t.clone().requires_grad_(t.requires_grad()));
  }

  if (kind == "accumulator") {
    flora::CompressedAccumulator acc(
        params, flora::AccumulationOptions(get(run, "rank").toInt())
                    .seed(get(run, "seed").toInt())
                    .projection(static_cast<ProjectionMode>(get(run, "projection").toInt())));
    torch::serialize::InputArchive archive;
    archive.load_from(checkpoint);
    acc.load(archive);
    for (const c10::IValue step : get(run, "grads").toList()) {
      const auto grads = tensors(step);
      for (size_t i = 0; i < params.size(); ++i) {
        params[i].mutable_grad() = grads[i].defined() ? grads[i].clone() : torch::Tensor();
      }
      acc.accumulate();
    }
    acc.restore();
    const auto expected = tensors(get(run, "restored_grads"));
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
  for (const c10::IValue members : get(run, "groups").toList()) {
    std::vector<torch::Tensor> group;
    for (const auto i : members.toIntVector()) {
      group.push_back(params.at(i));
    }
    // Placeholder options: load() restores each group's own.
    groups.emplace_back(std::move(group), std::make_unique<FloraOptions>(1.0));
  }
  Flora opt(groups, FloraOptions(1.0));
  torch::load(opt, checkpoint);

  const auto saved = get(run, "saved_states").toList();
  for (size_t i = 0; i < params.size(); ++i) {
    expect_state(flora::testing::state_of<FloraParamState>(opt, params[i]), saved.get(i), name + " (as loaded) param " + std::to_string(i));
  }
  for (const c10::IValue step : get(run, "grads").toList()) {
    const auto grads = tensors(step);
    for (size_t i = 0; i < params.size(); ++i) {
      params[i].mutable_grad() = grads[i].defined() ? grads[i].clone() : torch::Tensor();
    }
    opt.step();
  }
  const auto final_params = tensors(get(run, "final_params"));
  const auto final_states = get(run, "final_states").toList();
  for (size_t i = 0; i < params.size(); ++i) {
    const std::string where = name + " (continued) param " + std::to_string(i);
    EXPECT_EQ(params[i].scalar_type(), final_params[i].scalar_type()) << where;
    EXPECT_TRUE(torch::equal(params[i].detach(), final_params[i])) << where;
    expect_state(flora::testing::state_of<FloraParamState>(opt, params[i]), final_states.get(i), where);
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
