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

#include "aten_calls.h"
#include "fused_adamw.h"
#include "gemm_floor.h"
#include "workload.h"

#include <flora/flora.h>

#include <benchmark/benchmark.h>

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

// Runs `step` (after one warm-up step that allocates state), timing each
// call, and reports the dispatcher calls of one step.
template <typename Step>
void time_steps(benchmark::State& state, int which, Step&& step) {
  step();
  const int64_t calls = flora::bench::aten_calls_of(step);
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

// LibTorch's fused AdamW kernel over all parameters in one call (fused_adamw.h).
void FusedAdamW(benchmark::State& state) {
  const int which = static_cast<int>(state.range(0));
  const auto shapes = workload(which);
  auto params = flora::bench::make_parameters(shapes);
  flora::bench::FusedAdamW adamw(params);
  time_steps(state, which, [&] { adamw.step(); });
  state.counters["state_MB"] = static_cast<double>(adamw.state_bytes()) / 1e6;
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

// The projection products in bfloat16 (FloraOptions::projection_precision).
void Flora_r256_bf16_products(benchmark::State& state) {
  run(state, [](auto& params) {
    return std::make_unique<flora::Flora>(
        params, flora::FloraOptions(kFlora).projection_precision(flora::ProjectionPrecision::bfloat16));
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

// The products Flora's compressed momentum cannot avoid, alone (gemm_floor.h).
void GemmFloor(benchmark::State& state) {
  const int which = static_cast<int>(state.range(0));
  flora::bench::GemmFloor floor(workload(which), kFlora);
  time_steps(state, which, [&] { floor.run(); });
  state.counters["matrices"] = static_cast<double>(floor.matrices());
}

#define FLORA_STEP_BENCHMARK(fn)                                                                            \
  BENCHMARK(fn)->ArgName("workload")->Arg(0)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0)

FLORA_STEP_BENCHMARK(FusedAdamW);
FLORA_STEP_BENCHMARK(Adam);
FLORA_STEP_BENCHMARK(GemmFloor);
FLORA_STEP_BENCHMARK(Flora_r256);
FLORA_STEP_BENCHMARK(Flora_r256_resample);
FLORA_STEP_BENCHMARK(Flora_r256_8bit);
FLORA_STEP_BENCHMARK(Flora_r256_bf16_products);
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
