// flora::Flora on CUDA against flora::Flora on the CPU: the configurations
// of the parity fixtures replayed on both devices, CUDA-graph capture and
// replay of a step, checkpoints moving between devices. Skipped without a GPU.

#include "../cuda_util.h"
#include "../parity_fixture.h"
#include "../test_util.h"

#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace {

using flora::FloraParamState;
using flora::ProjectionMode;
using flora::testing::ParityFixture;
using flora::testing::relative_error;

const FloraParamState* state_of(const flora::Flora& opt, const torch::Tensor& p) {
  const auto it = opt.state().find(p.unsafeGetTensorImpl());
  return it == opt.state().end() ? nullptr : &static_cast<const FloraParamState&>(*it->second);
}

// One ulp of the parameter's own dtype, relative: a low-precision parameter
// may round the other way on the other device.
double parameter_tolerance(torch::Dtype dtype) {
  switch (dtype) {
    case torch::kBFloat16:
      return std::ldexp(1.0, -7);
    case torch::kHalf:
      return std::ldexp(1.0, -10);
    default:
      return 1e-5;
  }
}

class CudaMatchesCpu : public ::testing::TestWithParam<std::tuple<std::string, ProjectionMode>> {
 public:
  static void TearDownTestSuite() {
    if (worst_state_ >= 0) {
      std::cout << "[ agreement ] Flora step CUDA vs CPU over " << configurations_
                << " configurations x 12 steps: largest relative error of state " << worst_state_
                << ", of float32 parameters " << worst_param_ << " (bound 1e-5)" << std::endl;
    }
  }
  static inline double worst_state_ = -1, worst_param_ = 0;
  static inline int configurations_ = 0;
};

