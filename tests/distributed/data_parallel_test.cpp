// Multi-process data-parallel training over loopback with Gloo: 2 and 3
// ranks started by this binary (spawn.h), compared with one process doing
// the same work (training.h) and with each other.

#include "spawn.h"
#include "test_util.h"
#include "training.h"

#include <fstream>
#include <sstream>

namespace flora::dist_test {
namespace {

using flora::testing::relative_error;
using flora::testing::TempDir;

std::vector<torch::Tensor> load_params(const std::string& path) {
  std::vector<torch::Tensor> params;
  torch::load(params, path);
  return params;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

RunStats read_stats(const std::string& path) {
  RunStats stats;
  std::ifstream in(path);
  in >> stats.bytes_per_exchange >> stats.bytes_exchanged >> stats.collectives;
  return stats;
}

bool bitwise_equal(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  if (a.size() != b.size()) {
    return false;
  }
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].sizes() != b[i].sizes() || !torch::equal(a[i], b[i])) {
      return false;
    }
  }
  return true;
}

// fp32 results of the same sums in another order (ranks vs one process,
// buckets vs separate tensors) after kSteps Flora steps.
constexpr double kTolerance = 1e-5;

// Bytes one exchange hands to the process group, by hand: every exchanged
// tensor plus one presence flag per parameter, float32.
constexpr int64_t kPlainBytes = (24 * 16 + 24 + 12 * 24 + 12 + 60 * 12 + 5) * 4;
constexpr int64_t kCompressedBytes = (24 * kRank + 24 + kRank * 24 + 12 + 60 * 12 + 5) * 4;
// The accumulator compresses every matrix at rank 4, emb too: (60, 4).
constexpr int64_t kAccumulatorBytes = (24 * kRank + 24 + kRank * 24 + 12 + 60 * kRank + 5) * 4;

int64_t expected_bytes(Scenario s) {
  switch (s) {
    case Scenario::plain:
    case Scenario::plain_sum:
    case Scenario::plain_overlap:
      return kPlainBytes;
    case Scenario::compressed:
    case Scenario::compressed_overlap:
      return kCompressedBytes;
    case Scenario::accumulator:
      return kAccumulatorBytes;
    case Scenario::fused_plain: // one all-reduce per parameter: no flags
      return kPlainBytes - 5 * 4;
    case Scenario::fused_compressed:
      return kCompressedBytes - 5 * 4;
    case Scenario::fused_accumulator:
      return kAccumulatorBytes - 5 * 4;
  }
  return -1;
}

void check_training(int world, bool agent_store) {
  TempDir dir;
  SpawnOptions options;
  options.world = world;
  options.worker = "train";
  options.out_dir = dir.path();
  options.agent_store = agent_store;
  const auto result = run_ranks(options);
  ASSERT_TRUE(result.all_ok()) << result.describe();
  for (const Scenario scenario : all_scenarios()) {
    SCOPED_TRACE(name(scenario) + " with " + std::to_string(world) + " ranks");
    std::vector<torch::Tensor> reference_gradients;
    const auto reference = run_reference(scenario, world, &reference_gradients);
    const auto rank0 = load_params(dir.file(name(scenario) + ".rank0.pt"));
    if (!fused(scenario)) {
      // The reduced gradients themselves: Flora's update is invariant to
      // their scale, so the parameters alone would not show a wrong mean.
      const auto grads = load_params(dir.file(name(scenario) + ".rank0.grads.pt"));
      ASSERT_EQ(grads.size(), reference_gradients.size());
      for (size_t i = 0; i < grads.size(); ++i) {
        EXPECT_LT(relative_error(grads[i], reference_gradients[i]), kTolerance) << "gradient " << i;
        EXPECT_LT((grads[i].norm() / reference_gradients[i].norm() - 1).abs().item<double>(), kTolerance)
            << "gradient " << i << ": the scale";
      }
    }
    ASSERT_EQ(rank0.size(), reference.size());
    for (size_t i = 0; i < reference.size(); ++i) {
      EXPECT_LT(relative_error(rank0[i], reference[i]), kTolerance) << "parameter " << i;
    }
    // The start values differ per rank; training moved every parameter.
    EXPECT_GT(relative_error(make_model(100).params()[0], rank0[0]), 1e-4);
    for (int r = 1; r < world; ++r) {
      const auto other = load_params(dir.file(name(scenario) + ".rank" + std::to_string(r) + ".pt"));
      EXPECT_TRUE(bitwise_equal(other, rank0)) << "rank " << r << " differs from rank 0";
    }
    const auto stats = read_stats(dir.file(name(scenario) + ".rank0.stats"));
    EXPECT_EQ(stats.bytes_per_exchange, expected_bytes(scenario));
    const int64_t steps = kSteps;
    EXPECT_EQ(stats.bytes_exchanged, steps * expected_bytes(scenario)) << "what was handed to the process group";
  }
}

