// A crash while saving leaves the previous checkpoint intact: a child
// process saves a new checkpoint with flora::save_atomic over an old one and
// dies part-way, and what is left at the path must load and be the old
// checkpoint or the new one, never a torn one. The child dies
//   - after exactly N bytes of the new file (RLIMIT_FSIZE: the write that
//     crosses the limit raises SIGXFSZ, whose default action kills it), for
//     N across the whole file: deterministic deaths inside the write;
//   - with SIGKILL from the parent at delays spread over a save's duration:
//     deaths anywhere, fsync and rename included (where they land depends on
//     the machine, so only the outcome is checked, never which one it is);
// and, with SIGXFSZ ignored, the write that crosses the limit fails with
// EFBIG, as on a full disk: save_atomic throws, the old checkpoint stays and
// no temporary file is left. Every child runs under a hard deadline.

#include "test_util.h"

#include <flora/flora.h>

#include <torch/serialize.h>

#include <chrono>
#include <csignal>
#include <sstream>
#include <thread>

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

using flora::Flora;
using flora::FloraOptions;
using flora::FloraParamState;
using flora::testing::TempDir;

// Several matrices (compressed and not), a bias, 8-bit states in the second
// group: a checkpoint of about 87 kB, written in many records.
struct Run {
  std::vector<torch::Tensor> params;
  std::unique_ptr<Flora> opt;
};

Run make_run(int steps) {
  Run r;
  r.params = {flora::testing::param({96, 256}, 1), flora::testing::param({256, 64}, 2),
              flora::testing::param({300, 40}, 3), flora::testing::param({64}, 4), flora::testing::param({128, 96}, 5)};
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<torch::Tensor>{r.params[0], r.params[1], r.params[2], r.params[3]});
  groups.emplace_back(
      std::vector<torch::Tensor>{r.params[4]},
      std::make_unique<FloraOptions>(FloraOptions(1e-2).beta1(0.9).rank(8).quantization(true).quantization_min_size(0)));
  r.opt = std::make_unique<Flora>(groups, FloraOptions(1e-2).beta1(0.9).rank(8).kappa(3));
  for (int s = 1; s <= steps; ++s) {
    for (size_t i = 0; i < r.params.size(); ++i) {
      r.params[i].mutable_grad() = flora::testing::randn_like_seeded(r.params[i], 100 * s + i);
    }
    r.opt->step();
  }
  return r;
}

std::vector<FloraParamState> states(const Run& r) {
  std::vector<FloraParamState> out;
  for (const auto& p : r.params) {
    const auto* s = flora::testing::state_of<FloraParamState>(*r.opt, p);
    out.push_back(s != nullptr ? *s : FloraParamState());
  }
  return out;
}

enum class Found { old_checkpoint, new_checkpoint, torn };

// Loads what is at `path` into a fresh optimizer over the same shapes.
Found what_is_at(const std::string& path, const std::vector<FloraParamState>& old_states,
                 const std::vector<FloraParamState>& new_states, std::string& error) {
  Run fresh = make_run(0);
  try {
    torch::load(*fresh.opt, path);
  } catch (const c10::Error& e) {
    error = e.what_without_backtrace();
    return Found::torn;
  }
  const auto loaded = states(fresh);
  if (loaded == old_states) {
    return Found::old_checkpoint;
  }
  if (loaded == new_states) {
    return Found::new_checkpoint;
  }
  error = "it loads, but is neither the old nor the new state";
  return Found::torn;
}

// How a child ends its save.
struct Death {
  rlim_t file_limit = RLIM_INFINITY; // RLIMIT_FSIZE for the child
  bool ignore_sigxfsz = false;       // then the write fails instead (EFBIG)
};

constexpr auto kDeadline = std::chrono::seconds(120); // a hung child fails the test

// Forks a child that saves `opt` at `path` and exits (0 saved, 3 save_atomic threw).
pid_t start_save(const Flora& opt, const std::string& path, const Death& death) {
  std::cout.flush();
  std::cerr.flush();
  const pid_t pid = ::fork();
  if (pid != 0) {
    return pid;
  }
  const rlimit no_core{0, 0};
  ::setrlimit(RLIMIT_CORE, &no_core);
  std::signal(SIGXFSZ, death.ignore_sigxfsz ? SIG_IGN : SIG_DFL);
  if (death.file_limit != RLIM_INFINITY) {
    const rlimit limit{death.file_limit, death.file_limit};
    ::setrlimit(RLIMIT_FSIZE, &limit);
  }
  int code = 0;
  try {
    flora::save_atomic(opt, path);
  } catch (const c10::Error&) {
    code = 3;
  }
  ::_exit(code); // no destructors, no atexit handlers of the parent's
}

