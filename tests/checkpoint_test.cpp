// Checkpoints: torch::save / torch::load of a Flora optimizer resume
// bit-identically; bad checkpoints fail cleanly and change nothing;
// save_atomic never leaves a partial file.

#include "test_util.h"

#include <flora/flora.h>

#include <limits>

#include <functional>

#include <fstream>

namespace {

using flora::Flora;
using flora::FloraOptions;
using flora::FloraParamState;
using flora::ProjectionMode;
using flora::testing::expect_error;
using flora::testing::param;
using flora::testing::randn_like_seeded;

using flora::testing::TempDir;

struct Model {
  std::vector<torch::Tensor> params;
  std::vector<torch::optim::OptimizerParamGroup> groups(FloraOptions second) const {
    std::vector<torch::optim::OptimizerParamGroup> g;
    g.emplace_back(std::vector<torch::Tensor>{params[0], params[1], params[2]});
    g.emplace_back(std::vector<torch::Tensor>{params[3], params[4]}, std::make_unique<FloraOptions>(second));
    return g;
  }
};

Model make_model() {
  return Model{{param({8, 16}, 1), param({24, 8}, 2), param({7}, 3), param({10, 10}, 4, torch::kBFloat16), param({}, 5)}};
}

void set_grads(const Model& m, int step) {
  for (size_t i = 0; i < m.params.size(); ++i) {
    m.params[i].mutable_grad() = randn_like_seeded(m.params[i], step * 100 + i);
  }
}

std::unique_ptr<Flora> make_optimizer(const Model& m, ProjectionMode mode) {
  const auto defaults = FloraOptions(1e-2).beta1(0.9).rank(4).kappa(3).projection(mode);
  const auto second = FloraOptions(3e-3).beta1(0.8).rank(2).kappa(2).weight_decay(0.01).projection(mode);
  return std::make_unique<Flora>(m.groups(second), defaults);
}

std::vector<torch::Tensor> snapshot(const Model& m) {
  std::vector<torch::Tensor> out;
  for (const auto& p : m.params) {
    out.push_back(p.detach().clone());
  }
  return out;
}

void restore(const Model& m, const std::vector<torch::Tensor>& values) {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < m.params.size(); ++i) {
    m.params[i].copy_(values[i]);
  }
}

std::vector<FloraParamState> states(const Flora& opt, const Model& m) {
  std::vector<FloraParamState> out;
  for (const auto& p : m.params) {
    const auto it = opt.state().find(p.unsafeGetTensorImpl());
    out.push_back(it == opt.state().end() ? FloraParamState() : static_cast<const FloraParamState&>(*it->second));
  }
  return out;
}

class Resume : public ::testing::TestWithParam<ProjectionMode> {};

