// Faults in the middle of a step: an allocation that fails at any point of a
// step (the k-th allocation through c10's CPU allocator, for every k the step
// makes) must leave every parameter and every state tensor as it was, on the
// fused path (philox), on flora-opt's path (reference) and on the path of the
// update fused into backward (step_parameter).

#include "test_util.h"

#include <flora/flora.h>

#include <c10/core/CPUAllocator.h>

#include <limits>

namespace {

using flora::Flora;
using flora::FloraOptions;
using flora::FloraParamState;
using flora::ProjectionMode;

// Passes allocations through to the allocator it replaced, and fails the
// k-th one after arm(k) as an out-of-memory would.
class FailingAllocator final : public c10::Allocator {
 public:
  static FailingAllocator& install() {
    static FailingAllocator* instance = [] {
      flora::MemoryMeter meter(torch::kCPU); // its counting allocator first, so that ours wraps it
      auto* failing = new FailingAllocator(c10::GetCPUAllocator());
      c10::SetCPUAllocator(failing, /*priority=*/100); // the counting allocator's priority: it may be replaced
      return failing;
    }();
    return *instance;
  }

  void arm(int64_t k) {
    countdown_ = k;
    seen_ = 0;
  }
  void disarm() {
    countdown_ = -1;
  }
  /// Allocations while paused neither count nor fail (the test's own).
  void pause(bool paused) {
    paused_ = paused;
  }
  int64_t seen() const {
    return seen_;
  }

