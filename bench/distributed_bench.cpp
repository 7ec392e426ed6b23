// Data-parallel exchange: bytes handed to the process group per optimizer
// step, and the step time of ranks training together.
//
// Started alone, it counts the bytes of one exchange of GPT-2 small's 148
// gradients (bench/shapes/gpt2-small.tsv), plain and compressed at rank 256
// and 64, through a real GradientSynchronizer on a one-rank Gloo group: the
// figure is what the synchroniser handed to the process group, and it is
// checked against the plan computed from shapes alone.
//
//   build/bench/flora_distributed_bench
//
// Started by the launcher, every rank times training steps of a small MLP
// (forward, backward, exchange, SGD step) with plain and compressed exchange,
// with and without overlap; rank 0 reports.
//
//   scripts/torchrun.sh --standalone --nproc-per-node 2 build/bench/flora_distributed_bench
//
// Every benchmark runs a fixed number of iterations, so that all ranks run
// the same collectives.

#include "workload.h"

#include <flora/distributed.h>
#include <flora/flora.h>

#include <benchmark/benchmark.h>
#include <torch/csrc/distributed/c10d/HashStore.hpp>
#include <torch/torch.h>

#include <chrono>
#include <cstdlib>
#include <memory>

namespace {

using flora::distributed::GradientSynchronizer;
using flora::distributed::SynchronizerOptions;

SynchronizerOptions options_for(int64_t rank, bool overlap) {
  auto options = SynchronizerOptions().overlap(overlap);
  if (rank > 0) {
    options.compression_rank(rank);
  }
  return options;
}

// ------------------------------------------------------------ bytes per step

void BytesPerStep_GPT2Small(benchmark::State& state) {
  const int64_t rank = state.range(0);
  const auto shapes = flora::bench::read_shapes(std::string(FLORA_SHAPES_DIR) + "/gpt2-small.tsv");
  std::vector<std::vector<int64_t>> dims;
  std::vector<torch::Tensor> params;
  for (const auto& s : shapes) {
    dims.push_back(s.shape);
    params.push_back(torch::zeros(s.shape, torch::requires_grad()));
  }
  // Synthetic gradients: the byte count does not depend on their values.
  for (auto& p : params) {
    p.mutable_grad() = torch::full_like(p, 0.01);
  }
  auto group = flora::distributed::make_process_group(
      c10::make_intrusive<c10d::HashStore>(), 0, 1, 0,
      flora::distributed::InitOptions().backend(flora::distributed::BackendKind::gloo).gloo_hostname("127.0.0.1"));
  GradientSynchronizer sync(params, group, options_for(rank, false));
  for (auto _ : state) {
    sync.synchronize();
  }
  const double per_step = static_cast<double>(sync.bytes_exchanged()) / static_cast<double>(state.iterations());
  const int64_t planned = flora::distributed::bytes_per_exchange(dims, torch::kFloat, options_for(rank, false));
  const int64_t plain = flora::distributed::bytes_per_exchange(dims, torch::kFloat, SynchronizerOptions());
  if (static_cast<int64_t>(per_step) != planned) {
    state.SkipWithError("bytes handed to the process group differ from the plan");
    return;
  }
  // Where the bytes go: the matrices the rule compresses, and the rest.
  int64_t matrices = 0, matrix_plain = 0, matrix_sketch = 0;
  for (const auto& p : params) {
    if (rank > 0 && sync.compressed(p)) {
      ++matrices;
      matrix_plain += p.numel() * 4;
      const int64_t small = std::min(p.size(0), p.size(1));
      matrix_sketch += p.numel() / small * rank * 4;
    }
  }
  state.counters["bytes_per_step"] = per_step;
  state.counters["MB_per_step"] = per_step / 1e6;
  state.counters["vs_plain"] = per_step / static_cast<double>(plain);
  state.counters["compressed_matrices"] = static_cast<double>(matrices);
  state.counters["their_MB_plain"] = static_cast<double>(matrix_plain) / 1e6;
  state.counters["their_MB_sketch"] = static_cast<double>(matrix_sketch) / 1e6;
  state.counters["other_MB"] = (per_step - static_cast<double>(matrix_sketch)) / 1e6;
}

// ------------------------------------------------------------ step time

struct Mlp {
  std::vector<torch::Tensor> weights, biases;
  std::vector<torch::Tensor> params() const {
    std::vector<torch::Tensor> out;
    for (size_t i = 0; i < weights.size(); ++i) {
      out.push_back(weights[i]);
      out.push_back(biases[i]);
    }
    return out;
  }
};

constexpr int64_t kWidth = 1024;
constexpr int64_t kLayers = 4;
constexpr int64_t kBatch = 64;

Mlp make_mlp() {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1);
  Mlp m;
  for (int64_t l = 0; l < kLayers; ++l) {
    m.weights.push_back((torch::randn({kWidth, kWidth}, gen) / std::sqrt(kWidth)).requires_grad_(true));
    m.biases.push_back(torch::zeros({kWidth}, torch::requires_grad()));
  }
  return m;
}