TEST_P(Resume, SaveLoadContinueEqualsTheUninterruptedRun) {
  TempDir dir;
  const int total = 11, split = 5; // resamples happen after the split too

  // Uninterrupted.
  auto model = make_model();
  const auto initial = snapshot(model);
  auto straight = make_optimizer(model, GetParam());
  for (int s = 1; s <= total; ++s) {
    set_grads(model, s);
    straight->step();
  }
  const auto expected = snapshot(model);
  const auto expected_states = states(*straight, model);

  // Interrupted: run, save, build a fresh optimizer (and fresh parameter
  // tensors, as a restarted process would), load, continue.
  auto first = make_model();
  restore(first, initial);
  {
    auto opt = make_optimizer(first, GetParam());
    for (int s = 1; s <= split; ++s) {
      set_grads(first, s);
      opt->step();
    }
    torch::save(*opt, dir.file("opt.pt"));
  }
  auto second = make_model();
  restore(second, snapshot(first));
  auto resumed = make_optimizer(second, GetParam());
  torch::load(*resumed, dir.file("opt.pt"));
  for (int s = split + 1; s <= total; ++s) {
    set_grads(second, s);
    resumed->step();
  }
  const auto actual = snapshot(second);
  const auto actual_states = states(*resumed, second);
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_TRUE(torch::equal(actual[i], expected[i])) << "param " << i;
    EXPECT_TRUE(actual_states[i] == expected_states[i]) << "state " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(
    BothModes,
    Resume,
    ::testing::Values(ProjectionMode::philox, ProjectionMode::reference),
    [](const auto& info) { return info.param == ProjectionMode::philox ? "philox" : "reference"; });

TEST(Checkpoint, LoadRestoresOptionsOfEveryGroup) {
  TempDir dir;
  auto model = make_model();
  auto opt = make_optimizer(model, ProjectionMode::philox);
  static_cast<FloraOptions&>(opt->param_groups()[1].options()).lr(0.5);
  torch::save(*opt, dir.file("opt.pt"));
  auto other = make_optimizer(model, ProjectionMode::philox);
  torch::load(*other, dir.file("opt.pt"));
  EXPECT_EQ(other->param_groups()[1].options().get_lr(), 0.5);
  EXPECT_TRUE(
      static_cast<const FloraOptions&>(other->param_groups()[0].options()) ==
      static_cast<const FloraOptions&>(opt->param_groups()[0].options()));
}

// Loading a checkpoint that does not fit must throw and change nothing.
void expect_load_fails_cleanly(Flora& target, const Model& model, const std::string& path, const std::string& message) {
  const auto params_before = snapshot(model);
  const auto states_before = states(target, model);
  std::vector<FloraOptions> options_before;
  for (const auto& g : target.param_groups()) {
    options_before.push_back(static_cast<const FloraOptions&>(g.options()));
  }
  expect_error([&] { torch::load(target, path); }, message);
  const auto params_after = snapshot(model);
  const auto states_after = states(target, model);
  for (size_t i = 0; i < params_before.size(); ++i) {
    EXPECT_TRUE(torch::equal(params_after[i], params_before[i]));
    EXPECT_TRUE(states_after[i] == states_before[i]) << "state " << i << " changed";
  }
  for (size_t g = 0; g < options_before.size(); ++g) {
    EXPECT_TRUE(static_cast<const FloraOptions&>(target.param_groups()[g].options()) == options_before[g]);
  }
}

// A checkpoint of make_model()'s optimizer after one step, at `path`.
void save_after_one_step(const std::string& path, const std::function<void(Flora&)>& before_save = nullptr) {
  auto model = make_model();
  auto opt = make_optimizer(model, ProjectionMode::philox);
  set_grads(model, 1);
  opt->step();
  if (before_save) {
    before_save(*opt);
  }
  torch::save(*opt, path);
}

TEST(Checkpoint, DifferentShapesFailCleanly) {
  TempDir dir;
  save_after_one_step(dir.file("opt.pt"));

  auto other = make_model();
  other.params[1] = param({24, 12}, 2); // was (24, 8)
  auto target = make_optimizer(other, ProjectionMode::philox);
  set_grads(other, 1);
  target->step();
  expect_load_fails_cleanly(*target, other, dir.file("opt.pt"), "'exp_avg_sq_col' has shape [8], expected [12]");
}

TEST(Checkpoint, DifferentGroupStructureFailsCleanly) {
  TempDir dir;
  save_after_one_step(dir.file("opt.pt"));

  auto other = make_model();
  Flora one_group(other.params, FloraOptions(1e-2));
  set_grads(other, 2);
  one_group.step();
  expect_load_fails_cleanly(one_group, other, dir.file("opt.pt"), "the checkpoint has 2 param groups, this optimizer 1");

  auto fewer = make_model();
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<torch::Tensor>{fewer.params[0], fewer.params[1]});
  groups.emplace_back(std::vector<torch::Tensor>{fewer.params[3], fewer.params[4]});
  Flora short_group(groups, FloraOptions(1e-2));
  expect_load_fails_cleanly(short_group, fewer, dir.file("opt.pt"), "param group 0 has 3 parameters in the checkpoint, 2 in this optimizer");
}

TEST(Checkpoint, ChangedCompressionFailsCleanly) {
  // The same shapes, but the checkpoint's options compress a parameter that
  // the state claims is uncompressed: caught by the layout check.
  TempDir dir;
  save_after_one_step(dir.file("opt.pt"), [](Flora& opt) {
    static_cast<FloraOptions&>(opt.param_groups()[0].options()).rank(std::nullopt);
  });
  auto other = make_model();
  auto target = make_optimizer(other, ProjectionMode::philox);
  expect_load_fails_cleanly(*target, other, dir.file("opt.pt"), "'exp_avg' has shape [4, 16], expected [8, 16]");
}

TEST(Checkpoint, OtherOptimizersAndGarbageFailCleanly) {
  TempDir dir;
  auto model = make_model();
  torch::optim::Adam adam(model.params, torch::optim::AdamOptions(1e-3));
  torch::save(adam, dir.file("adam.pt"));
  {
    std::ofstream garbage(dir.file("garbage.pt"), std::ios::binary);
    garbage << "this is not a checkpoint";
  }
  auto target = make_optimizer(model, ProjectionMode::philox);
  set_grads(model, 1);
  target->step();
  expect_load_fails_cleanly(*target, model, dir.file("adam.pt"), "this is a torch::optim::Adam or AdamW checkpoint");
  const auto before = states(*target, model);
  EXPECT_ANY_THROW(torch::load(*target, dir.file("garbage.pt")));
  EXPECT_ANY_THROW(torch::load(*target, dir.file("missing.pt")));
  const auto after = states(*target, model);
  for (size_t i = 0; i < before.size(); ++i) {
    EXPECT_TRUE(after[i] == before[i]);
  }
}

