// GPU step time of Flora against Adam on the GPT-2 small shapes
// (bench/shapes/gpt2-small.tsv, 124.4 M parameters, synthetic gradients),
// side by side in one run, in float32 and bfloat16 parameters:
//
//   FusedAdamW       at::_fused_adamw_ over all parameters, step counts
//                    advanced with _foreach_add_ as torch does (fused_adamw.h)
//   Adam             torch::optim::Adam
//   Flora_r256       rank 256, beta1 0.9, philox projections: the fused step
//   Flora_r256_graph the same, capturable, one step captured in a CUDA graph
//                    and replayed 
//   Flora_r256_tf32  the same with TF32 matrix products allowed
//   Flora_r256_precision_tf32, _bf16  projection_precision tf32 / bfloat16
//   Flora_r256_checked, _kappa1, _8bit, _reference, Flora_no_momentum
//   GemmFloor        the down/up products of the compressed matrices alone,
//                    float32 as Flora computes them (gemm_floor.h); _tf32
//                    with TF32 allowed
//
// Each case: 5 warm-up steps, then CUDA events around each of --repetitions
// steps on the current stream; the median (and min, max), the optimizer's
// state in MB, and the dispatcher calls of one step (aten_calls.h: for the
// graph, those of the eager step it holds). A plain program (no Google
// Benchmark), so that a GPU machine without it can build it:
//
//   build/bench/flora_gpu_bench [--repetitions 30] [--filter Flora] [--json out.json]
//
// Exits 0 with a note where no CUDA device is present.

#include "aten_calls.h"
#include "fused_adamw.h"
#include "gemm_floor.h"
#include "workload.h"

#include <flora/flora.h>

#include <ATen/Context.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

constexpr int kWarmup = 5;

/// A case set up and ready to step: `step` runs one step on the current
/// stream. The functions point into `owner`, which holds everything the case
/// allocated (released after the case: one workload on the GPU at a time).
struct Workload {
  std::shared_ptr<void> owner;
  std::function<void()> step;
  std::function<double()> state_mb;
  std::optional<int64_t> aten_calls; // set when the timed step is not a dispatcher sequence
  std::string note; // why the case did not run, if it did not

  void release() {
    step = nullptr;
    state_mb = nullptr;
    owner.reset();
  }
};

using Setup = std::function<Workload(torch::Dtype)>;

struct Case {
  std::string name;
  torch::Dtype dtype;
  Setup setup;
};

struct Result {
  std::string name;
  double median_ms, min_ms, max_ms, state_mb;
  int64_t aten_calls;
};

std::vector<flora::bench::NamedShape> shapes() {
  return flora::bench::read_shapes(FLORA_SHAPES_DIR "/gpt2-small.tsv");
}

const auto kFlora = flora::FloraOptions(1e-3).rank(256).beta1(0.9).kappa(1000).check_finite(false);

Workload optimizer_workload(std::unique_ptr<torch::optim::Optimizer> optimizer) {
  auto* opt = optimizer.get();
  Workload w;
  w.owner = std::shared_ptr<torch::optim::Optimizer>(std::move(optimizer));
  w.step = [opt] { opt->step(); };
  w.state_mb = [opt] { return static_cast<double>(flora::optimizer_state_bytes(*opt)) / 1e6; };
  return w;
}

Setup flora_setup(const flora::FloraOptions& options) {
  return [options](torch::Dtype dtype) {
    auto params = flora::bench::make_parameters(shapes(), torch::kCUDA, dtype);
    return optimizer_workload(std::make_unique<flora::Flora>(params, options));
  };
}

Workload adam_workload(torch::Dtype dtype) {
  auto params = flora::bench::make_parameters(shapes(), torch::kCUDA, dtype);
  return optimizer_workload(std::make_unique<torch::optim::Adam>(params, torch::optim::AdamOptions(1e-4)));
}

Workload fused_adamw_workload(torch::Dtype dtype) {
  auto adamw = std::make_shared<flora::bench::FusedAdamW>(flora::bench::make_parameters(shapes(), torch::kCUDA, dtype));
  auto* a = adamw.get();
  Workload w;
  w.owner = adamw;
  w.step = [a] { a->step(); };
  w.state_mb = [a] { return static_cast<double>(a->state_bytes()) / 1e6; };
  return w;
}

