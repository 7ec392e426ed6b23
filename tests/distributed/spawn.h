#pragma once

// Runs a worker of this test binary as `world` processes, one per rank,
// over loopback: fork + exec of /proc/self/exe with --flora-worker=<name>
// and the launcher's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
// MASTER_PORT) as torchrun gives them. Every run has a hard deadline: the
// ranks still running then are killed and reported as such, so a test
// never hangs. Children die with this process (PR_SET_PDEATHSIG).

#include <chrono>
#include <map>
#include <string>
#include <vector>

namespace flora::dist_test {

struct SpawnOptions {
  int world = 2;
  std::string worker;
  /// Where the ranks write their results (FLORA_TEST_OUT) and logs.
  std::string out_dir;
  std::chrono::milliseconds deadline{std::chrono::seconds(90)};
  /// true: this process hosts the store and every rank is a client
  /// (TORCHELASTIC_USE_AGENT_STORE=True, as under torchrun); false: rank 0
  /// hosts it on a free port.
  bool agent_store = true;
  std::map<std::string, std::string> env;
};

struct RankOutcome {
  int rank = 0;
  bool exited = false; // normally, with exit_code
  int exit_code = -1;
  bool killed_at_deadline = false;
  int signal = 0; // when it died of a signal
  std::string log; // its stdout and stderr
  bool ok() const {
    return exited && exit_code == 0;
  }
  std::string describe() const;
};

struct SpawnResult {
  std::vector<RankOutcome> ranks;
  std::chrono::milliseconds elapsed{0};
  bool all_ok() const;
  std::string describe() const;
};

SpawnResult run_ranks(const SpawnOptions& options);

/// The worker's side: its rank, world size and result directory.
struct WorkerContext {
  int rank = 0;
  int world = 1;
  std::string out_dir;
  std::string file(const std::string& name) const {
    return out_dir + "/" + name;
  }
};

/// Worker functions: return 0 on success. Registered by name.
using WorkerFn = int (*)(const WorkerContext&);
bool register_worker(const std::string& name, WorkerFn fn);
/// Runs the worker named in `arg` ("--flora-worker=<name>").
int run_worker(const std::string& name);

} // namespace flora::dist_test