TEST(Checkpoint, EachForeignCheckpointIsNamed) {
  TempDir dir;
  auto model = make_model();
  torch::optim::SGD sgd(model.params, torch::optim::SGDOptions(0.1).momentum(0.9));
  torch::save(sgd, dir.file("sgd.pt"));
  torch::optim::RMSprop rmsprop(model.params, torch::optim::RMSpropOptions(0.1));
  torch::save(rmsprop, dir.file("rmsprop.pt"));
  flora::CompressedAccumulator accumulator(model.params, flora::AccumulationOptions(2));
  {
    torch::serialize::OutputArchive archive;
    accumulator.save(archive);
    archive.save_to(dir.file("accumulator.pt"));
  }
  torch::nn::Linear linear(4, 3);
  torch::save(linear, dir.file("module.pt"));

  auto target = make_optimizer(model, ProjectionMode::philox);
  set_grads(model, 1);
  target->step();
  expect_load_fails_cleanly(*target, model, dir.file("sgd.pt"), "this is a torch::optim::SGD checkpoint");
  expect_load_fails_cleanly(*target, model, dir.file("rmsprop.pt"), "this is a torch::optim::RMSprop checkpoint");
  expect_load_fails_cleanly(*target, model, dir.file("accumulator.pt"), "this is a flora::CompressedAccumulator checkpoint");
  expect_load_fails_cleanly(*target, model, dir.file("module.pt"), "not an optimizer checkpoint (no 'param_groups'");
}

TEST(Checkpoint, ANewerFormatIsRefusedNamingBothVersions) {
  TempDir dir;
  auto model = make_model();
  auto opt = make_optimizer(model, ProjectionMode::philox);
  set_grads(model, 1);
  opt->step();
  {
    // What a later flora would write: today's layout under a higher version.
    torch::serialize::OutputArchive archive;
    torch::optim::serialize<FloraParamState, FloraOptions>(archive, *opt);
    archive.write("flora_format", c10::IValue(int64_t{999}));
    archive.save_to(dir.file("future.pt"));
  }
  expect_load_fails_cleanly(*opt, model, dir.file("future.pt"), "the checkpoint has format 999, written by a newer flora; this flora reads formats 1 to ");
}

// A step count no run reaches (the fuzz target's 2^63 - 1, which the next
// step would overflow) is refused at load; a base seed at the int64 limit
// still steps (parameter seeds wrap around instead of overflowing).
TEST(Checkpoint, AStepCountBeyond2To62IsRefused) {
  TempDir dir;
  auto model = make_model();
  auto opt = make_optimizer(model, ProjectionMode::philox);
  set_grads(model, 1);
  opt->step();
  auto& state = static_cast<FloraParamState&>(*opt->state().at(model.params[0].unsafeGetTensorImpl()));
  state.step(std::numeric_limits<int64_t>::max());
  torch::save(*opt, dir.file("huge_step.pt"));
  auto target = make_optimizer(model, ProjectionMode::philox);
  set_grads(model, 1);
  target->step();
  expect_load_fails_cleanly(*target, model, dir.file("huge_step.pt"), "has step count 9223372036854775807, beyond 2^62");

  for (const auto mode : {ProjectionMode::philox, ProjectionMode::reference}) {
    std::vector<torch::Tensor> params = {torch::randn({6, 12}, torch::requires_grad())};
    flora::Flora edge(params, flora::FloraOptions(1e-2).beta1(0.9).rank(2).projection(mode).seed(
                                  std::numeric_limits<int64_t>::max()));
    params[0].mutable_grad() = torch::randn({6, 12});
    edge.step();
    const auto& s = static_cast<const FloraParamState&>(*edge.state().at(params[0].unsafeGetTensorImpl()));
    EXPECT_EQ(s.seed(), std::numeric_limits<int64_t>::min()); // max + 1, wrapped
  }
}

