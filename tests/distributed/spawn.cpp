#include "spawn.h"

#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <thread>

extern char** environ;

namespace flora::dist_test {

namespace {

std::map<std::string, WorkerFn>& registry() {
  static std::map<std::string, WorkerFn> workers;
  return workers;
}

std::string self_path() {
  char buffer[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buffer, sizeof(buffer) - 1);
  if (n <= 0) {
    throw std::runtime_error("readlink(/proc/self/exe) failed");
  }
  return std::string(buffer, static_cast<size_t>(n));
}

// A port that was free a moment ago (for a store that rank 0 hosts).
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) {
    throw std::runtime_error("socket() failed");
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    ::close(fd);
    throw std::runtime_error("bind() to 127.0.0.1:0 failed");
  }
  const int port = ntohs(addr.sin_port);
  ::close(fd);
  return port;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

} // namespace

std::string RankOutcome::describe() const {
  std::ostringstream out;
  out << "rank " << rank << ": ";
  if (killed_at_deadline) {
    out << "killed at the deadline";
  } else if (exited) {
    out << "exit code " << exit_code;
  } else {
    out << "died of signal " << signal;
  }
  out << "\n--- its output ---\n" << log << "\n--- end ---\n";
  return out.str();
}

bool SpawnResult::all_ok() const {
  for (const auto& r : ranks) {
    if (!r.ok()) {
      return false;
    }
  }
  return !ranks.empty();
}

std::string SpawnResult::describe() const {
  std::string out = "after " + std::to_string(elapsed.count()) + " ms:\n";
  for (const auto& r : ranks) {
    out += r.describe();
  }
  return out;
}

SpawnResult run_ranks(const SpawnOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  // The store every rank connects to (torchrun's agent store), hosted here
  // on a port the kernel picks, so there is no race for a free port.
  c10::intrusive_ptr<c10d::TCPStore> store;
  int port = 0;
  if (options.agent_store) {
    c10d::TCPStoreOptions store_options;
    store_options.port = 0;
    store_options.isServer = true;
    store_options.waitWorkers = false;
    store_options.timeout = std::chrono::milliseconds(options.deadline);
    store = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", store_options);
    port = store->getPort();
  } else {
    port = free_port();
  }

  const std::string exe = self_path();
  std::vector<pid_t> pids(options.world, -1);
  SpawnResult result;
  result.ranks.resize(options.world);
  for (int rank = 0; rank < options.world; ++rank) {
    // Everything the child needs is prepared before fork(): after it, in a
    // process with threads, only async-signal-safe calls are allowed.
    std::map<std::string, std::string> env;
    for (char** e = environ; *e != nullptr; ++e) {
      const std::string entry = *e;
      const size_t eq = entry.find('=');
      if (eq != std::string::npos) {
        env[entry.substr(0, eq)] = entry.substr(eq + 1);
      }
    }
    env["RANK"] = std::to_string(rank);
    env["WORLD_SIZE"] = std::to_string(options.world);
    env["LOCAL_RANK"] = std::to_string(rank);
    env["LOCAL_WORLD_SIZE"] = std::to_string(options.world);
    env["MASTER_ADDR"] = "127.0.0.1";
    env["MASTER_PORT"] = std::to_string(port);
    env["TORCHELASTIC_USE_AGENT_STORE"] = options.agent_store ? "True" : "False";
    env["FLORA_TEST_OUT"] = options.out_dir;
    env["OMP_NUM_THREADS"] = "1"; // several ranks share the cores
    for (const auto& [k, v] : options.env) {
      env[k] = v;
    }
    std::vector<std::string> env_strings;
    for (const auto& [k, v] : env) {
      env_strings.push_back(k + "=" + v);
    }
    std::vector<char*> envp;
    for (auto& s : env_strings) {
      envp.push_back(s.data());
    }
    envp.push_back(nullptr);
    std::string arg0 = exe;
    std::string arg1 = "--flora-worker=" + options.worker;
    char* argv[] = {arg0.data(), arg1.data(), nullptr};
    const std::string log = options.out_dir + "/rank" + std::to_string(rank) + ".log";
    const pid_t parent = ::getpid();

    const pid_t pid = ::fork();
    if (pid < 0) {
      throw std::runtime_error("fork() failed");
    }
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) {
        ::_exit(125); // the parent died before prctl took effect
      }
      const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
        ::close(fd);
      }
      ::execve(exe.c_str(), argv, envp.data());
      ::_exit(126);
    }
    pids[rank] = pid;
    result.ranks[rank].rank = rank;
  }

  // Bounded wait: poll until every rank has ended or the deadline passes.
  const auto deadline = start + options.deadline;
  int running = options.world;
  while (running > 0 && std::chrono::steady_clock::now() < deadline) {
    for (int rank = 0; rank < options.world; ++rank) {
      if (pids[rank] < 0) {
        continue;
      }
      int status = 0;
      const pid_t done = ::waitpid(pids[rank], &status, WNOHANG);
      if (done == pids[rank]) {
        auto& r = result.ranks[rank];
        r.exited = WIFEXITED(status);
        r.exit_code = r.exited ? WEXITSTATUS(status) : -1;
        r.signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
        pids[rank] = -1;
        --running;
      }
    }
    if (running > 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  for (int rank = 0; rank < options.world; ++rank) {
    if (pids[rank] < 0) {
      continue;
    }
    ::kill(pids[rank], SIGKILL);
    int status = 0;
    ::waitpid(pids[rank], &status, 0); // returns promptly after SIGKILL
    result.ranks[rank].killed_at_deadline = true;
    result.ranks[rank].signal = SIGKILL;
  }
  for (int rank = 0; rank < options.world; ++rank) {
    result.ranks[rank].log = read_file(options.out_dir + "/rank" + std::to_string(rank) + ".log");
  }
  result.elapsed =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
  return result;
}

bool register_worker(const std::string& name, WorkerFn fn) {
  return registry().emplace(name, fn).second;
}

int run_worker(const std::string& name) {
  const auto it = registry().find(name);
  if (it == registry().end()) {
    std::fprintf(stderr, "no worker named '%s'\n", name.c_str());
    return 2;
  }
  WorkerContext context;
  const char* rank = std::getenv("RANK");
  const char* world = std::getenv("WORLD_SIZE");
  const char* out = std::getenv("FLORA_TEST_OUT");
  context.rank = rank ? std::atoi(rank) : 0;
  context.world = world ? std::atoi(world) : 1;
  context.out_dir = out ? out : ".";
  try {
    return it->second(context);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "worker '%s' on rank %d failed: %s\n", name.c_str(), context.rank, e.what());
    return 3;
  }
}

} // namespace flora::dist_test
