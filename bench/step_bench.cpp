// One optimizer step, side by side in one run: Flora in each mode,
// torch::optim::Adam, LibTorch's own fused AdamW kernel (at::_fused_adamw_,
// the fastest Adam a C++ user can call) and the bare down/up products of
// Flora's compressed matrices (the GEMM floor: what no Flora step can go
// below), on GPT-2-shaped parameters with synthetic gradients.
//
//   build/bench/flora_bench                                  # all
//   build/bench/flora_bench --benchmark_filter=/1            # GPT-2 small only
//
// Workloads (the `workload` argument): 0 = gpt2_mini (n_layer 4, n_embd 256,
// vocab 8192: seconds), 1 = gpt2_small (the 148 shapes of Hugging Face
// GPT-2 small, bench/shapes/gpt2-small.tsv, 124,439,808 parameters),
// 2 = gpt2_small_24 (the same width with 24 layers: whether the work per step
// grows with the depth only as the arithmetic does).
// Counters: aten_calls (dispatcher operator calls in one step, counted by a
// RecordFunction observer, nested calls included: on a GPU each is a launch
// or more, on a CPU most are a pass over memory), state_MB (optimizer state),
// params_M.

#include "workload.h"

#include <flora/flora.h>

#include <ATen/record_function.h>
#include <benchmark/benchmark.h>

#include <atomic>

namespace {

using flora::bench::NamedShape;

std::vector<NamedShape> workload(int which) {
  switch (which) {
    case 0:
      return flora::bench::gpt2_shapes(4, 256, 8192, 512);
    case 1:
      return flora::bench::read_shapes(FLORA_SHAPES_DIR "/gpt2-small.tsv");
    default:
      return flora::bench::gpt2_shapes(24, 768, 50257, 1024);
  }
}

const char* workload_name(int which) {
  static const char* names[] = {"gpt2_mini", "gpt2_small", "gpt2_small_24"};
  return names[which];
}

// Dispatcher calls while alive (all threads, nested calls included).
class AtenCallCounter {
 public:
  AtenCallCounter() {
    count_ = 0;
    handle_ = at::addGlobalCallback(
        at::RecordFunctionCallback([](const at::RecordFunction&) -> std::unique_ptr<at::ObserverContext> {
          ++count_;
          return nullptr;
        }).scopes({at::RecordScope::FUNCTION}));
  }
  ~AtenCallCounter() {
    at::removeCallback(handle_);
  }
  int64_t count() const {
    return count_.load();
  }

 private:
  static inline std::atomic<int64_t> count_{0};
  at::CallbackHandle handle_;
};

// Runs `step` (after one warm-up step that allocates state), timing each
// call, and reports the dispatcher calls of one step.
template <typename Step>
void time_steps(benchmark::State& state, int which, Step&& step) {
  step();
  int64_t calls = 0;
  {
    AtenCallCounter counter;
    step();
    calls = counter.count();
  }
  for (auto _ : state) {
    step();
  }
  state.SetLabel(workload_name(which));
  state.counters["aten_calls"] = static_cast<double>(calls);
}

template <typename MakeOptimizer>
void run(benchmark::State& state, MakeOptimizer make) {
  const int which = static_cast<int>(state.range(0));
  const auto shapes = workload(which);
  auto params = flora::bench::make_parameters(shapes);
  auto optimizer = make(params);
  time_steps(state, which, [&] { optimizer->step(); });
  state.counters["state_MB"] = static_cast<double>(flora::optimizer_state_bytes(*optimizer)) / 1e6;
  state.counters["params_M"] = static_cast<double>(flora::bench::numel(shapes)) / 1e6;
}

const auto kFlora = flora::FloraOptions(1e-3).rank(256).beta1(0.9).kappa(1000);

void Adam(benchmark::State& state) {
  run(state, [](auto& params) { return std::make_unique<torch::optim::Adam>(params, torch::optim::AdamOptions(1e-4)); });
}

// LibTorch's fused AdamW kernel over all parameters in one call, with the
// step counts advanced as torch.optim.AdamW(fused=True) advances them.
void FusedAdamW(benchmark::State& state) {
  const int which = static_cast<int>(state.range(0));
  const auto shapes = workload(which);
  auto params = flora::bench::make_parameters(shapes);
  std::vector<torch::Tensor> grads, exp_avgs, exp_avg_sqs, steps;
  for (const auto& p : params) {
    grads.push_back(p.grad());
    exp_avgs.push_back(torch::zeros_like(p));
    exp_avg_sqs.push_back(torch::zeros_like(p));
    steps.push_back(torch::zeros({}, torch::kFloat));
  }
  torch::NoGradGuard no_grad;
  time_steps(state, which, [&] {
    torch::_foreach_add_(steps, 1.0);
    at::_fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, {}, steps, 1e-4, 0.9, 0.999, 0.01, 1e-8, false, false);
  });
  state.counters["state_MB"] = 2.0 * 4.0 * static_cast<double>(flora::bench::numel(shapes)) / 1e6;
  state.counters["params_M"] = static_cast<double>(flora::bench::numel(shapes)) / 1e6;
}

