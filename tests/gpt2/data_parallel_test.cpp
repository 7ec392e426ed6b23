// Data-parallel training of the example: the batch shards, and the program
// itself run as 2 ranks over loopback (Gloo), started by the launcher helper
// of tests/distributed with the variables torchrun gives (RANK, WORLD_SIZE,
// LOCAL_RANK, MASTER_ADDR, MASTER_PORT, agent store) and a hard deadline.
// Each rank runs exactly what main() runs (run_program), with the flags of
// the test case.

#include "gpt2_test_util.h"

#include "data.h"
#include "file_io.h"
#include "finetune.h"
#include "model.h"
#include "pretrained.h"
#include "safetensors.h"

#include <flora/version.h>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>

#if FLORA_WITH_DISTRIBUTED
#include "../distributed/spawn.h"

#include <flora/distributed.h>
#endif

namespace flora::gpt2 {
namespace {

using Args = std::vector<std::string>;

// W shards of one seeded sampler read, together and in turn, exactly the
// batches that the unsharded sampler reads, across epochs.
TEST(Gpt2DataParallel, ShardsSplitOneSequenceOfBatches) {
  const auto tokens = torch::arange(700, torch::kLong);
  for (const int64_t world : {2, 3}) {
    BatchSampler whole(tokens, 16, 4, 11);
    std::vector<BatchSampler> shards;
    for (int64_t k = 0; k < world; ++k) {
      shards.emplace_back(tokens, 16, 4, 11, k, world);
    }
    // 700 tokens give 10 batches per epoch: 30 rounds cross several epochs,
    // and with 3 shards rounds straddle epoch ends.
    for (int round = 0; round < 30; ++round) {
      for (int64_t k = 0; k < world; ++k) {
        const auto [x, y] = shards[k].next();
        const auto [wx, wy] = whole.next();
        ASSERT_TRUE(torch::equal(x, wx)) << "world " << world << " round " << round << " shard " << k;
        ASSERT_TRUE(torch::equal(y, wy));
      }
    }
    EXPECT_GE(whole.epoch(), 5);
  }
  testing::expect_error([&] { BatchSampler(tokens, 16, 4, 0, 2, 2); }, "shard must be in [0, shards)");
}

#if FLORA_WITH_DISTRIBUTED

// Sets environment variables for a scope, restoring the old values.
class ScopedEnv {
 public:
  void set(const std::string& name, const std::string& value) {
    remember(name);
    ::setenv(name.c_str(), value.c_str(), 1);
  }
  void unset(const std::string& name) {
    remember(name);
    ::unsetenv(name.c_str());
  }
  ~ScopedEnv() {
    for (const auto& [name, old] : saved_) {
      if (old) {
        ::setenv(name.c_str(), old->c_str(), 1);
      } else {
        ::unsetenv(name.c_str());
      }
    }
  }