torch::Tensor mlp_loss(const Mlp& m, const torch::Tensor& x, const torch::Tensor& y) {
  auto h = x;
  for (size_t l = 0; l < m.weights.size(); ++l) {
    h = torch::addmm(m.biases[l], h, m.weights[l].t());
    if (l + 1 < m.weights.size()) {
      h = torch::tanh(h);
    }
  }
  return torch::mse_loss(h, y);
}

std::shared_ptr<flora::distributed::World> world_of_launcher() {
  static std::shared_ptr<flora::distributed::World> world = std::make_shared<flora::distributed::World>(
      flora::distributed::init_from_env(flora::distributed::InitOptions()
                                            .backend(flora::distributed::BackendKind::gloo)
                                            .gloo_hostname("127.0.0.1")
                                            .timeout(std::chrono::minutes(2))));
  return world;
}

void DataParallelStep(benchmark::State& state, int64_t rank, bool overlap) {
  auto world = world_of_launcher();
  Mlp m = make_mlp();
  torch::optim::SGD optimizer(m.params(), torch::optim::SGDOptions(1e-3));
  GradientSynchronizer sync(m.params(), world->process_group, options_for(rank, overlap));
  sync.broadcast_parameters();
  auto gen = at::make_generator<at::CPUGeneratorImpl>(100 + static_cast<uint64_t>(world->rank));
  const auto x = torch::randn({kBatch, kWidth}, gen);
  const auto y = torch::randn({kBatch, kWidth}, gen);
  auto step = [&](double* sync_seconds) {
    optimizer.zero_grad();
    mlp_loss(m, x, y).backward();
    const auto begin = std::chrono::steady_clock::now();
    sync.synchronize();
    if (sync_seconds) {
      *sync_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
    }
    optimizer.step();
  };
  step(nullptr); // warm-up
  const int64_t bytes_before = sync.bytes_exchanged();
  double sync_seconds = 0;
  for (auto _ : state) {
    step(&sync_seconds);
  }
  const auto n = static_cast<double>(state.iterations());
  state.counters["ranks"] = static_cast<double>(world->size);
  state.counters["bytes_per_step"] = static_cast<double>(sync.bytes_exchanged() - bytes_before) / n;
  state.counters["synchronize_ms"] = sync_seconds / n * 1e3;
}

// Rank 0 reports; the other ranks run the same benchmarks silently.
class SilentReporter : public benchmark::BenchmarkReporter {
 public:
  bool ReportContext(const Context&) override {
    return true;
  }
  void ReportRuns(const std::vector<Run>&) override {}
};

} // namespace

int main(int argc, char** argv) {
  const bool launched = std::getenv("WORLD_SIZE") != nullptr;
  if (launched) {
    for (const int64_t rank : {0, 64, 16}) {
      for (const bool overlap : {false, true}) {
        const std::string name = std::string("DataParallelStep/") + (rank ? "r" + std::to_string(rank) : "plain") +
            (overlap ? "/overlap" : "");
        benchmark::RegisterBenchmark(name.c_str(), DataParallelStep, rank, overlap)
            ->Iterations(30)
            ->UseRealTime()
            ->Unit(benchmark::kMillisecond);
      }
    }
  } else {
    benchmark::RegisterBenchmark("BytesPerStep/GPT2Small", BytesPerStep_GPT2Small)
        ->ArgName("rank")
        ->Arg(0)
        ->Arg(256)
        ->Arg(64)
        ->Iterations(1)
        ->Unit(benchmark::kMillisecond);
  }
  benchmark::Initialize(&argc, argv);
  if (launched && world_of_launcher()->rank != 0) {
    SilentReporter silent;
    benchmark::RunSpecifiedBenchmarks(&silent);
  } else {
    benchmark::RunSpecifiedBenchmarks();
  }
  benchmark::Shutdown();
  return 0;
}