void Flora_r256(benchmark::State& state) {
  run(state, [](auto& params) { return std::make_unique<flora::Flora>(params, kFlora); });
}

void Flora_r256_resample(benchmark::State& state) {
  // kappa = 1: every step draws two projections per matrix and carries the
  // momentum into the new basis (the worst case).
  run(state, [](auto& params) { return std::make_unique<flora::Flora>(params, flora::FloraOptions(kFlora).kappa(1)); });
}

void Flora_r256_8bit(benchmark::State& state) {
  run(state, [](auto& params) {
    return std::make_unique<flora::Flora>(params, flora::FloraOptions(kFlora).quantization(true));
  });
}

void Flora_no_momentum(benchmark::State& state) {
  run(state, [](auto& params) { return std::make_unique<flora::Flora>(params, flora::FloraOptions(1e-3)); });
}

void Flora_r256_reference(benchmark::State& state) {
  run(state, [](auto& params) {
    return std::make_unique<flora::Flora>(params, flora::FloraOptions(kFlora).projection(flora::ProjectionMode::reference));
  });
}

// The products Flora's compressed momentum cannot avoid, alone: for each
// matrix it compresses at rank 256, down(u) (r x m times m x n) and the
// update's up(M) added into u (m x r times r x n), as plain GEMMs.
void GemmFloor(benchmark::State& state) {
  const int which = static_cast<int>(state.range(0));
  const auto shapes = workload(which);
  struct Matrix {
    torch::Tensor p, u, m, d;
    bool left;
  };
  std::vector<Matrix> matrices;
  torch::manual_seed(0);
  for (const auto& s : shapes) {
    if (!flora::ParamLayout::of(s.shape, kFlora).compressed) {
      continue;
    }
    const int64_t rows = s.shape[0], cols = s.shape[1], r = *kFlora.rank();
    const bool left = flora::projects_from_left(rows, cols);
    matrices.push_back(Matrix{
        left ? torch::randn({r, rows}) : torch::randn({cols, r}), torch::randn({rows, cols}),
        torch::randn(flora::compressed_shape(rows, cols, r)), torch::empty(flora::compressed_shape(rows, cols, r)),
        left});
  }
  time_steps(state, which, [&] {
    for (auto& x : matrices) {
      if (x.left) {
        at::mm_out(x.d, x.p, x.u);
        x.u.addmm_(x.p.t(), x.m, 0.1, 0.9);
      } else {
        at::mm_out(x.d, x.u, x.p);
        x.u.addmm_(x.m, x.p.t(), 0.1, 0.9);
      }
    }
  });
  state.counters["matrices"] = static_cast<double>(matrices.size());
}

#define FLORA_STEP_BENCHMARK(fn)                                                                            \
  BENCHMARK(fn)->ArgName("workload")->Arg(0)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0)

FLORA_STEP_BENCHMARK(FusedAdamW);
FLORA_STEP_BENCHMARK(Adam);
FLORA_STEP_BENCHMARK(GemmFloor);
FLORA_STEP_BENCHMARK(Flora_r256);
FLORA_STEP_BENCHMARK(Flora_r256_resample);
FLORA_STEP_BENCHMARK(Flora_r256_8bit);
FLORA_STEP_BENCHMARK(Flora_no_momentum);
FLORA_STEP_BENCHMARK(Flora_r256_reference);

// The projection generator alone: one 768 x 256 matrix (GPT-2 small's
// projection shape at rank 256).
void Projection_768x256(benchmark::State& state) {
  const auto mode = state.range(0) == 0 ? flora::ProjectionMode::philox : flora::ProjectionMode::reference;
  int64_t seed = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(flora::gaussian_matrix(++seed, 768, 256, mode));
  }
  state.SetLabel(state.range(0) == 0 ? "philox" : "reference");
  state.SetItemsProcessed(state.iterations() * 768 * 256);
}
BENCHMARK(Projection_768x256)->Arg(0)->Arg(1)->Unit(benchmark::kMicrosecond);

} // namespace

BENCHMARK_MAIN();
