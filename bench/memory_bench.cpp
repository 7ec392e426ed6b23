// Peak memory of one training step, for Adam and for Flora's memory modes,
// measured with flora::MemoryMeter (tensor storage through the allocator:
// parameters, gradients, activations, optimizer state, temporaries); plus
// optimizer-state bytes at LLaMA-7B scale computed from shapes alone.
//
//   build/bench/flora_memory_bench                 # everything, table at the end
//   build/bench/flora_memory_bench --benchmark_filter=gpt2_small
//
// Workloads
//   gpt2_small: the 148 parameter shapes of Hugging Face GPT-2 small
//     (bench/shapes/gpt2-small.tsv, 124.4 M float32 parameters) with a
//     synthetic loss sum_i s_i * sum(p_i): backward produces a full gradient
//     for every parameter, as a real model's would, without activations.
//   mlp: a small real model, an 8-layer 1024-wide MLP (8.4 M parameters) on
//     a regression batch of 256: activations included.
// Modes (one optimizer step, measured after a warm-up step so that the state
// exists): adam; flora (rank 256, beta1 0.9); flora 8-bit; flora with k = 4
// micro-batches accumulated at rank 256 (CompressedAccumulator after each
// backward); the same accumulated inside backward (FusedBackward); flora with
// the update fused into backward (k = 1).
// Runs on the CPU (counting allocator) and, where present, on CUDA (the
// caching allocator's statistics): --device=cuda.

#include "workload.h"

#include <flora/flora.h>

#include <benchmark/benchmark.h>

#include <cstdio>
#include <functional>
#include <limits>
#include <map>
#include <string>

namespace {

using flora::bench::NamedShape;

torch::Device g_device = torch::kCPU;

struct Row {
  std::string workload, mode;
  double params_mb = 0, peak_mb = 0, state_mb = 0;
};
std::vector<Row>& rows() {
  static std::vector<Row> r;
  return r;
}

struct Model {
  std::vector<torch::Tensor> params;
  std::function<torch::Tensor(int64_t micro)> loss; // one micro-batch's loss
};

Model gpt2_small() {
  Model m;
  m.params = flora::bench::make_parameters(flora::bench::read_shapes(FLORA_SHAPES_DIR "/gpt2-small.tsv"), g_device);
  std::vector<torch::Tensor> scales;
  for (size_t i = 0; i < m.params.size(); ++i) {
    m.params[i].mutable_grad() = torch::Tensor();
    scales.push_back(torch::randn({}, torch::TensorOptions().device(g_device)));
  }
  m.loss = [params = m.params, scales](int64_t) {
    auto loss = torch::zeros({}, params.front().options());
    for (size_t i = 0; i < params.size(); ++i) {
      loss = loss + params[i].sum() * scales[i];
    }
    return loss;
  };
  return m;
}

Model mlp() {
  torch::manual_seed(0);
  const int64_t width = 1024, layers = 8, batch = 256;
  const auto opts = torch::TensorOptions().device(g_device);
  Model m;
  for (int64_t l = 0; l < layers; ++l) {
    m.params.push_back((torch::randn({width, width}, opts) / std::sqrt(static_cast<double>(width))).requires_grad_(true));
    m.params.push_back(torch::zeros({width}, opts).requires_grad_(true));
  }
  const auto x = torch::randn({4, batch, width}, opts);
  const auto y = torch::randn({4, batch, width}, opts);
  m.loss = [params = m.params, x, y](int64_t micro) {
    auto h = x[micro];
    for (size_t i = 0; i < params.size(); i += 2) {
      h = torch::tanh(torch::addmm(params[i + 1], h, params[i]));
    }
    return torch::mse_loss(h, y[micro]);
  };
  return m;
}

const auto kFlora = flora::FloraOptions(1e-3).rank(256).beta1(0.9).kappa(1000).check_finite(false);

// One optimizer step in `mode`; `micro_batches` backward passes.
struct Trainer {
  Model model;
  std::string mode;
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  std::unique_ptr<flora::CompressedAccumulator> accumulator;
  std::unique_ptr<flora::FusedBackward> fused;
  int64_t micro_batches = 1;

  Trainer(Model m, const std::string& name) : model(std::move(m)), mode(name) {
    if (mode == "adam") {
      optimizer = std::make_unique<torch::optim::Adam>(model.params, torch::optim::AdamOptions(1e-4));
      return;
    }
    auto options = kFlora;
    if (mode == "flora_8bit") {
      options.quantization(true);
    }
    auto flora_optimizer = std::make_unique<flora::Flora>(model.params, options);
    if (mode == "flora_accumulate_k4") {
      micro_batches = 4;
      accumulator = std::make_unique<flora::CompressedAccumulator>(model.params, flora::AccumulationOptions(256));
    } else if (mode == "flora_fused_accumulate_k4") {
      micro_batches = 4;
      fused = std::make_unique<flora::FusedBackward>(
          *flora_optimizer, flora::FusedBackwardOptions().accumulation_steps(4).accumulation_rank(256));
    } else if (mode == "flora_fused") {
      fused = std::make_unique<flora::FusedBackward>(*flora_optimizer);
    }
    optimizer = std::move(flora_optimizer);
  }

  ~Trainer() {
    fused.reset(); // hooks off before the optimizer goes
  }