TEST_P(CudaMatchesCpu, OverTheParityConfigurations) {
  FLORA_REQUIRE_CUDA();
  const auto& [name, mode] = GetParam();
  const auto fixture = ParityFixture::load(name);
  auto cpu = fixture.initial_params(torch::kCPU);
  auto gpu = fixture.initial_params(torch::kCUDA);
  auto opt_cpu = fixture.make_optimizer(cpu, mode);
  auto opt_gpu = fixture.make_optimizer(gpu, mode);
  for (size_t step = 0; step < fixture.steps(); ++step) {
    fixture.set_grads(cpu, step);
    fixture.set_grads(gpu, step);
    opt_cpu->step();
    opt_gpu->step();
  }
  ++configurations_;
  worst_state_ = std::max(worst_state_, 0.0);
  for (size_t i = 0; i < cpu.size(); ++i) {
    const std::string where = name + " param " + std::to_string(i);
    ASSERT_TRUE(gpu[i].is_cuda());
    const double param_error = relative_error(gpu[i], cpu[i]);
    if (cpu[i].scalar_type() == torch::kFloat) {
      worst_param_ = std::max(worst_param_, param_error);
    }
    EXPECT_LT(param_error, parameter_tolerance(cpu[i].scalar_type())) << where;
    const auto* sc = state_of(*opt_cpu, cpu[i]);
    const auto* sg = state_of(*opt_gpu, gpu[i]);
    ASSERT_EQ(sc == nullptr, sg == nullptr) << where;
    if (sc == nullptr) {
      continue;
    }
    EXPECT_EQ(sg->step(), sc->step()) << where;
    EXPECT_EQ(sg->seed(), sc->seed()) << where;
    const std::pair<torch::Tensor, torch::Tensor> pairs[] = {
        {sg->rms(), sc->rms()},
        {sg->exp_avg(), sc->exp_avg()},
        {sg->exp_avg_sq_row(), sc->exp_avg_sq_row()},
        {sg->exp_avg_sq_col(), sc->exp_avg_sq_col()},
        {sg->exp_avg_sq(), sc->exp_avg_sq()}};
    for (const auto& [g, c] : pairs) {
      ASSERT_EQ(g.defined(), c.defined()) << where;
      if (c.defined()) {
        EXPECT_TRUE(g.is_cuda()) << where;
        const double error = relative_error(g, c);
        worst_state_ = std::max(worst_state_, error);
        EXPECT_LT(error, 1e-5) << where;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Fixtures,
    CudaMatchesCpu,
    ::testing::Combine(
        ::testing::ValuesIn(flora::testing::parity_fixture_names()),
        ::testing::Values(ProjectionMode::philox, ProjectionMode::reference)),
    [](const auto& info) {
      return std::get<0>(info.param) + (std::get<1>(info.param) == ProjectionMode::philox ? "_philox" : "_reference");
    });

struct Snapshot {
  std::vector<torch::Tensor> params;
  std::vector<FloraParamState> states;
};

Snapshot snapshot(const flora::Flora& opt, const std::vector<torch::Tensor>& params) {
  Snapshot s;
  for (const auto& p : params) {
    s.params.push_back(p.detach().clone());
    FloraParamState copy = *state_of(opt, p);
    for (auto* t : {&copy.exp_avg(), &copy.exp_avg_sq_row(), &copy.exp_avg_sq_col(), &copy.exp_avg_sq()}) {
      if (t->defined()) {
        *t = t->clone();
      }
    }
    s.states.push_back(copy);
  }
  return s;
}

// Writes a snapshot back into the same storage (a captured graph holds
// pointers to it) and the same host step counters.
void restore(flora::Flora& opt, const std::vector<torch::Tensor>& params, const Snapshot& s) {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < params.size(); ++i) {
    params[i].copy_(s.params[i]);
    auto& st = static_cast<FloraParamState&>(*opt.state().at(params[i].unsafeGetTensorImpl()));
    st.step(s.states[i].step());
    st.seed(s.states[i].seed());
    const std::pair<torch::Tensor*, const torch::Tensor*> pairs[] = {
        {&st.exp_avg(), &s.states[i].exp_avg()},
        {&st.exp_avg_sq_row(), &s.states[i].exp_avg_sq_row()},
        {&st.exp_avg_sq_col(), &s.states[i].exp_avg_sq_col()},
        {&st.exp_avg_sq(), &s.states[i].exp_avg_sq()}};
    for (const auto& [live, saved] : pairs) {
      if (live->defined()) {
        live->copy_(*saved);
      }
    }
  }
}

// With check_finite(false) and the philox generator a step never waits for
// the host, so it can be captured in a CUDA graph. A replay repeats the
// captured step (its step count, learning rate and seed are fixed at capture).
TEST(CudaGraph, CapturedStepReplaysTheEagerStep) {
  FLORA_REQUIRE_CUDA();
  torch::manual_seed(0);
  const auto cuda = torch::TensorOptions().device(torch::kCUDA);
  std::vector<torch::Tensor> params = {
      (torch::randn({64, 256}, cuda) * 0.1).requires_grad_(true), // compressed, left
      (torch::randn({256, 64}, cuda) * 0.1).requires_grad_(true), // compressed, right
      (torch::randn({1024, 64}, cuda) * 0.1).requires_grad_(true), // embedding-like
      (torch::randn({256}, cuda) * 0.1).requires_grad_(true), // bias
      (torch::randn({2, 3, 4}, cuda) * 0.1).to(torch::kBFloat16).requires_grad_(true)};
  flora::Flora opt(
      params, flora::FloraOptions(1e-2).rank(16).beta1(0.9).kappa(1000).weight_decay(0.01).check_finite(false));
  for (auto& p : params) {
    p.mutable_grad() = torch::randn_like(p);
  }

  auto side = c10::cuda::getStreamFromPool();
  torch::cuda::synchronize(); // the side stream starts after everything above
  {
    c10::cuda::CUDAStreamGuard guard(side);
    for (int i = 0; i < 3; ++i) {
      opt.step(); // warm-up: state allocated, cuBLAS workspaces made
    }
  }
  torch::cuda::synchronize();

  const auto before = snapshot(opt, params);
  opt.step();
  const auto eager = snapshot(opt, params);

  restore(opt, params, before);
  at::cuda::CUDAGraph graph;
  {
    c10::cuda::CUDAStreamGuard guard(side);
    graph.capture_begin();
    opt.step();
    graph.capture_end();
  }
  torch::cuda::synchronize();
  restore(opt, params, before);
  torch::cuda::synchronize();
  graph.replay();
  torch::cuda::synchronize();
  const auto replayed = snapshot(opt, params);
  for (size_t i = 0; i < params.size(); ++i) {
    EXPECT_TRUE(torch::equal(replayed.params[i], eager.params[i])) << "param " << i;
    EXPECT_TRUE(replayed.states[i] == eager.states[i]) << "state " << i;
  }
}

TEST(CudaCheckpoint, StateFollowsTheParametersDevice) {
  FLORA_REQUIRE_CUDA();
  flora::testing::TempDir dir;
  torch::manual_seed(0);
  auto gpu = (torch::randn({32, 64}) * 0.1).cuda().requires_grad_(true);
  flora::Flora opt_gpu({gpu}, flora::FloraOptions(1e-2).rank(8).beta1(0.9).kappa(2));
  gpu.mutable_grad() = torch::randn_like(gpu);
  opt_gpu.step();
  torch::save(opt_gpu, dir.file("opt.pt"));

  auto cpu = gpu.detach().cpu().requires_grad_(true);
  flora::Flora opt_cpu({cpu}, flora::FloraOptions(1e-2).rank(8).beta1(0.9).kappa(2));
  torch::load(opt_cpu, dir.file("opt.pt"));
  const auto* st = state_of(opt_cpu, cpu);
  ASSERT_NE(st, nullptr);
  EXPECT_TRUE(st->exp_avg().device().is_cpu());
  EXPECT_TRUE(st->exp_avg_sq_row().device().is_cpu());
  // Same seeds, same generator on both devices: the next steps agree.
  const auto g = torch::randn({32, 64});
  for (int i = 0; i < 3; ++i) {
    gpu.mutable_grad() = g.cuda();
    cpu.mutable_grad() = g.clone();
    opt_gpu.step();
    opt_cpu.step();
  }
  EXPECT_LT(relative_error(gpu, cpu), 1e-5);
}

} // namespace
