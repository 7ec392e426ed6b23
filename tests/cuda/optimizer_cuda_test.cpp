// flora::Flora on CUDA against flora::Flora on the CPU: the configurations
// of the parity fixtures replayed on both devices, CUDA-graph capture and
// replay of a step, checkpoints moving between devices. Skipped without a GPU.

#include "../cuda_util.h"
#include "../parity_fixture.h"
#include "../test_util.h"
#include "cuda_agreement.h"

#include <ATen/cuda/CUDAGraph.h>
#include <ATen/record_function.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace {

using flora::FloraParamState;
using flora::ProjectionMode;
using flora::testing::Agreement;
using flora::testing::expect_within_one_code;
using flora::testing::parameter_tolerance;
using flora::testing::ParityFixture;
using flora::testing::relative_error;

const FloraParamState* state_of(const flora::Flora& opt, const torch::Tensor& p) {
  const auto it = opt.state().find(p.unsafeGetTensorImpl());
  return it == opt.state().end() ? nullptr : &static_cast<const FloraParamState&>(*it->second);
}

// Dispatcher calls of one operator on this thread while alive (one counter
// at a time).
class OperatorCalls {
 public:
  explicit OperatorCalls(std::string name) {
    name_ = std::move(name);
    count_ = 0;
    handle_ = at::addThreadLocalCallback(
        at::RecordFunctionCallback([](const at::RecordFunction& fn) -> std::unique_ptr<at::ObserverContext> {
          if (name_ == fn.name()) {
            ++count_;
          }
          return nullptr;
        }).scopes({at::RecordScope::FUNCTION}));
  }
  ~OperatorCalls() {
    at::removeCallback(handle_);
  }
  OperatorCalls(const OperatorCalls&) = delete;
  OperatorCalls& operator=(const OperatorCalls&) = delete;
  int64_t count() const {
    return count_;
  }

 private:
  static inline thread_local std::string name_;
  static inline thread_local int64_t count_ = 0;
  at::CallbackHandle handle_;
};

const flora::FloraOptions& options_of(const flora::Flora& opt, const torch::Tensor& p) {
  for (const auto& group : opt.param_groups()) {
    for (const auto& member : group.params()) {
      if (member.is_same(p)) {
        return static_cast<const flora::FloraOptions&>(group.options());
      }
    }
  }
  throw std::runtime_error("not a parameter of the optimizer");
}

// Parameters, host counters and every state tensor of the two optimizers.
void expect_states_agree(
    const flora::Flora& opt_gpu, const std::vector<torch::Tensor>& gpu, const flora::Flora& opt_cpu,
    const std::vector<torch::Tensor>& cpu, const std::string& where_prefix, Agreement& agreement) {
  for (size_t i = 0; i < cpu.size(); ++i) {
    const std::string where = where_prefix + " param " + std::to_string(i);
    ASSERT_TRUE(gpu[i].is_cuda());
    const double param_error = relative_error(gpu[i], cpu[i]);
    if (cpu[i].scalar_type() == torch::kFloat) {
      agreement.worst_param = std::max(agreement.worst_param, param_error);
    }
    EXPECT_LT(param_error, parameter_tolerance(cpu[i].scalar_type())) << where;
    const auto* sc = state_of(opt_cpu, cpu[i]);
    const auto* sg = state_of(opt_gpu, gpu[i]);
    ASSERT_EQ(sc == nullptr, sg == nullptr) << where;
    if (sc == nullptr) {
      continue;
    }
    EXPECT_EQ(sg->step(), sc->step()) << where;
    EXPECT_EQ(sg->seed(), sc->seed()) << where;
    const int64_t block = options_of(opt_cpu, cpu[i]).quantization_block_size();
    struct Moment {
      const char* name;
      torch::Tensor gpu, cpu, gpu_absmax, cpu_absmax;
    };
    const Moment moments[] = {
        {"rms", sg->rms(), sc->rms(), {}, {}},
        {"exp_avg", sg->exp_avg(), sc->exp_avg(), sg->exp_avg_absmax(), sc->exp_avg_absmax()},
        {"exp_avg_sq_row", sg->exp_avg_sq_row(), sc->exp_avg_sq_row(), {}, {}},
        {"exp_avg_sq_col", sg->exp_avg_sq_col(), sc->exp_avg_sq_col(), {}, {}},
        {"exp_avg_sq", sg->exp_avg_sq(), sc->exp_avg_sq(), sg->exp_avg_sq_absmax(), sc->exp_avg_sq_absmax()}};
    for (const auto& m : moments) {
      ASSERT_EQ(m.gpu.defined(), m.cpu.defined()) << where << " " << m.name;
      ASSERT_EQ(m.gpu_absmax.defined(), m.cpu_absmax.defined()) << where << " " << m.name;
      if (!m.cpu.defined()) {
        continue;
      }
      EXPECT_TRUE(m.gpu.is_cuda()) << where << " " << m.name;
      if (m.cpu_absmax.defined()) {
        expect_within_one_code(m.gpu, m.gpu_absmax, m.cpu, m.cpu_absmax, block, where + " " + m.name, agreement);
        continue;
      }
      const double error = relative_error(m.gpu, m.cpu);
      agreement.worst_state = std::max(agreement.worst_state, error);
      EXPECT_LT(error, 1e-5) << where << " " << m.name;
    }
  }
}