// Waits for the child; past the deadline kills it and fails the test.
int wait_for(pid_t pid, std::chrono::steady_clock::time_point deadline) {
  int status = 0;
  while (true) {
    const pid_t done = ::waitpid(pid, &status, WNOHANG);
    if (done == pid) {
      return status;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      ADD_FAILURE() << "a saving child did not finish within the deadline";
      return status;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

struct Fixture {
  TempDir dir;
  std::string path = dir.file("opt.pt");
  Run old_run = make_run(2);
  Run new_run = make_run(5);
  std::vector<FloraParamState> old_states = states(old_run);
  std::vector<FloraParamState> new_states = states(new_run);
  size_t new_bytes = 0;
  int leftovers = 0;

  Fixture() {
    std::ostringstream bytes;
    torch::save(*new_run.opt, bytes);
    new_bytes = bytes.str().size();
    reset();
  }
  // The old checkpoint at the path, nothing else in the directory.
  void reset() {
    for (const auto& name : dir.entries()) {
      if (name != "opt.pt") {
        ++leftovers;
        ::unlink(dir.file(name).c_str());
      }
    }
    flora::save_atomic(*old_run.opt, path);
  }
  Found check(const std::string& what) {
    std::string error;
    const Found found = what_is_at(path, old_states, new_states, error);
    EXPECT_NE(found, Found::torn) << what << ": the checkpoint at the path is torn: " << error;
    return found;
  }
};

TEST(CrashWhileSaving, DeathAtAnyByteOfTheWriteLeavesTheOldCheckpoint) {
  Fixture f;
  ASSERT_NE(f.old_states, f.new_states);
  ASSERT_GT(f.new_bytes, size_t{50000}); // many records (about 87 kB)
  // Cut points over the whole file: the first bytes, the last, and 40 in between.
  std::vector<size_t> cuts = {0, 1, 2, 63, 64, 4095, f.new_bytes - 2, f.new_bytes - 1};
  for (size_t k = 1; k <= 40; ++k) {
    cuts.push_back(f.new_bytes * k / 41);
  }
  const auto deadline = std::chrono::steady_clock::now() + kDeadline;
  for (const size_t cut : cuts) {
    const pid_t pid = start_save(*f.new_run.opt, f.path, Death{static_cast<rlim_t>(cut), false});
    const int status = wait_for(pid, deadline);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGXFSZ)
        << "the child should have died writing byte " << cut << " of " << f.new_bytes << " (status " << status << ")";
    EXPECT_EQ(f.check("killed after " + std::to_string(cut) + " bytes"), Found::old_checkpoint) << cut;
    f.reset();
  }
  // The same save without a limit replaces the checkpoint.
  const int status = wait_for(start_save(*f.new_run.opt, f.path, Death{}), deadline);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_EQ(f.check("no limit"), Found::new_checkpoint);
  std::cout << "[ crashes  ] " << cuts.size() << " saves of a " << f.new_bytes
            << "-byte checkpoint killed mid-write (SIGXFSZ at a byte limit): the old checkpoint intact every time; "
            << f.leftovers << " temporary files left behind by the killed children" << std::endl;
}

TEST(CrashWhileSaving, AFailedWriteThrowsAndLeavesTheOldCheckpointAndNoTemporary) {
  Fixture f;
  const auto deadline = std::chrono::steady_clock::now() + kDeadline;
  for (const size_t cut : {size_t{0}, size_t{100}, f.new_bytes / 2, f.new_bytes - 1}) {
    const int status = wait_for(start_save(*f.new_run.opt, f.path, Death{static_cast<rlim_t>(cut), true}), deadline);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 3) << "save_atomic should have thrown at byte " << cut;
    EXPECT_EQ(f.check("write failed at " + std::to_string(cut)), Found::old_checkpoint);
    EXPECT_EQ(f.dir.entries(), std::vector<std::string>{"opt.pt"}) << "a temporary file was left at " << cut;
  }
}

TEST(CrashWhileSaving, SigkillAtAnyMomentLeavesTheOldOrTheNewCheckpoint) {
  Fixture f;
  const auto deadline = std::chrono::steady_clock::now() + kDeadline;
  // How long one save takes here (a child that is not killed).
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_EQ(wait_for(start_save(*f.new_run.opt, f.path, Death{}), deadline), 0);
  const auto save_time = std::chrono::steady_clock::now() - t0;
  f.reset();
  // 40 kills from the start of the save to 1.5 times its duration.
  int old_found = 0, new_found = 0;
  constexpr int kills = 40;
  for (int k = 0; k < kills; ++k) {
    const auto delay = save_time * (k + 0.5) * 1.5 / kills;
    const pid_t pid = start_save(*f.new_run.opt, f.path, Death{});
    std::this_thread::sleep_for(delay);
    ::kill(pid, SIGKILL);
    wait_for(pid, deadline);
    const Found found = f.check("SIGKILL after " + std::to_string(std::chrono::duration<double>(delay).count()) + " s");
    (found == Found::old_checkpoint ? old_found : new_found) += found == Found::torn ? 0 : 1;
    f.reset();
  }
  std::cout << "[ crashes  ] " << kills << " saves killed with SIGKILL at delays up to 1.5 x "
            << std::chrono::duration<double, std::milli>(save_time).count() << " ms: old checkpoint " << old_found
            << " times, new " << new_found << " times, torn never; " << f.leftovers << " temporary files left behind"
            << std::endl;
}

} // namespace
