// GPU step time of Flora and of torch::optim::Adam on the GPT-2 small shapes
// (bench/shapes/gpt2-small.tsv, 124.4 M parameters, synthetic gradients),
// timed with CUDA events around each step; every benchmark reports the median
// over its repetitions (one step each, after warm-up steps).
//
//   build/bench/flora_gpu_bench --benchmark_format=json > gpu.json
//
// Runs only where a CUDA device is present; elsewhere it registers nothing.

#include "workload.h"

#include <flora/flora.h>

#include <ATen/cuda/CUDAEvent.h>
#include <benchmark/benchmark.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAStream.h>

#include <functional>
#include <map>
#include <memory>

namespace {

constexpr int kWarmup = 5;
constexpr int kRepetitions = 50;

struct Setup {
  std::vector<torch::Tensor> params;
  std::unique_ptr<torch::optim::Optimizer> optimizer;
};

using Factory = std::function<std::unique_ptr<torch::optim::Optimizer>(std::vector<torch::Tensor>&)>;

// Built once per benchmark and kept across repetitions.
Setup& setup_for(const std::string& name, torch::Dtype dtype, const Factory& make) {
  static std::map<std::string, Setup> cache;
  auto it = cache.find(name);
  if (it == cache.end()) {
    cache.clear(); // one workload on the GPU at a time
    torch::cuda::synchronize();
    c10::cuda::CUDACachingAllocator::emptyCache();
    Setup s;
    s.params = flora::bench::make_parameters(
        flora::bench::read_shapes(FLORA_SHAPES_DIR "/gpt2-small.tsv"), torch::kCUDA, dtype);
    s.optimizer = make(s.params);
    for (int i = 0; i < kWarmup; ++i) {
      s.optimizer->step();
    }
    torch::cuda::synchronize();
    it = cache.emplace(name, std::move(s)).first;
  }
  return it->second;
}

void run(benchmark::State& state, const std::string& name, torch::Dtype dtype, const Factory& make) {
  auto& s = setup_for(name, dtype, make);
  at::cuda::CUDAEvent start(cudaEventDefault), stop(cudaEventDefault);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  for (auto _ : state) {
    start.record(stream);
    s.optimizer->step();
    stop.record(stream);
    stop.synchronize();
    state.SetIterationTime(static_cast<double>(start.elapsed_time(stop)) / 1e3);
  }
  state.counters["state_MB"] = static_cast<double>(flora::optimizer_state_bytes(*s.optimizer)) / 1e6;
}

void register_all() {
  if (!torch::cuda::is_available()) {
    return;
  }
  const std::vector<std::tuple<std::string, torch::Dtype, Factory>> cases = {
      {"Adam/fp32", torch::kFloat,
       [](auto& p) { return std::make_unique<torch::optim::Adam>(p, torch::optim::AdamOptions(1e-4)); }},
      {"Flora_r256/fp32", torch::kFloat,
       [](auto& p) {
         return std::make_unique<flora::Flora>(
             p, flora::FloraOptions(1e-3).rank(256).beta1(0.9).kappa(1000).check_finite(false));
       }},
      {"Flora_r256_checked/fp32", torch::kFloat,
       [](auto& p) {
         return std::make_unique<flora::Flora>(p, flora::FloraOptions(1e-3).rank(256).beta1(0.9).kappa(1000));
       }},
      {"Flora_r256_kappa1/fp32", torch::kFloat,
       [](auto& p) {
         return std::make_unique<flora::Flora>(
             p, flora::FloraOptions(1e-3).rank(256).beta1(0.9).kappa(1).check_finite(false));
       }},
      {"Flora_no_momentum/fp32", torch::kFloat,
       [](auto& p) { return std::make_unique<flora::Flora>(p, flora::FloraOptions(1e-3).check_finite(false)); }},
      {"Adam/bf16", torch::kBFloat16,
       [](auto& p) { return std::make_unique<torch::optim::Adam>(p, torch::optim::AdamOptions(1e-4)); }},
      {"Flora_r256/bf16", torch::kBFloat16,
       [](auto& p) {
         return std::make_unique<flora::Flora>(
             p, flora::FloraOptions(1e-3).rank(256).beta1(0.9).kappa(1000).check_finite(false));
       }},
  };
  for (const auto& [name, dtype, make] : cases) {
    benchmark::RegisterBenchmark(
        ("gpt2_small/" + name).c_str(),
        [name = name, dtype = dtype, make = make](benchmark::State& st) { run(st, name, dtype, make); })
        ->UseManualTime()
        ->Iterations(1)
        ->Repetitions(kRepetitions)
        ->ReportAggregatesOnly(true)
        ->Unit(benchmark::kMillisecond);
  }
}

} // namespace

int main(int argc, char** argv) {
  register_all();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