Workload gemm_floor_workload(torch::Dtype) {
  auto floor = std::make_shared<flora::bench::GemmFloor>(shapes(), kFlora, torch::kCUDA);
  auto* f = floor.get();
  Workload w;
  w.owner = floor;
  w.step = [f] { f->run(); };
  w.state_mb = [] { return 0.0; };
  return w;
}

// ---------------------------------------------------------------- CUDA graph of a capturable step

// A capturable Flora whose step is captured once (after warm-up steps on a
// side stream, as CUDA graphs need) and replayed as the timed step.
Workload flora_graph_workload(torch::Dtype dtype) {
  using Options = flora::FloraOptions;
  struct Captured {
    at::cuda::CUDAGraph graph; // declared first: outlives the tensors made in its capture
    c10::cuda::CUDAStream stream = c10::cuda::getStreamFromPool();
    std::vector<torch::Tensor> params;
    std::unique_ptr<flora::Flora> opt;
  };
  auto owner = std::make_shared<Captured>();
  auto* c = owner.get();
  c->params = flora::bench::make_parameters(shapes(), torch::kCUDA, dtype);
  c->opt = std::make_unique<flora::Flora>(c->params, Options(kFlora).capturable(true).check_finite(false));
  Workload w;
  w.owner = owner;
  torch::cuda::synchronize();
  {
    const c10::cuda::CUDAStreamGuard guard(c->stream);
    for (int i = 0; i < 3; ++i) {
      c->opt->step(); // the first allocates the state; then kernels and cuBLAS are ready
    }
    w.aten_calls = flora::bench::aten_calls_of([&] { c->opt->step(); });
    c->graph.capture_begin();
    c->opt->step();
    c->graph.capture_end();
  }
  c->stream.synchronize();
  // Replays on the current stream: ordered like every other case's step.
  w.step = [c] { c->graph.replay(); };
  w.state_mb = [c] { return static_cast<double>(flora::optimizer_state_bytes(*c->opt)) / 1e6; };
  return w;
}

// ---------------------------------------------------------------- TF32 products

// float32 matrix products on TF32 tensor cores while the case runs
// (torch.set_float32_matmul_precision("high"), a common training setting):
// Flora's down/up products are float32 GEMMs, which the CUDA cores alone
// (about 67 TFLOP/s on an H200) take longer over than Adam's whole step.
Setup with_tf32(Setup inner) {
  return [inner](torch::Dtype dtype) {
    struct Restore {
      std::string previous;
      std::shared_ptr<void> inner; // released before the precision is restored
      ~Restore() {
        inner.reset();
        at::globalContext().setFloat32MatmulPrecision(previous);
      }
    };
    const auto precision = at::globalContext().float32MatmulPrecision();
    auto restore = std::make_shared<Restore>();
    restore->previous = precision == at::Float32MatmulPrecision::HIGHEST
        ? "highest"
        : (precision == at::Float32MatmulPrecision::HIGH ? "high" : "medium");
    at::globalContext().setFloat32MatmulPrecision("high");
    Workload w = inner(dtype);
    restore->inner = std::move(w.owner);
    w.owner = restore;
    return w;
  };
}