 private:
  void remember(const std::string& name) {
    if (saved_.count(name) == 0) {
      const char* v = std::getenv(name.c_str());
      saved_[name] = v ? std::optional<std::string>(v) : std::nullopt;
    }
  }
  std::map<std::string, std::optional<std::string>> saved_;
};

// A launch with a missing or malformed variable is refused before anything
// else happens, naming the variable; a complete one is accepted (joining
// the job comes later, in run_all).
TEST(Gpt2DataParallel, TheLaunchersVariablesAreChecked) {
  const testing::TempDir dir;
  const Args args = {"--out", dir.file("out"), "--compression-rank", "8"};
  auto error = [&] {
    try {
      prepare_run(parse_command_line(args).settings);
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  ScopedEnv env;
  env.set("RANK", "1");
  env.set("WORLD_SIZE", "two");
  EXPECT_NE(error().find("WORLD_SIZE"), std::string::npos) << error();
  env.set("WORLD_SIZE", "2");
  env.set("LOCAL_RANK", "1");
  env.set("MASTER_PORT", "29500");
  env.unset("MASTER_ADDR");
  EXPECT_NE(error().find("MASTER_ADDR"), std::string::npos) << error();
  env.set("MASTER_ADDR", "127.0.0.1");
  EXPECT_EQ(error(), "");
  const auto plan = prepare_run(parse_command_line(args).settings);
  ASSERT_TRUE(plan.launch.has_value());
  EXPECT_EQ(plan.launch->rank, 1);
  EXPECT_EQ(plan.launch->world_size, 2);
  EXPECT_EQ(plan.specs[1].compression_rank, 8);
}

// One rank: the program, with the arguments the test put in FLORA_GPT2_ARGS
// (one per line).
int gpt2_rank(const dist_test::WorkerContext&) {
  const char* text = std::getenv("FLORA_GPT2_ARGS");
  Args args;
  std::stringstream in(text ? text : "");
  for (std::string line; std::getline(in, line);) {
    args.push_back(line);
  }
  return run_program(args);
}
const bool kRegistered = dist_test::register_worker("gpt2", &gpt2_rank);

std::string joined(const Args& args) {
  std::string text;
  for (const auto& a : args) {
    text += a + "\n";
  }
  return text;
}

// A short run of the shipped tiny model: small enough for a test, long
// enough (4 steps, a warm-up of 1) for the ranks' updates to matter. The
// report goes to <dir>/out, the checksums to <dir>/sums.
Args short_run(const std::string& dir, const std::string& steps = "4") {
  return {"--steps", steps, "--warmup-steps", "1", "--batch-size", "4", "--block-size", "32", "--eval-every", "0",
          "--eval-max-blocks", "2", "--log-every", "0", "--rank", "8", "--out", dir + "/out",
          "--parameter-checksums", dir + "/sums"};
}

dist_test::SpawnResult run_two_ranks(const std::string& dir, const Args& args) {
  dist_test::SpawnOptions options;
  options.world = 2;
  options.worker = "gpt2";
  options.out_dir = dir;
  // Far above the few seconds a run takes on a loaded 2-core machine; a
  // hang (a rank waiting for ever on a collective) fails here instead.
  options.deadline = std::chrono::seconds(45);
  options.env["FLORA_GPT2_ARGS"] = joined(args);
  return dist_test::run_ranks(options);
}

// summary.csv's rows as column name -> value (labels hold commas: quoted).
std::vector<std::map<std::string, std::string>> read_summary(const std::string& path) {
  auto split = [](const std::string& line) {
    std::vector<std::string> fields(1);
    bool quoted = false;
    for (size_t i = 0; i < line.size(); ++i) {
      const char c = line[i];
      if (quoted && c == '"' && i + 1 < line.size() && line[i + 1] == '"') {
        fields.back() += '"';
        ++i;
      } else if (c == '"') {
        quoted = !quoted;
      } else if (c == ',' && !quoted) {
        fields.emplace_back();
      } else {
        fields.back() += c;
      }
    }
    return fields;
  };
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  const auto header = split(line);
  std::vector<std::map<std::string, std::string>> rows;
  while (std::getline(in, line)) {
    const auto fields = split(line);
    std::map<std::string, std::string> row;
    for (size_t i = 0; i < header.size() && i < fields.size(); ++i) {
      row[header[i]] = fields[i];
    }
    rows.push_back(row);
  }
  return rows;
}

std::vector<std::vector<int64_t>> tiny_shapes() {
  const auto model = load_pretrained(testing::tiny_model_dir());
  std::vector<std::vector<int64_t>> shapes;
  for (const auto& p : model->parameters()) {
    shapes.push_back(p.sizes().vec());
  }
  return shapes;
}

struct Case {
  std::string name;
  Args flags;
  std::vector<std::string> optimizers;
  // Mode 1 (a synchroniser over the gradients): the bytes of one exchange
  // from shapes alone, which each step must hand over exactly once.
  std::optional<flora::distributed::SynchronizerOptions> plan;
};

// The replicas end identical (every rank's checksum file equal, and the
// program's own check passing) with plain and compressed exchange, with
// overlap and gradient accumulation, with compressed accumulation and with
// the fused backward; only rank 0 prints the report; the table's bytes per
// step are one exchange per step.
TEST(Gpt2DataParallel, TwoRanksEndWithIdenticalParameters) {
  namespace fd = flora::distributed;
  const std::vector<Case> cases = {
      {"plain", {"--compare", "adam,flora"}, {"adam", "flora"}, fd::SynchronizerOptions()},
      {"compressed", {"--optimizer", "flora", "--compression-rank", "8"}, {"flora"},
       fd::SynchronizerOptions().compression_rank(8)},
      {"overlap_accumulating",
       {"--optimizer", "flora", "--compression-rank", "8", "--overlap", "--grad-accum", "2"}, {"flora"},
       fd::SynchronizerOptions().compression_rank(8)},
      {"compressed_accumulator", {"--optimizer", "flora", "--grad-accum", "2", "--accumulation-rank", "8"},
       {"flora"}, std::nullopt},
      {"fused_compressed_unlimited_aspect",
       {"--optimizer", "flora", "--fused-backward", "--compression-rank", "8", "--max-aspect-ratio", "inf"},
       {"flora"}, std::nullopt},
  };
  const auto shapes = tiny_shapes();
  const int64_t plain_bytes = fd::bytes_per_exchange(shapes, torch::kFloat, fd::SynchronizerOptions());
  std::map<std::string, std::string> flora_checksum; // case -> rank 0's
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const testing::TempDir dir;
    Args args = short_run(dir.path());
    args.insert(args.end(), c.flags.begin(), c.flags.end());
    const auto result = run_two_ranks(dir.path(), args);
    ASSERT_TRUE(result.all_ok()) << result.describe();

    for (const auto& name : c.optimizers) {
      const auto rank0 = read_file(dir.file("sums/" + name + ".rank0.txt"));
      const auto rank1 = read_file(dir.file("sums/" + name + ".rank1.txt"));
      ASSERT_EQ(rank0.rfind("all ", 0), 0u) << rank0;
      EXPECT_EQ(rank0, rank1) << name << ": the ranks' parameters differ";
      if (name == "flora") {
        flora_checksum[c.name] = rank0;
      }
    }
    // Rank 0 reports, with the exchange's column; rank 1 is silent.
    const auto& log0 = result.ranks[0].log;
    const auto& log1 = result.ranks[1].log;
    EXPECT_NE(log0.find("data parallel: 2 ranks (gloo)"), std::string::npos) << log0;
    EXPECT_NE(log0.find("comm/step"), std::string::npos) << log0;
    EXPECT_EQ(log1.find("comm/step"), std::string::npos) << log1;
    EXPECT_EQ(log1.find("model "), std::string::npos) << log1;

    const auto rows = read_summary(dir.file("out/summary.csv"));
    ASSERT_EQ(rows.size(), c.optimizers.size());
    for (const auto& row : rows) {
      EXPECT_EQ(row.at("world_size"), "2");
      EXPECT_EQ(row.at("failure"), "");
      EXPECT_EQ(row.at("steps"), "4");
      const double bytes = std::stod(row.at("bytes_per_step"));
      if (c.plan) {
        auto plan = *c.plan;
        if (row.at("optimizer") == "flora" && c.name == "fused_compressed_unlimited_aspect") {
          plan.max_aspect_ratio(std::numeric_limits<double>::infinity());
        }
        EXPECT_EQ(bytes, static_cast<double>(fd::bytes_per_exchange(shapes, torch::kFloat, plan)));
      } else {
        EXPECT_GT(bytes, 0);
        EXPECT_LT(bytes, 0.5 * static_cast<double>(plain_bytes)); // everything 2-d goes as a rank-8 sketch
      }
    }
  }
  // The exchanges differ, so do the trained parameters.
  EXPECT_NE(flora_checksum["plain"], flora_checksum["compressed"]);
  EXPECT_NE(flora_checksum["compressed"], flora_checksum["fused_compressed_unlimited_aspect"]);
}

// A data-parallel run with compressed exchange, stopped and resumed (every
// rank loads the checkpoint rank 0 wrote: model, optimizer, the exchange's
// seeds), ends where the run that never stopped ends, bit for bit.
TEST(Gpt2DataParallel, AResumedRunContinuesBitForBit) {
  const testing::TempDir straight, stopped;
  Args args = short_run(straight.path(), "6");
  args.insert(args.end(), {"--optimizer", "flora", "--compression-rank", "8"});
  auto result = run_two_ranks(straight.path(), args);
  ASSERT_TRUE(result.all_ok()) << result.describe();

  Args first = short_run(stopped.path(), "6");
  first.insert(first.end(), {"--optimizer", "flora", "--compression-rank", "8", "--checkpoint", stopped.file("ck")});
  Args resumed = first;
  first.insert(first.end(), {"--stop-after", "3"});
  result = run_two_ranks(stopped.path(), first);
  ASSERT_TRUE(result.all_ok()) << result.describe();
  resumed.push_back("--resume");
  result = run_two_ranks(stopped.path(), resumed);
  ASSERT_TRUE(result.all_ok()) << result.describe();
  EXPECT_NE(result.ranks[0].log.find("resumed after step 3"), std::string::npos) << result.ranks[0].log;

  const auto want = read_file(straight.file("sums/flora.rank0.txt"));
  EXPECT_EQ(read_file(stopped.file("sums/flora.rank0.txt")), want);
  EXPECT_EQ(read_file(stopped.file("sums/flora.rank1.txt")), want);
}

// Two ranks with a batch each train the model that one process trains
// accumulating those two batches (the mean gradient is the same, summed in
// another order): the saved parameters agree to float32 rounding.
TEST(Gpt2DataParallel, TwoRanksTrainWhatOneProcessTrainsOnBothShards) {
  const testing::TempDir ranks, one;
  Args args = short_run(ranks.path());
  args.insert(args.end(), {"--optimizer", "flora", "--save-model", ranks.file("model")});
  const auto result = run_two_ranks(ranks.path(), args);
  ASSERT_TRUE(result.all_ok()) << result.describe();

  args = short_run(one.path());
  args.insert(args.end(), {"--optimizer", "flora", "--save-model", one.file("model"), "--grad-accum", "2"});
  ASSERT_EQ(run_program(args), 0);

  const auto a = load_pretrained(ranks.file("model"))->named_parameters();
  const auto b = load_pretrained(one.file("model"))->named_parameters();
  const auto initial = load_pretrained(testing::tiny_model_dir())->named_parameters();
  ASSERT_EQ(a.size(), b.size());
  for (const auto& item : a) {
    EXPECT_LT((item.value() - b[item.key()]).abs().max().item<double>(), 1e-5) << item.key();
  }
  // ... while training moved them by far more than that.
  const auto& wte = a["transformer.wte.weight"];
  EXPECT_GT((wte - initial["transformer.wte.weight"]).abs().max().item<double>(), 1e-3);
}

#endif

} // namespace
} // namespace flora::gpt2
