// GPU step time of Flora and of torch::optim::Adam on the GPT-2 small shapes
// (bench/shapes/gpt2-small.tsv, 124.4 M parameters, synthetic gradients),
// timed with CUDA events around each step: the median (and min, max) over
// --repetitions steps after 5 warm-up steps. A plain program (no Google
// Benchmark), so that a GPU machine without it can build it:
//
//   build/bench/flora_gpu_bench [--repetitions 50] [--filter Flora] [--json out.json]
//
// Exits 0 with a note where no CUDA device is present.

#include "workload.h"

#include <flora/flora.h>

#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

namespace {

constexpr int kWarmup = 5;

using Factory = std::function<std::unique_ptr<torch::optim::Optimizer>(std::vector<torch::Tensor>&)>;

struct Case {
  std::string name;
  torch::Dtype dtype;
  Factory make;
};

struct Result {
  std::string name;
  double median_ms, min_ms, max_ms, state_mb;
};

std::unique_ptr<torch::optim::Optimizer> flora_optimizer(std::vector<torch::Tensor>& p, flora::FloraOptions o) {
  return std::make_unique<flora::Flora>(p, o);
}

std::vector<Case> cases() {
  const auto adam = [](auto& p) {
    return std::unique_ptr<torch::optim::Optimizer>(
        std::make_unique<torch::optim::Adam>(p, torch::optim::AdamOptions(1e-4)));
  };
  const auto r256 = flora::FloraOptions(1e-3).rank(256).beta1(0.9).kappa(1000).check_finite(false);
  return {
      {"Adam/fp32", torch::kFloat, adam},
      {"Flora_r256/fp32", torch::kFloat, [=](auto& p) { return flora_optimizer(p, r256); }},
      {"Flora_r256_checked/fp32", torch::kFloat,
       [=](auto& p) { return flora_optimizer(p, flora::FloraOptions(r256).check_finite(true)); }},
      {"Flora_r256_kappa1/fp32", torch::kFloat,
       [=](auto& p) { return flora_optimizer(p, flora::FloraOptions(r256).kappa(1)); }},
      {"Flora_r256_8bit/fp32", torch::kFloat,
       [=](auto& p) { return flora_optimizer(p, flora::FloraOptions(r256).quantization(true)); }},
      {"Flora_no_momentum/fp32", torch::kFloat,
       [](auto& p) { return flora_optimizer(p, flora::FloraOptions(1e-3).check_finite(false)); }},
      {"Adam/bf16", torch::kBFloat16, adam},
      {"Flora_r256/bf16", torch::kBFloat16, [=](auto& p) { return flora_optimizer(p, r256); }},
  };
}

Result run(const Case& c, int repetitions) {
  auto params = flora::bench::make_parameters(
      flora::bench::read_shapes(FLORA_SHAPES_DIR "/gpt2-small.tsv"), torch::kCUDA, c.dtype);
  auto optimizer = c.make(params);
  for (int i = 0; i < kWarmup; ++i) {
    optimizer->step();
  }
  torch::cuda::synchronize();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  std::vector<double> ms;
  for (int i = 0; i < repetitions; ++i) {
    at::cuda::CUDAEvent start(cudaEventDefault), stop(cudaEventDefault);
    start.record(stream);
    optimizer->step();
    stop.record(stream);
    stop.synchronize();
    ms.push_back(static_cast<double>(start.elapsed_time(stop)));
  }
  std::sort(ms.begin(), ms.end());
  const double state_mb = static_cast<double>(flora::optimizer_state_bytes(*optimizer)) / 1e6;
  optimizer.reset();
  params.clear();
  torch::cuda::synchronize();
  c10::cuda::CUDACachingAllocator::emptyCache(); // one workload on the GPU at a time
  return {c.name, ms[ms.size() / 2], ms.front(), ms.back(), state_mb};
}

} // namespace

int main(int argc, char** argv) {
  int repetitions = 50;
  std::string filter, json;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--repetitions") {
      repetitions = std::max(1, std::stoi(argv[i + 1]));
    } else if (flag == "--filter") {
      filter = argv[i + 1];
    } else if (flag == "--json") {
      json = argv[i + 1];
    } else {
      std::cerr << "unknown flag " << flag << "\n";
      return 2;
    }
  }
  if (!torch::cuda::is_available()) {
    std::cout << "flora_gpu_bench: no CUDA device, nothing to time\n";
    return 0;
  }
  std::vector<Result> results;
  std::printf("%-26s %10s %10s %10s %10s\n", "gpt2_small step", "median ms", "min ms", "max ms", "state MB");
  for (const auto& c : cases()) {
    if (!filter.empty() && c.name.find(filter) == std::string::npos) {
      continue;
    }
    const auto r = run(c, repetitions);
    std::printf("%-26s %10.3f %10.3f %10.3f %10.1f\n", r.name.c_str(), r.median_ms, r.min_ms, r.max_ms, r.state_mb);
    std::fflush(stdout);
    results.push_back(r);
  }
  if (!json.empty()) {
    std::ofstream out(json);
    out << "{\"repetitions\": " << repetitions << ", \"benchmarks\": [";
    for (size_t i = 0; i < results.size(); ++i) {
      const auto& r = results[i];
      out << (i ? ", " : "") << "{\"name\": \"" << r.name << "\", \"median_ms\": " << r.median_ms
          << ", \"min_ms\": " << r.min_ms << ", \"max_ms\": " << r.max_ms << ", \"state_MB\": " << r.state_mb << "}";
    }
    out << "]}\n";
  }
  return 0;
}