// Copies the CPU optimizer's parameters and state into the GPU optimizer's
// tensors (in place), so that the next step starts from the same values.
void copy_state(
    flora::Flora& opt_gpu, const std::vector<torch::Tensor>& gpu, const flora::Flora& opt_cpu,
    const std::vector<torch::Tensor>& cpu) {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < cpu.size(); ++i) {
    gpu[i].copy_(cpu[i]);
    const auto* sc = state_of(opt_cpu, cpu[i]);
    if (sc == nullptr) {
      continue;
    }
    auto& sg = static_cast<FloraParamState&>(*opt_gpu.state().at(gpu[i].unsafeGetTensorImpl()));
    const std::pair<torch::Tensor, torch::Tensor> pairs[] = {
        {sg.rms(), sc->rms()},
        {sg.exp_avg(), sc->exp_avg()},
        {sg.exp_avg_sq_row(), sc->exp_avg_sq_row()},
        {sg.exp_avg_sq_col(), sc->exp_avg_sq_col()},
        {sg.exp_avg_sq(), sc->exp_avg_sq()},
        {sg.exp_avg_absmax(), sc->exp_avg_absmax()},
        {sg.exp_avg_sq_absmax(), sc->exp_avg_sq_absmax()}};
    for (auto [g, c] : pairs) {
      if (c.defined()) {
        g.copy_(c);
      }
    }
  }
}

class CudaMatchesCpu : public ::testing::TestWithParam<std::tuple<std::string, ProjectionMode>> {
 public:
  static void TearDownTestSuite() {
    if (configurations_ > 0) {
      std::cout << "[ agreement ] Flora step CUDA vs CPU over " << configurations_
                << " configurations: largest relative error of state " << agreement_.worst_state
                << ", of float32 parameters " << agreement_.worst_param << " (bound 1e-5); 8-bit codes: "
                << agreement_.code_flips << " of " << agreement_.codes_compared
                << " differ by one code (bound: one code)" << std::endl;
    }
  }
  static inline Agreement agreement_;
  static inline int configurations_ = 0;
};

// float32 states: twelve steps on each device, then everything compared
// (errors may accumulate over the steps). 8-bit states: compared after every
// step and the GPU's state then set to the CPU's, since one flipped code
// (expected now and then) changes all later steps by up to a code.
TEST_P(CudaMatchesCpu, OverTheParityConfigurations) {
  FLORA_REQUIRE_CUDA();
  const auto& [name, mode] = GetParam();
  const auto fixture = ParityFixture::load(name);
  const bool quantized = name.rfind("quantized_", 0) == 0;
  auto cpu = fixture.initial_params(torch::kCPU);
  auto gpu = fixture.initial_params(torch::kCUDA);
  auto opt_cpu = fixture.make_optimizer(cpu, mode);
  auto opt_gpu = fixture.make_optimizer(gpu, mode);
  int64_t fused_calls = 0;
  for (size_t step = 0; step < fixture.steps(); ++step) {
    fixture.set_grads(cpu, step);
    fixture.set_grads(gpu, step);
    opt_cpu->step();
    {
      const OperatorCalls fused("flora::gradient_sums_");
      opt_gpu->step();
      fused_calls += fused.count();
    }
    if (quantized) {
      expect_states_agree(*opt_gpu, gpu, *opt_cpu, cpu, name + " step " + std::to_string(step + 1), agreement_);
      copy_state(*opt_gpu, gpu, *opt_cpu, cpu);
    }
  }
  ++configurations_;
  if (!quantized) {
    expect_states_agree(*opt_gpu, gpu, *opt_cpu, cpu, name, agreement_);
  }
  // Philox mode runs the fused step (its CUDA kernels), reference mode the
  // ATen sequence of flora-opt.
  EXPECT_EQ(fused_calls > 0, mode == ProjectionMode::philox) << fused_calls << " fused phase-1 calls";
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

// Pointers to the state tensors a step writes in place (rms is replaced by a
// new tensor each step instead).
std::vector<torch::Tensor*> written_in_place(FloraParamState& s) {
  return {&s.exp_avg(), &s.exp_avg_sq_row(), &s.exp_avg_sq_col(), &s.exp_avg_sq(), &s.exp_avg_absmax(),
          &s.exp_avg_sq_absmax()};
}

Snapshot snapshot(const flora::Flora& opt, const std::vector<torch::Tensor>& params) {
  Snapshot s;
  for (const auto& p : params) {
    s.params.push_back(p.detach().clone());
    FloraParamState copy = *state_of(opt, p);
    for (auto* t : written_in_place(copy)) {
      if (t->defined()) {
        *t = t->clone();
      }
    }
    s.states.push_back(copy);
  }
  return s;
}

FloraParamState& live_state(flora::Flora& opt, const torch::Tensor& p) {
  return static_cast<FloraParamState&>(*opt.state().at(p.unsafeGetTensorImpl()));
}

// Writes a snapshot's tensors back into the same storage (a captured graph
// holds pointers to it); the host counters are left alone.
void restore_tensors(flora::Flora& opt, const std::vector<torch::Tensor>& params, const Snapshot& s) {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < params.size(); ++i) {
    params[i].copy_(s.params[i]);
    auto live = written_in_place(live_state(opt, params[i]));
    auto saved = written_in_place(const_cast<FloraParamState&>(s.states[i]));
    for (size_t k = 0; k < live.size(); ++k) {
      if (live[k]->defined()) {
        live[k]->copy_(*saved[k]);
      }
    }
  }
}