TEST(DataParallel, TwoRanksTrainLikeOneProcessAndAgreeBitwise) {
  check_training(2, /*agent_store=*/true);
}

TEST(DataParallel, ThreeRanksTrainLikeOneProcessAndAgreeBitwise) {
  check_training(3, /*agent_store=*/false); // rank 0 hosts the store
}

TEST(DataParallel, CheckpointRestartContinuesBitForBit) {
  TempDir dir;
  SpawnOptions options;
  options.world = 2;
  options.out_dir = dir.path();
  options.worker = "checkpoint_first";
  const auto first = run_ranks(options);
  ASSERT_TRUE(first.all_ok()) << first.describe();
  options.worker = "checkpoint_resume"; // new processes, from the file
  const auto second = run_ranks(options);
  ASSERT_TRUE(second.all_ok()) << second.describe();
  for (int r = 0; r < 2; ++r) {
    const auto uninterrupted = load_params(dir.file("uninterrupted.rank" + std::to_string(r) + ".pt"));
    const auto resumed = load_params(dir.file("resumed.rank" + std::to_string(r) + ".pt"));
    EXPECT_TRUE(bitwise_equal(resumed, uninterrupted)) << "rank " << r;
  }
}

TEST(DataParallel, MismatchedSetUpsFailOnEveryRankNamingTheDifference) {
  TempDir dir;
  SpawnOptions options;
  options.world = 2;
  options.worker = "mismatch";
  options.out_dir = dir.path();
  const auto result = run_ranks(options);
  ASSERT_TRUE(result.all_ok()) << result.describe();
  const std::vector<std::pair<std::string, std::string>> expected = {
      {"shape", "disagree on parameter 0 shape: rank 0 has [24, 16], rank 1 has [24, 17]"},
      {"dtype", "disagree on parameter 1 dtype: rank 0 has Float, rank 1 has Double"},
      {"option", "disagree on compression_rank: rank 0 has 4, rank 1 has 8"},
      {"seed", "disagree on seed: rank 0 has 0, rank 1 has 5"},
      {"accumulator_seed", "disagree on parameter 0 seed: rank 0 has 7, rank 1 has 8"},
      {"count", "disagree on parameters: rank 0 has 5, rank 1 has 4"},
  };
  for (const auto& [which, needle] : expected) {
    const std::string m0 = read_text(dir.file("mismatch." + which + ".rank0.txt"));
    const std::string m1 = read_text(dir.file("mismatch." + which + ".rank1.txt"));
    EXPECT_NE(m0.find(needle), std::string::npos) << which << ": rank 0 got: " << m0;
    EXPECT_EQ(m0, m1) << which << ": every rank reports the same difference";
  }
  EXPECT_EQ(read_text(dir.file("mismatch.afterwards.rank0.txt")), "no error");
  EXPECT_EQ(read_text(dir.file("mismatch.afterwards.rank1.txt")), "no error");
}

TEST(DataParallel, ARankThatExitsMidStepMakesTheOthersThrow) {
  TempDir dir;
  SpawnOptions options;
  options.world = 2;
  options.worker = "rank_exits";
  options.out_dir = dir.path();
  options.deadline = std::chrono::seconds(60);
  const auto result = run_ranks(options);
  ASSERT_TRUE(result.all_ok()) << result.describe();
  std::istringstream report(read_text(dir.file("exit.rank0.txt")));
  int64_t ms = -1;
  report >> ms;
  std::string message((std::istreambuf_iterator<char>(report)), std::istreambuf_iterator<char>());
  EXPECT_NE(message.find("flora::distributed: the all-reduce of bucket"), std::string::npos) << message;
  EXPECT_NE(message.find("failed on rank 0"), std::string::npos) << message;
  EXPECT_NE(message.find("Another rank has probably exited"), std::string::npos) << message;
  // Within the process group's timeout (5 s), with room for a loaded machine.
  EXPECT_LT(ms, 5000 + 10000) << message;
}

TEST(DataParallel, AStalledRankMakesTheOthersThrowAfterTheTimeout) {
  TempDir dir;
  SpawnOptions options;
  options.world = 2;
  options.worker = "rank_stalls";
  options.out_dir = dir.path();
  options.deadline = std::chrono::seconds(60);
  const auto result = run_ranks(options);
  ASSERT_TRUE(result.all_ok()) << result.describe();
  std::istringstream report(read_text(dir.file("stall.rank0.txt")));
  int64_t ms = -1;
  report >> ms;
  std::string message((std::istreambuf_iterator<char>(report)), std::istreambuf_iterator<char>());
  EXPECT_NE(message.find("flora::distributed: the all-reduce of bucket"), std::string::npos) << message;
  EXPECT_NE(message.find("failed on rank 0"), std::string::npos) << message;
  // It waited for the 2 s timeout, not for ever (rank 1 stalls until this
  // report exists).
  EXPECT_GE(ms, 1000) << message;
}

} // namespace
} // namespace flora::dist_test