  c10::DataPtr allocate(size_t bytes) override {
    if (paused_) {
      return base_->allocate(bytes);
    }
    ++seen_;
    if (countdown_ > 0 && --countdown_ == 0) {
      TORCH_CHECK_WITH(OutOfMemoryError, false, "injected allocation failure (", bytes, " bytes)");
    }
    return base_->allocate(bytes);
  }
  c10::DeleterFnPtr raw_deleter() const override {
    return base_->raw_deleter();
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

 private:
  explicit FailingAllocator(c10::Allocator* base) : base_(base) {}
  c10::Allocator* base_;
  int64_t countdown_ = -1;
  int64_t seen_ = 0;
  bool paused_ = false;
};

struct Model {
  std::vector<torch::Tensor> params;
  std::unique_ptr<Flora> opt;
};

// Every kind of parameter; after two steps the third resamples (kappa 3)
// and one parameter gets its first gradient. `variants`: group 0's
// compressed momentum is orthonormal and rescaled, group 1's (8-bit) is a
// subspace momentum: their QR decompositions and Gram factors allocate
// too, before the commit.
Model make_model(ProjectionMode mode, bool variants = false) {
  Model m;
  m.params = {
      flora::testing::param({8, 24}, 1), flora::testing::param({24, 8}, 2), flora::testing::param({40, 6}, 3),
      flora::testing::param({17}, 4), flora::testing::param({10, 12}, 5, torch::kBFloat16),
      flora::testing::param({3, 4, 5}, 6), flora::testing::param({6, 6}, 7)};
  auto base = FloraOptions(1e-2).beta1(0.9).rank(4).kappa(3).projection(mode);
  auto second = FloraOptions(base).quantization(true).quantization_block_size(32).stochastic_rounding(
      mode == ProjectionMode::philox);
  if (variants) {
    base.momentum_projection(flora::MomentumProjection::orthonormal).momentum_rescale(true);
    second.momentum_projection(flora::MomentumProjection::subspace);
  }
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<torch::Tensor>{m.params[0], m.params[1], m.params[2], m.params[3], m.params[6]});
  groups.emplace_back(std::vector<torch::Tensor>{m.params[4], m.params[5]}, std::make_unique<FloraOptions>(second));
  m.opt = std::make_unique<Flora>(groups, base);
  for (int s = 1; s <= 2; ++s) {
    for (size_t i = 0; i + 1 < m.params.size(); ++i) { // the last one waits for step 3
      m.params[i].mutable_grad() = flora::testing::randn_like_seeded(m.params[i], 10 * s + i);
    }
    m.opt->step();
  }
  for (size_t i = 0; i < m.params.size(); ++i) {
    m.params[i].mutable_grad() = flora::testing::randn_like_seeded(m.params[i], 30 + i);
  }
  return m;
}

struct Snapshot {
  std::vector<torch::Tensor> params;
  std::vector<std::optional<FloraParamState>> states;
};

Snapshot snapshot(const Model& m) {
  Snapshot s;
  for (const auto& p : m.params) {
    s.params.push_back(p.detach().clone());
    const auto* st = flora::testing::state_of<FloraParamState>(*m.opt, p);
    if (st == nullptr) {
      s.states.emplace_back();
      continue;
    }
    FloraParamState copy = *st;
    for (auto* t : {&copy.rms(), &copy.exp_avg(), &copy.exp_avg_sq_row(), &copy.exp_avg_sq_col(), &copy.exp_avg_sq(),
                    &copy.exp_avg_absmax(), &copy.exp_avg_sq_absmax()}) {
      if (t->defined()) {
        *t = t->clone();
      }
    }
    s.states.emplace_back(copy);
  }
  return s;
}

bool unchanged(const Model& m, const Snapshot& s, std::string& what) {
  for (size_t i = 0; i < m.params.size(); ++i) {
    if (!torch::equal(m.params[i], s.params[i])) {
      what = "param " + std::to_string(i);
      return false;
    }
    const auto* st = flora::testing::state_of<FloraParamState>(*m.opt, m.params[i]);
    if ((st == nullptr) != !s.states[i].has_value() || (st != nullptr && !(*st == *s.states[i]))) {
      what = "state " + std::to_string(i);
      return false;
    }
  }
  return true;
}

void expect_every_failure_is_clean(ProjectionMode mode, bool per_parameter, bool variants = false) {
  auto& allocator = FailingAllocator::install();
  auto step = [&](Model& m) {
    if (per_parameter) {
      for (const auto& p : m.params) {
        m.opt->step_parameter(p, p.grad());
      }
    } else {
      m.opt->step();
    }
  };
  // How many allocations one step makes.
  int64_t allocations = 0;
  {
    auto m = make_model(mode, variants);
    allocator.arm(std::numeric_limits<int64_t>::max());
    step(m);
    allocations = allocator.seen();
    allocator.disarm();
  }
  ASSERT_GT(allocations, 10);
  int64_t failures = 0;
  for (int64_t k = 1; k <= allocations; ++k) {
    auto m = make_model(mode, variants);
    // step_parameter commits parameter by parameter (it is one step per
    // parameter): what must survive a failure is everything before the call
    // that failed, so compare with the state before each call.
    if (per_parameter) {
      allocator.arm(k);
      for (const auto& p : m.params) {
        allocator.pause(true);
        const auto before = snapshot(m);
        allocator.pause(false);
        try {
          m.opt->step_parameter(p, p.grad());
        } catch (const c10::OutOfMemoryError&) {
          allocator.disarm();
          std::string what;
          EXPECT_TRUE(unchanged(m, before, what)) << "allocation " << k << " of " << allocations << ": " << what;
          ++failures;
          break;
        }
      }
      allocator.disarm();
      continue;
    }
    const auto before = snapshot(m);
    allocator.arm(k);
    try {
      step(m);
      allocator.disarm();
      ADD_FAILURE() << "allocation " << k << " of " << allocations << " did not fail the step";
    } catch (const c10::OutOfMemoryError& e) {
      allocator.disarm();
      std::string what;
      // (TORCH_SHOW_CPP_STACKTRACES=1 puts where the allocation was in e.what().)
      EXPECT_TRUE(unchanged(m, before, what)) << "allocation " << k << " of " << allocations << ": " << what << "\n"
                                              << e.what();
      ++failures;
    }
  }
  EXPECT_EQ(failures, allocations);
  std::cout << "[ faults   ] " << (mode == ProjectionMode::philox ? "philox" : "reference")
            << (variants ? " with momentum variants" : "") << (per_parameter ? ", per parameter" : ", whole step")
            << ": " << failures
            << " injected allocation failures, nothing changed by any" << std::endl;
}

TEST(Faults, AnAllocationFailureAnywhereInAStepChangesNothing) {
  expect_every_failure_is_clean(ProjectionMode::philox, false);
  expect_every_failure_is_clean(ProjectionMode::reference, false);
}

TEST(Faults, AnAllocationFailureInAFusedBackwardUpdateChangesNothing) {
  expect_every_failure_is_clean(ProjectionMode::philox, true);
  expect_every_failure_is_clean(ProjectionMode::reference, true);
}

TEST(Faults, MomentumVariantsChangeNothingOnAnAllocationFailure) {
  expect_every_failure_is_clean(ProjectionMode::philox, false, true);
  expect_every_failure_is_clean(ProjectionMode::philox, true, true);
}

// A gradient that turns out non-finite only when its own group's sums are
// taken (the last group of the step) stops the step before any group has
// been written.
TEST(Faults, ANonFiniteGradientFoundLateChangesNothing) {
  auto m = make_model(ProjectionMode::philox);
  m.params.back().mutable_grad()[2][3] = std::numeric_limits<float>::quiet_NaN();
  const auto before = snapshot(m);
  flora::testing::expect_error([&] { m.opt->step(); }, "contains NaN or Inf; no parameter or state was changed");
  std::string what;
  EXPECT_TRUE(unchanged(m, before, what)) << what;
}

} // namespace
