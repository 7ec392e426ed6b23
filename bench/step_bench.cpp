// Time of one optimizer step and the optimizer-state bytes of Flora and of
// the torch::optim::Adam it replaces, on GPT-2-shaped parameters with
// synthetic gradients.
//
//   build/bench/flora_bench                                  # all
//   build/bench/flora_bench --benchmark_filter=gpt2_small    # the 124M workload
//
// Workloads: gpt2_small = the 148 shapes of Hugging Face GPT-2 small
// (bench/shapes/gpt2-small.tsv, 124,439,808 parameters); gpt2_mini = the same
// architecture at n_layer 4, n_embd 256, vocab 8192 (runs in seconds).
// Counters: state_MB (optimizer state after the first step), params_M.

#include "workload.h"

#include <flora/flora.h>

#include <benchmark/benchmark.h>

namespace {

using flora::bench::NamedShape;

std::vector<NamedShape> workload(int which) {
  if (which == 0) {
    return flora::bench::gpt2_shapes(4, 256, 8192, 512);
  }
  return flora::bench::read_shapes(FLORA_SHAPES_DIR "/gpt2-small.tsv");
}

const char* workload_name(int which) {
  return which == 0 ? "gpt2_mini" : "gpt2_small";
}

template <typename MakeOptimizer>
void run(benchmark::State& state, MakeOptimizer make) {
  const int which = static_cast<int>(state.range(0));
  const auto shapes = workload(which);
  auto params = flora::bench::make_parameters(shapes);
  auto optimizer = make(params);
  optimizer->step(); // allocates the state
  for (auto _ : state) {
    optimizer->step();
  }
  state.SetLabel(workload_name(which));
  state.counters["state_MB"] = static_cast<double>(flora::optimizer_state_bytes(*optimizer)) / 1e6;
  state.counters["params_M"] = static_cast<double>(flora::bench::numel(shapes)) / 1e6;
}

void Adam(benchmark::State& state) {
  run(state, [](auto& params) { return std::make_unique<torch::optim::Adam>(params, torch::optim::AdamOptions(1e-4)); });
}

void Flora_r256(benchmark::State& state) {
  run(state, [](auto& params) {
    return std::make_unique<flora::Flora>(params, flora::FloraOptions(1e-3).rank(256).beta1(0.9).kappa(1000));
  });
}

void Flora_r256_resample(benchmark::State& state) {
  // kappa = 1: every step regenerates two projections and re-projects the
  // momentum (the worst case).
  run(state, [](auto& params) {
    return std::make_unique<flora::Flora>(params, flora::FloraOptions(1e-3).rank(256).beta1(0.9).kappa(1));
  });
}

void Flora_no_momentum(benchmark::State& state) {
  run(state, [](auto& params) { return std::make_unique<flora::Flora>(params, flora::FloraOptions(1e-3)); });
}

void Flora_r256_reference(benchmark::State& state) {
  run(state, [](auto& params) {
    return std::make_unique<flora::Flora>(
        params,
        flora::FloraOptions(1e-3).rank(256).beta1(0.9).kappa(1000).projection(flora::ProjectionMode::reference));
  });
}

#define FLORA_STEP_BENCHMARK(fn) \
  BENCHMARK(fn)->ArgName("workload")->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0)

FLORA_STEP_BENCHMARK(Adam);
FLORA_STEP_BENCHMARK(Flora_r256);
FLORA_STEP_BENCHMARK(Flora_r256_resample);
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