std::vector<Case> cases() {
  std::vector<Case> out;
  for (const auto dtype : {torch::kFloat, torch::kBFloat16}) {
    const std::string suffix = dtype == torch::kFloat ? "/fp32" : "/bf16";
    out.push_back({"FusedAdamW" + suffix, dtype, fused_adamw_workload});
    out.push_back({"Adam" + suffix, dtype, adam_workload});
    out.push_back({"Flora_r256" + suffix, dtype, flora_setup(kFlora)});
    out.push_back({"Flora_r256_graph" + suffix, dtype, flora_graph_workload});
    out.push_back({"Flora_r256_tf32" + suffix, dtype, with_tf32(flora_setup(kFlora))});
    // The same products through FloraOptions::projection_precision (TF32 for
    // Flora's own calls only, the process setting untouched), and bfloat16.
    out.push_back(
        {"Flora_r256_precision_tf32" + suffix, dtype,
         flora_setup(flora::FloraOptions(kFlora).projection_precision(flora::ProjectionPrecision::tf32))});
    out.push_back(
        {"Flora_r256_precision_bf16" + suffix, dtype,
         flora_setup(flora::FloraOptions(kFlora).projection_precision(flora::ProjectionPrecision::bfloat16))});
    out.push_back({"Flora_r256_8bit" + suffix, dtype, flora_setup(flora::FloraOptions(kFlora).quantization(true))});
    out.push_back({"Flora_no_momentum" + suffix, dtype, flora_setup(flora::FloraOptions(1e-3).check_finite(false))});
    out.push_back(
        {"Flora_r256_reference" + suffix, dtype,
         flora_setup(flora::FloraOptions(kFlora).projection(flora::ProjectionMode::reference))});
    if (dtype == torch::kFloat) {
      out.push_back({"Flora_r256_checked/fp32", dtype, flora_setup(flora::FloraOptions(kFlora).check_finite(true))});
      out.push_back({"Flora_r256_kappa1/fp32", dtype, flora_setup(flora::FloraOptions(kFlora).kappa(1))});
      // float32 products whatever the parameters' dtype: one row serves both.
      out.push_back({"GemmFloor/fp32", dtype, gemm_floor_workload});
      out.push_back({"GemmFloor_tf32/fp32", dtype, with_tf32(gemm_floor_workload)});
    }
  }
  return out;
}

std::optional<Result> run(const Case& c, int repetitions) {
  Workload w = c.setup(c.dtype);
  if (!w.note.empty()) {
    std::printf("%-26s %s\n", c.name.c_str(), w.note.c_str());
    return std::nullopt;
  }
  for (int i = 0; i < kWarmup; ++i) {
    w.step();
  }
  const int64_t calls = w.aten_calls.has_value() ? *w.aten_calls : flora::bench::aten_calls_of(w.step);
  torch::cuda::synchronize();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  std::vector<double> ms;
  for (int i = 0; i < repetitions; ++i) {
    at::cuda::CUDAEvent start(cudaEventDefault), stop(cudaEventDefault);
    start.record(stream);
    w.step();
    stop.record(stream);
    stop.synchronize();
    ms.push_back(static_cast<double>(start.elapsed_time(stop)));
  }
  std::sort(ms.begin(), ms.end());
  const double state_mb = w.state_mb();
  w.release();
  torch::cuda::synchronize();
  c10::cuda::CUDACachingAllocator::emptyCache(); // one workload on the GPU at a time
  return Result{c.name, ms[ms.size() / 2], ms.front(), ms.back(), state_mb, calls};
}

} // namespace

int main(int argc, char** argv) {
  int repetitions = 30;
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
  std::printf(
      "%-26s %10s %10s %10s %10s %10s\n", "gpt2_small step", "median ms", "min ms", "max ms", "state MB", "aten calls");
  for (const auto& c : cases()) {
    if (!filter.empty() && c.name.find(filter) == std::string::npos) {
      continue;
    }
    const auto r = run(c, repetitions);
    if (!r) {
      continue;
    }
    std::printf(
        "%-26s %10.3f %10.3f %10.3f %10.1f %10lld\n", r->name.c_str(), r->median_ms, r->min_ms, r->max_ms, r->state_mb,
        static_cast<long long>(r->aten_calls));
    std::fflush(stdout);
    results.push_back(*r);
  }
  if (!json.empty()) {
    std::ofstream out(json);
    out << "{\"repetitions\": " << repetitions << ", \"benchmarks\": [";
    for (size_t i = 0; i < results.size(); ++i) {
      const auto& r = results[i];
      out << (i ? ", " : "") << "{\"name\": \"" << r.name << "\", \"median_ms\": " << r.median_ms
          << ", \"min_ms\": " << r.min_ms << ", \"max_ms\": " << r.max_ms << ", \"state_MB\": " << r.state_mb
          << ", \"aten_calls\": " << r.aten_calls << "}";
    }
    out << "]}\n";
  }
  return 0;
}