  void step() {
    for (int64_t micro = 0; micro < micro_batches; ++micro) {
      (model.loss(micro) / static_cast<double>(micro_batches)).backward();
      if (accumulator) {
        accumulator->accumulate();
      }
    }
    if (fused) {
      return; // updated inside backward
    }
    if (accumulator) {
      accumulator->restore();
    }
    optimizer->step();
    optimizer->zero_grad();
  }
};

void measure(benchmark::State& state, const std::string& workload, const std::string& mode) {
  flora::MemoryMeter meter(g_device);
  double peak_mb = 0, state_mb = 0, params_mb = 0;
  for (auto _ : state) {
    Trainer trainer(workload == "gpt2_small" ? gpt2_small() : mlp(), mode);
    for (const auto& p : trainer.model.params) {
      params_mb += static_cast<double>(p.nbytes()) / 1e6;
    }
    trainer.step(); // warm-up: the state is allocated
    if (g_device.is_cuda()) {
      torch::cuda::synchronize();
    }
    meter.reset_peak();
    trainer.step();
    if (g_device.is_cuda()) {
      torch::cuda::synchronize();
    }
    peak_mb = static_cast<double>(meter.peak_bytes()) / 1e6;
    state_mb = static_cast<double>(flora::optimizer_state_bytes(*trainer.optimizer)) / 1e6;
  }
  state.counters["peak_MB"] = peak_mb;
  state.counters["state_MB"] = state_mb;
  state.counters["params_MB"] = params_mb;
  rows().push_back({workload, mode, params_mb, peak_mb, state_mb});
}

void state_bytes_at_scale(benchmark::State& state, const std::string& shapes_file) {
  const auto named = flora::bench::read_shapes(std::string(FLORA_SHAPES_DIR) + "/" + shapes_file);
  std::vector<std::vector<int64_t>> shapes;
  for (const auto& s : named) {
    shapes.push_back(s.shape);
  }
  for (auto _ : state) {
    benchmark::DoNotOptimize(flora::estimate_adam_state_bytes(shapes));
  }
  const auto base = flora::FloraOptions(1e-3).beta1(0.9);
  state.counters["adam_MB"] = static_cast<double>(flora::estimate_adam_state_bytes(shapes)) / 1e6;
  state.counters["flora_r256_MB"] = static_cast<double>(flora::estimate_state_bytes(shapes, flora::FloraOptions(base).rank(256))) / 1e6;
  state.counters["flora_r256_8bit_MB"] =
      static_cast<double>(flora::estimate_state_bytes(shapes, flora::FloraOptions(base).rank(256).quantization(true))) / 1e6;
  state.counters["flora_r64_8bit_MB"] =
      static_cast<double>(flora::estimate_state_bytes(shapes, flora::FloraOptions(base).rank(64).quantization(true))) / 1e6;
  // max_aspect_ratio unlimited: embeddings keep their momentum compressed too.
  const auto unlimited = flora::FloraOptions(base).max_aspect_ratio(std::numeric_limits<double>::infinity());
  state.counters["flora_r256_any_aspect_MB"] =
      static_cast<double>(flora::estimate_state_bytes(shapes, flora::FloraOptions(unlimited).rank(256))) / 1e6;
  state.counters["flora_r256_8bit_any_aspect_MB"] = static_cast<double>(flora::estimate_state_bytes(
      shapes, flora::FloraOptions(unlimited).rank(256).quantization(true))) / 1e6;
  state.counters["params_M"] = static_cast<double>(flora::bench::numel(named)) / 1e6;
}

void register_all() {
  for (const std::string workload : {"gpt2_small", "mlp"}) {
    for (const std::string mode :
         {"adam", "flora", "flora_8bit", "flora_accumulate_k4", "flora_fused_accumulate_k4", "flora_fused"}) {
      benchmark::RegisterBenchmark(
          ("peak/" + workload + "/" + mode).c_str(),
          [workload, mode](benchmark::State& st) { measure(st, workload, mode); })
          ->Iterations(1)
          ->Unit(benchmark::kMillisecond);
    }
  }
  for (const std::string file : {"gpt2-small.tsv", "llama-7b.tsv"}) {
    benchmark::RegisterBenchmark(
        ("state_from_shapes/" + file).c_str(), [file](benchmark::State& st) { state_bytes_at_scale(st, file); });
  }
}

void print_table() {
  if (rows().empty()) {
    return;
  }
  std::printf("\n| workload | mode | parameters MB | peak MB (one step) | optimizer state MB |\n|---|---|---|---|---|\n");
  for (const auto& r : rows()) {
    std::printf("| %s | %s | %.1f | %.1f | %.1f |\n", r.workload.c_str(), r.mode.c_str(), r.params_mb, r.peak_mb,
                r.state_mb);
  }
  std::printf("\ndevice: %s; peak = tensor storage through the allocator (flora::MemoryMeter)\n", g_device.str().c_str());
}

} // namespace

int main(int argc, char** argv) {
  // --device=cuda before Google Benchmark sees the arguments.
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--device=", 0) == 0) {
      g_device = torch::Device(a.substr(9));
    } else {
      rest.push_back(argv[i]);
    }
  }
  int rest_argc = static_cast<int>(rest.size());
  register_all();
  benchmark::Initialize(&rest_argc, rest.data());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  print_table();
  return 0;
}