void restore_counters(flora::Flora& opt, const std::vector<torch::Tensor>& params, const Snapshot& s) {
  for (size_t i = 0; i < params.size(); ++i) {
    live_state(opt, params[i]).step(s.states[i].step());
    live_state(opt, params[i]).seed(s.states[i].seed());
  }
}

// With check_finite(false) and the philox generator a step never waits for
// the host, so it can be captured in a CUDA graph. A replay repeats the
// captured step: it rewrites the parameters and state tensors, while the host
// counters (step count, seed), like the learning rate, stay those of the
// capture. So: capture step 4 from the state after step 3, put the tensors
// back to that state (the counters stay at 4, which is what a replay
// represents), replay, and compare everything with an eager step 4. Also with
// 8-bit states, whose quantization must not copy anything from the host.
class CudaGraph : public ::testing::TestWithParam<bool> {};

TEST_P(CudaGraph, CapturedStepReplaysTheEagerStep) {
  FLORA_REQUIRE_CUDA();
  const bool quantization = GetParam();
  torch::manual_seed(0);
  const auto cuda = torch::TensorOptions().device(torch::kCUDA);
  std::vector<torch::Tensor> params = {
      (torch::randn({64, 256}, cuda) * 0.1).requires_grad_(true), // compressed, left
      (torch::randn({256, 64}, cuda) * 0.1).requires_grad_(true), // compressed, right
      (torch::randn({1024, 64}, cuda) * 0.1).requires_grad_(true), // embedding-like
      (torch::randn({256}, cuda) * 0.1).requires_grad_(true), // bias
      (torch::randn({2, 3, 4}, cuda) * 0.1).to(torch::kBFloat16).requires_grad_(true)};
  flora::Flora opt(
      params, flora::FloraOptions(1e-2).rank(16).beta1(0.9).kappa(1000).weight_decay(0.01).check_finite(false)
                  .quantization(quantization).quantization_min_size(0));
  for (auto& p : params) {
    p.mutable_grad() = torch::randn_like(p);
  }

  auto side = c10::cuda::getStreamFromPool();
  torch::cuda::synchronize(); // the side stream starts after everything above
  Snapshot before, eager;
  at::cuda::CUDAGraph graph;
  {
    // Everything on one stream, the eager step too: the same kernels and
    // cuBLAS workspace as in the capture.
    c10::cuda::CUDAStreamGuard guard(side);
    for (int i = 0; i < 3; ++i) {
      opt.step(); // warm-up: state allocated, kernels loaded, cuBLAS workspaces made
    }
    before = snapshot(opt, params);
    opt.step();
    eager = snapshot(opt, params);

    restore_tensors(opt, params, before);
    restore_counters(opt, params, before);
    graph.capture_begin();
    opt.step();
    graph.capture_end();
    restore_tensors(opt, params, before);
    graph.replay();
  }
  torch::cuda::synchronize();
  const auto replayed = snapshot(opt, params);
  for (size_t i = 0; i < params.size(); ++i) {
    EXPECT_EQ(replayed.states[i].step(), eager.states[i].step()) << "param " << i;
    EXPECT_TRUE(torch::equal(replayed.params[i], eager.params[i])) << "param " << i;
    EXPECT_TRUE(replayed.states[i] == eager.states[i]) << "state " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(
    States, CudaGraph, ::testing::Values(false, true),
    [](const auto& info) { return info.param ? std::string("quantized") : std::string("float32"); });

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