// At the bound itself a checkpoint loads, and the step that would count past
// it throws before changing anything, so that what the optimizer holds always
// saves and loads back (the fuzz target loaded 2^62, stepped, and its own
// checkpoint was refused). A capturable CPU state counts in its counters.
TEST(Checkpoint, AStateAtTheStepBoundRefusesToStepAndStillSavesAndLoads) {
  for (const auto mode : {ProjectionMode::philox, ProjectionMode::reference}) {
    for (const bool capturable : {false, true}) {
      if (capturable && mode == ProjectionMode::reference) {
        continue; // capturable is philox only
      }
      SCOPED_TRACE(testing::Message() << "mode " << static_cast<int>(mode) << " capturable " << capturable);
      TempDir dir;
      std::vector<torch::Tensor> params = {torch::randn({6, 12}, torch::requires_grad())};
      flora::Flora opt(params, flora::FloraOptions(1e-2).beta1(0.9).rank(2).projection(mode).capturable(capturable).check_finite(!capturable));
      params[0].mutable_grad() = torch::randn({6, 12});
      opt.step();
      auto& state = static_cast<FloraParamState&>(*opt.state().at(params[0].unsafeGetTensorImpl()));
      if (capturable) {
        ASSERT_TRUE(state.counters().defined());
        state.counters().data_ptr<int64_t>()[0] = int64_t{1} << 62;
      } else {
        state.step(int64_t{1} << 62);
      }
      const auto before = FloraParamState(state);
      const auto counters_before = capturable ? state.counters().clone() : torch::Tensor();
      const auto param_before = params[0].detach().clone();
      try {
        opt.step();
        FAIL() << "a step past 2^62 did not throw";
      } catch (const c10::Error& e) {
        EXPECT_NE(std::string(e.what()).find("has taken 4611686018427387904 steps, the most a Flora state counts (2^62)"),
                  std::string::npos)
            << e.what();
      }
      EXPECT_TRUE(torch::equal(params[0], param_before));
      EXPECT_EQ(state.step(), before.step());
      if (capturable) {
        EXPECT_TRUE(torch::equal(state.counters(), counters_before));
      }
      torch::save(opt, dir.file("at_bound.pt"));
      flora::Flora again(params, flora::FloraOptions(1e-2).beta1(0.9).rank(2).projection(mode).capturable(capturable).check_finite(!capturable));
      torch::load(again, dir.file("at_bound.pt"));
      const auto& loaded = static_cast<const FloraParamState&>(*again.state().at(params[0].unsafeGetTensorImpl()));
      EXPECT_EQ(loaded.step(), int64_t{1} << 62);
    }
  }
}

// The reverse direction: torch's own optimizers reject a Flora checkpoint
// (their options lack Flora's keys) before changing anything.
TEST(Checkpoint, TorchOptimizersRejectAFloraCheckpointUnchanged) {
  TempDir dir;
  save_after_one_step(dir.file("flora.pt"));
  auto model = make_model();
  torch::optim::Adam adam(model.params, torch::optim::AdamOptions(1e-3));
  set_grads(model, 1);
  adam.step();
  std::vector<torch::Tensor> before;
  for (const auto& p : model.params) {
    const auto& s = static_cast<const torch::optim::AdamParamState&>(*adam.state().at(p.unsafeGetTensorImpl()));
    before.push_back(s.exp_avg().clone());
  }
  EXPECT_THROW(torch::load(adam, dir.file("flora.pt")), c10::Error);
  EXPECT_DOUBLE_EQ(adam.param_groups()[0].options().get_lr(), 1e-3);
  for (size_t i = 0; i < model.params.size(); ++i) {
    const auto& s =
        static_cast<const torch::optim::AdamParamState&>(*adam.state().at(model.params[i].unsafeGetTensorImpl()));
    EXPECT_TRUE(torch::equal(s.exp_avg(), before[i])) << i;
    EXPECT_EQ(s.step(), 1) << i;
  }
}

TEST(Checkpoint, SaveAtomicReplacesTheFileAndLeavesNoTemporaries) {
  TempDir dir;
  auto model = make_model();
  auto opt = make_optimizer(model, ProjectionMode::philox);
  set_grads(model, 1);
  opt->step();
  const auto path = dir.file("opt.pt");
  {
    std::ofstream old(path);
    old << "old contents";
  }
  flora::save_atomic(*opt, path);
  auto other = make_optimizer(model, ProjectionMode::philox);
  torch::load(*other, path);
  const auto a = states(*opt, model);
  const auto b = states(*other, model);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(a[i] == b[i]);
  }
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"opt.pt"});
}

TEST(Checkpoint, SaveAtomicIntoAMissingDirectoryThrowsAndWritesNothing) {
  TempDir dir;
  auto model = make_model();
  auto opt = make_optimizer(model, ProjectionMode::philox);
  expect_error([&] { flora::save_atomic(*opt, dir.file("no/such/dir/opt.pt")); }, "cannot create a temporary file beside");
  EXPECT_TRUE(dir.entries().empty());
}

} // namespace
