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
  auto second = FloraOptions(base).quantization(true).quantization_min_size(0).quantization_block_size(32).stochastic_rounding(
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

// ---- the update fused into backward, through its hooks --------------------

namespace {

// A loss whose backward gives every parameter of make_model a gradient,
// seeded by `seed`, in an order set by autograd (not by the test).
torch::Tensor loss_of(const Model& m, uint64_t seed) {
  torch::Tensor loss = torch::zeros({});
  for (size_t i = 0; i < m.params.size(); ++i) {
    const auto weight = flora::testing::randn_like_seeded(m.params[i], seed + i).to(torch::kFloat);
    loss = loss + (m.params[i].to(torch::kFloat) * weight).sum();
  }
  return loss;
}

// Parameter i of `m` and its state equal those of snapshot s.
bool same_parameter(const Model& m, size_t i, const Snapshot& s) {
  const auto* st = flora::testing::state_of<FloraParamState>(*m.opt, m.params[i]);
  return torch::equal(m.params[i], s.params[i]) && (st == nullptr) == !s.states[i].has_value() &&
      (st == nullptr || *st == *s.states[i]);
}

void clear_grads(Model& m) {
  for (auto& p : m.params) {
    p.mutable_grad() = torch::Tensor();
  }
}

} // namespace

// A failure inside backward (any allocation: autograd's own, or one of an
// update run by a FusedBackward hook) propagates out of backward(); every
// parameter is then either updated exactly as the fault-free backward
// updates it, or not at all (never half), and the next backward trains on.
TEST(Faults, AnAllocationFailureInsideAFusedBackwardLeavesEachParameterWholeAndTrainingGoesOn) {
  auto& allocator = FailingAllocator::install();
  for (const auto mode : {ProjectionMode::philox, ProjectionMode::reference}) {
    // The fault-free backward: the state after it, and its allocations.
    Snapshot before, after;
    int64_t allocations = 0;
    {
      auto m = make_model(mode);
      clear_grads(m);
      flora::FusedBackward fused(*m.opt);
      before = snapshot(m);
      auto loss = loss_of(m, 50);
      allocator.arm(std::numeric_limits<int64_t>::max());
      loss.backward();
      allocations = allocator.seen();
      allocator.disarm();
      after = snapshot(m);
    }
    ASSERT_GT(allocations, 10);
    // Philox: every allocation of the backward. Reference mode allocates
    // about seven times as many (ATen's operators, one per step of
    // flora-opt's sequence): every 7th, 60 or so spread over the whole
    // backward, to keep the suite's time in CI's budget.
    const int64_t stride = mode == ProjectionMode::philox ? 1 : 7;
    int64_t failures = 0, tried = 0, updated_before_failure = 0;
    for (int64_t k = 1; k <= allocations; k += stride) {
      ++tried;
      auto m = make_model(mode);
      clear_grads(m);
      flora::FusedBackward fused(*m.opt);
      auto loss = loss_of(m, 50);
      allocator.arm(k);
      try {
        loss.backward();
        allocator.disarm();
        ADD_FAILURE() << "allocation " << k << " of " << allocations << " did not fail the backward";
        continue;
      } catch (const c10::Error&) {
        allocator.disarm();
        ++failures;
      }
      for (size_t i = 0; i < m.params.size(); ++i) {
        const bool untouched = same_parameter(m, i, before);
        const bool whole = same_parameter(m, i, after);
        EXPECT_TRUE(untouched || whole) << "allocation " << k << ": parameter " << i << " half-updated";
        updated_before_failure += whole && !untouched ? 1 : 0;
      }
      // Training goes on: the next backward counts and updates.
      const auto micro = fused.micro_steps();
      const auto updates = fused.updates();
      clear_grads(m);
      loss_of(m, 60).backward();
      EXPECT_EQ(fused.micro_steps(), micro + 1) << "allocation " << k;
      EXPECT_EQ(fused.updates(), updates + 1) << "allocation " << k;
    }
    EXPECT_EQ(failures, tried);
    std::cout << "[ faults   ] " << (mode == ProjectionMode::philox ? "philox" : "reference")
              << ", fused backward (hooks): " << failures << " injected allocation failures (of " << allocations
              << " allocations), "
              << updated_before_failure << " parameter updates completed before them, none half-done" << std::endl;
  }
}

// With accumulation, a backward pass that fails must not stall the count of
// micro-batches: the passes after it still update every k-th time.
TEST(Faults, AFailedBackwardDoesNotStallFusedAccumulation) {
  auto& allocator = FailingAllocator::install();
  const auto options = flora::FusedBackwardOptions().accumulation_steps(2).accumulation_rank(2);
  // The allocations of an updating pass (on a twin), to fail the middle one.
  int64_t allocations = 0;
  {
    auto twin = make_model(ProjectionMode::philox);
    clear_grads(twin);
    flora::FusedBackward fused(*twin.opt, options);
    loss_of(twin, 70).backward();
    auto loss = loss_of(twin, 71);
    allocator.arm(std::numeric_limits<int64_t>::max());
    loss.backward();
    allocations = allocator.seen();
    allocator.disarm();
  }
  ASSERT_GT(allocations, 10);
  auto m = make_model(ProjectionMode::philox);
  clear_grads(m);
  flora::FusedBackward fused(*m.opt, options);
  loss_of(m, 70).backward(); // micro-batch 1 of 2
  EXPECT_EQ(fused.micro_steps(), 1);
  EXPECT_EQ(fused.updates(), 0);
  auto loss = loss_of(m, 71);
  allocator.arm(allocations / 2);
  EXPECT_THROW(loss.backward(), c10::Error);
  allocator.disarm();
  // The failed pass is not a micro-batch; the next two are, and the second updates.
  for (int pass = 0; pass < 4; ++pass) {
    const auto params = snapshot(m);
    clear_grads(m);
    loss_of(m, 80 + pass).backward();
    EXPECT_EQ(fused.micro_steps(), 2 + pass) << pass;
    EXPECT_EQ(fused.updates(), 1 + pass / 2) << pass;
    std::string what;
    EXPECT_EQ(unchanged(m, params, what), pass % 2 == 1) << "pass " << pass << " (micro-batch " << 2 + pass << ")";
  }
}

// ---- a kernel's argument check failing in the middle of a step ------------

// A parameter resized in place between steps (model surgery that keeps the
// optimizer) no longer fits its state. Its gradient is fine (the same shape
// as the parameter), so the step gets as far as the operators' argument
// checks: the fused step gathers and checks every operator's arguments
// before its first write, flora-opt's sequence (reference mode) fails in an
// ATen operation after updating the parameters before it. Either way the
// step throws and changes nothing.
TEST(Faults, AnOperatorArgumentCheckFailingMidStepChangesNothing) {
  struct Case {
    size_t param;
    std::vector<int64_t> shape;
  };
  // A compressed matrix one column wider, a full-momentum matrix one row
  // shorter, the quantized 3-d tensor one element longer.
  const std::vector<Case> cases = {{0, {8, 25}}, {2, {39, 6}}, {5, {3, 4, 6}}};
  for (const auto mode : {ProjectionMode::philox, ProjectionMode::reference}) {
    for (const auto& c : cases) {
      auto m = make_model(mode);
      {
        torch::NoGradGuard no_grad;
        auto& p = m.params[c.param];
        p.set_(flora::testing::param(c.shape, 99, p.scalar_type()).detach());
        p.mutable_grad() = flora::testing::randn_like_seeded(p, 98);
      }
      const auto before = snapshot(m);
      try {
        m.opt->step();
        ADD_FAILURE() << "a step over a resized parameter " << c.param << " succeeded";
      } catch (const c10::Error& e) {
        std::string what;
        EXPECT_TRUE(unchanged(m, before, what)) << "parameter " << c.param << ": " << what << "\n"
                                                << e.what_without_backtrace();
      }
    }
  }
}
