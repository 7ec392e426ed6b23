// The ranks' side of the multi-process tests (see spawn.h): each worker is
// one process of a data-parallel job started with the launcher's variables,
// and writes what the test checks into FLORA_TEST_OUT.

#include "spawn.h"
#include "training.h"

#include <flora/distributed.h>
#include <flora/flora.h>

#include <torch/torch.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <thread>

#include <sys/stat.h>

namespace flora::dist_test {

namespace {

using flora::distributed::GradientSynchronizer;
using flora::distributed::InitOptions;
using flora::distributed::SynchronizerOptions;

flora::distributed::World start(std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
  torch::set_num_threads(1); // several ranks share the machine's cores
  return flora::distributed::init_from_env(InitOptions()
                                               .backend(flora::distributed::BackendKind::gloo)
                                               .gloo_hostname("127.0.0.1")
                                               .timeout(timeout));
}

torch::Device test_device() {
  const char* device = std::getenv("FLORA_TEST_DEVICE");
  return device ? torch::Device(device) : torch::Device(torch::kCPU);
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path + ".tmp");
  out << text;
  out.close();
  std::rename((path + ".tmp").c_str(), path.c_str());
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

std::string message_of(const std::exception& e) {
  if (const auto* error = dynamic_cast<const c10::Error*>(&e)) {
    return error->what_without_backtrace();
  }
  return e.what();
}

// ------------------------------------------------------------------ train

// Every scenario of training.h on this rank; final parameters and exchange
// statistics per scenario.
int train(const WorkerContext& context) {
  const auto world = start();
  for (const Scenario scenario : all_scenarios()) {
    RunStats stats;
    const auto params = run_rank(scenario, world.process_group, test_device(), &stats);
    const std::string base = context.file(name(scenario) + ".rank" + std::to_string(context.rank));
    torch::save(params, base + ".pt");
    if (!stats.first_gradients.empty()) {
      torch::save(stats.first_gradients, base + ".grads.pt");
    }
    write_text(
        base + ".stats", std::to_string(stats.bytes_per_exchange) + " " + std::to_string(stats.bytes_exchanged) + " " +
            std::to_string(stats.collectives) + "\n");
  }
  return 0;
}

// ------------------------------------------------------------------ checkpoint

constexpr int64_t kCheckpointSteps = 4;
constexpr int64_t kCheckpointAt = 2; // saved after this many steps

// Compressed exchange with overlap (its seeds advance every step), Flora.
void checkpoint_run(const WorkerContext& context, bool resume) {
  const auto world = start();
  Model m = make_model(100 + static_cast<uint64_t>(context.rank));
  Flora optimizer(m.params(), optimizer_options());
  GradientSynchronizer sync(
      m.params(), world.process_group,
      SynchronizerOptions().compression_rank(kRank).overlap(true).bucket_bytes(kBucketBytes).seed(3));
  const std::string checkpoint = context.file("checkpoint.pt");
  int64_t first = 0;
  if (resume) {
    torch::serialize::InputArchive archive;
    archive.load_from(checkpoint);
    torch::NoGradGuard no_grad;
    const auto params = m.params();
    for (size_t i = 0; i < params.size(); ++i) {
      torch::Tensor value;
      archive.read("param/" + std::to_string(i), value);
      params[i].copy_(value);
    }
    torch::serialize::InputArchive opt_archive, sync_archive;
    archive.read("optimizer", opt_archive);
    archive.read("synchronizer", sync_archive);
    optimizer.load(opt_archive);
    sync.load(sync_archive);
    first = kCheckpointAt;
  }
  sync.broadcast_parameters();
  for (int64_t s = first; s < kCheckpointSteps; ++s) {
    optimizer.zero_grad();
    loss(m, make_batch(s, context.rank, 0)).backward();
    sync.synchronize();
    optimizer.step();
    if (!resume && s + 1 == kCheckpointAt && context.rank == 0) {
      torch::serialize::OutputArchive archive, opt_archive, sync_archive;
      const auto params = m.params();
      for (size_t i = 0; i < params.size(); ++i) {
        archive.write("param/" + std::to_string(i), params[i].detach());
      }
      optimizer.save(opt_archive);
      sync.save(sync_archive);
      archive.write("optimizer", opt_archive);
      archive.write("synchronizer", sync_archive);
      archive.save_to(checkpoint + ".tmp");
      std::rename((checkpoint + ".tmp").c_str(), checkpoint.c_str());
    }
  }
  std::vector<torch::Tensor> out;
  for (const auto& p : m.params()) {
    out.push_back(p.detach().clone());
  }
  torch::save(out, context.file((resume ? "resumed" : "uninterrupted") + std::string(".rank") +
                                std::to_string(context.rank) + ".pt"));
}

int checkpoint_first(const WorkerContext& context) {
  checkpoint_run(context, false);
  return 0;
}

int checkpoint_resume(const WorkerContext& context) {
  checkpoint_run(context, true);
  return 0;
}

// ------------------------------------------------------------------ mismatch

// Rank 1 differs from rank 0 in one thing per case; every rank records the
// error it got (or "no error"), then a matching set-up must still work.
int mismatch(const WorkerContext& context) {
  const auto world = start();
  const bool odd = context.rank == 1;
  auto record = [&](const std::string& which, const std::function<void()>& fn) {
    std::string message = "no error";
    try {
      fn();
    } catch (const std::exception& e) {
      message = message_of(e);
    }
    write_text(context.file("mismatch." + which + ".rank" + std::to_string(context.rank) + ".txt"), message);
  };
  const auto options = SynchronizerOptions().compression_rank(kRank);
  record("shape", [&] {
    Model m = make_model(1);
    if (odd) {
      m.w1 = torch::zeros({24, 17}, torch::requires_grad());
    }
    GradientSynchronizer sync(m.params(), world.process_group, options);
  });
  record("dtype", [&] {
    Model m = make_model(1);
    if (odd) {
      m.b1 = torch::zeros({24}, torch::TensorOptions().dtype(torch::kDouble).requires_grad(true));
    }
    GradientSynchronizer sync(m.params(), world.process_group, options);
  });
  record("option", [&] {
    Model m = make_model(1);
    GradientSynchronizer sync(m.params(), world.process_group, SynchronizerOptions().compression_rank(odd ? 8 : kRank));
  });
  record("seed", [&] {
    Model m = make_model(1);
    GradientSynchronizer sync(m.params(), world.process_group, SynchronizerOptions(options).seed(odd ? 5 : 0));
  });
  record("accumulator_seed", [&] {
    Model m = make_model(1);
    CompressedAccumulator acc(m.params(), AccumulationOptions(kRank).seed(odd ? 8 : 7));
    GradientSynchronizer sync(acc, world.process_group);
  });
  record("count", [&] {
    Model m = make_model(1);
    auto params = m.params();
    if (odd) {
      params.pop_back();
    }
    GradientSynchronizer sync(params, world.process_group, options);
  });
  record("afterwards", [&] {
    Model m = make_model(1);
    GradientSynchronizer sync(m.params(), world.process_group, options);
    loss(m, make_batch(0, context.rank, 0)).backward();
    sync.synchronize();
    // A second group over the same store keeps its keys apart.
    auto second = flora::distributed::make_process_group(
        world.store, context.rank, context.world, context.rank,
        InitOptions().backend(flora::distributed::BackendKind::gloo).gloo_hostname("127.0.0.1"));
    Model m2 = make_model(1);
    GradientSynchronizer sync2(m2.params(), second, options);
    loss(m2, make_batch(0, context.rank, 0)).backward();
    sync2.synchronize();
    TORCH_CHECK(torch::equal(m.w1.grad(), m2.w1.grad()), "the second group reduced differently");
  });
  return 0;
}

// ------------------------------------------------------------------ failures

// Rank 1 exits in the middle of a step; rank 0 must get an error, soon.
int rank_exits(const WorkerContext& context) {
  const auto world = start(std::chrono::seconds(5));
  Model m = make_model(1);
  GradientSynchronizer sync(m.params(), world.process_group, SynchronizerOptions().bucket_bytes(kBucketBytes));
  loss(m, make_batch(0, context.rank, 0)).backward();
  sync.synchronize(); // one good step
  loss(m, make_batch(1, context.rank, 0)).backward();
  if (context.rank == 1) {
    // Not before rank 0 has read all of the good step (an exit with data in
    // flight could reset the connection under it).
    world.store->wait({"rank0_step_done"});
    std::_Exit(0); // gone, without a word to the others
  }
  world.store->set("rank0_step_done", std::vector<uint8_t>{1});
  const auto begin = std::chrono::steady_clock::now();
  std::string message = "no error";
  try {
    sync.synchronize();
  } catch (const std::exception& e) {
    message = message_of(e);
  }
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - begin).count();
  write_text(context.file("exit.rank0.txt"), std::to_string(ms) + "\n" + message);
  return 0;
}

// Rank 1 stalls (alive, but never joins the exchange); rank 0 must give up
// after the collective timeout.
constexpr int64_t kStallTimeoutMs = 2000;

int rank_stalls(const WorkerContext& context) {
  const auto world = start(std::chrono::milliseconds(kStallTimeoutMs));
  Model m = make_model(1);
  GradientSynchronizer sync(m.params(), world.process_group);
  loss(m, make_batch(0, context.rank, 0)).backward();
  const std::string report = context.file("stall.rank0.txt");
  if (context.rank == 1) {
    // Stall until rank 0 has reported (bounded: 20 s), then leave.
    for (int i = 0; i < 400 && !exists(report); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    std::_Exit(0);
  }
  const auto begin = std::chrono::steady_clock::now();
  std::string message = "no error";
  try {
    sync.synchronize();
  } catch (const std::exception& e) {
    message = message_of(e);
  }
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - begin).count();
  write_text(report, std::to_string(ms) + "\n" + message);
  return 0;
}

[[maybe_unused]] const bool kRegistered = register_worker("train", train) &&
    register_worker("checkpoint_first", checkpoint_first) && register_worker("checkpoint_resume", checkpoint_resume) &&
    register_worker("mismatch", mismatch) && register_worker("rank_exits", rank_exits) &&
    register_worker("rank_stalls", rank_stalls);

} // namespace

} // namespace flora::dist_test
