// gpt2-finetune's command line: every flag refuses bad values and
// conflicting combinations with a message naming the flag and the value,
// before anything is trained. The sweep goes through the program's own
// parse_command_line() and prepare_run(); a few cases run the built
// program itself for its exit status.

#include "gpt2_test_util.h"

#include "cli.h"
#include "file_io.h"
#include "finetune.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>
#include <iostream>
#include <map>
#include <sstream>
#include <sys/wait.h>

namespace flora::gpt2 {
namespace {

using Args = std::vector<std::string>;

// The first error of the program's checks for these arguments (what main
// prints after "error: "), or "" when they pass. --out goes to a scratch
// directory unless the case is about --out.
std::string error_of(Args args) {
  static const testing::TempDir scratch;
  if (std::find(args.begin(), args.end(), "--out") == args.end()) {
    args.insert(args.begin(), {"--out", scratch.file("out")});
  }
  try {
    const auto command_line = parse_command_line(args);
    if (!command_line.help) {
      prepare_run(command_line.settings);
    }
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

struct Files {
  testing::TempDir dir;
  std::string three_tokens = dir.file("three.txt");
  std::string latin1 = dir.file("latin1.txt");
  std::string not_a_dir = dir.file("plain-file");
  std::string empty_dir = dir.file("empty");
  std::string bad_config = dir.file("bad-config");
  Files() {
    write_file_atomic(three_tokens, "a b c");
    write_file_atomic(latin1, "caf\xe9 au lait");
    write_file_atomic(not_a_dir, "x");
    make_dirs(empty_dir);
    make_dirs(bad_config);
    write_file_atomic(join_path(bad_config, "config.json"), "{\"n_embd\": 64,");
  }
};

struct Case {
  Args args;
  std::vector<std::string> needles; // each must be in the message
};

// A bad value: the message names the flag and quotes the value.
Case bad(const std::string& flag, const std::string& value, Args more = {}) {
  Args args = {flag, value};
  args.insert(args.end(), more.begin(), more.end());
  return {args, {flag + " '" + value + "'"}};
}

TEST(Gpt2Cli, EveryFlagRefusesBadValues) {
  const Files f;
  const Args custom = {"--init-config", "custom", "--n-layer", "2", "--n-embd", "32", "--n-head", "2"};
  std::vector<Case> cases;
  auto add_values = [&](const std::string& flag, const std::vector<std::string>& values, const Args& more = {}) {
    for (const auto& v : values) {
      cases.push_back(bad(flag, v, more));
    }
  };
  // Optimizers.
  add_values("--optimizer", {"sgd", "", "ADAM"});
  add_values("--compare", {"", "adam,sgd", "adam,,flora", "adam,adam", "adam,"});
  add_values("--lr", {"nan", "inf", "-1", "0", "abc", "", "1e400", "0.1x"});
  add_values("--adam-lr", {"0", "nan", "-3e-3", "x"});
  add_values("--flora-lr", {"0", "-inf", "1e999"});
  add_values("--weight-decay", {"-0.1", "nan", "abc"});
  add_values("--rank", {"-3", "1.5", "abc", "", "99999999999999999999"});
  add_values("--rank", {"-3"}, {"--optimizer", "flora"});
  add_values("--kappa", {"0", "-1", "1e3"});
  add_values("--beta1", {"1", "-0.1", "nan", "1.5"});
  add_values("--flora-seed", {"-1", "4294967296", "0x10"});
  add_values("--projection", {"sobol", ""});
  add_values("--quantization", {"4bit", ""});
  add_values("--quantization-min-size", {"-1", "1.5", "abc", ""}, {"--quantization", "8bit"});
  add_values("--projection-precision", {"fp16", "", "BF16"});
  add_values("--accumulation-rank", {"-1", "two"});
  add_values("--max-aspect-ratio", {"0.5", "0", "-inf", "nan", "abc", "", "4x", "0x10"});
  add_values("--compression-rank", {"0", "-8", "1.5", ""});
  add_values("--parameter-checksums", {"", f.not_a_dir + "/sub"});
  add_values("--checkpoint", {"", f.not_a_dir + "/sub"});
  add_values("--checkpoint-every", {"0", "-1", "x"}, {"--checkpoint", f.dir.file("ck")});
  add_values("--stop-after", {"0", "-3", "1.5"}, {"--checkpoint", f.dir.file("ck")});
  add_values("--momentum-projection", {"haar", ""});
  add_values("--stats-every", {"-1", "x", "2.5"});
  // Training.
  add_values("--steps", {"0", "-5", "abc", "1.5", "", "10abc", " 5"});
  add_values("--batch-size", {"0", "-1", "x"});
  add_values("--block-size", {"0", "-1", "100000"});
  add_values("--grad-accum", {"0", "-2"});
  add_values("--warmup-steps", {"-1", "2000"});
  add_values("--eval-every", {"-1", "x"});
  add_values("--eval-max-blocks", {"-1"});
  add_values("--log-every", {"-1"});
  add_values("--seed", {"-1", "4294967296", "abc"});
  add_values("--device", {"gpu", ""});
  if (!torch::cuda::is_available()) {
    add_values("--device", {"cuda"});
  }
  add_values("--dtype", {"float16", "bf16", ""});
  add_values("--threads", {"-1", "100000", "x"});
  // Model and tokenizer.
  add_values("--model-dir", {"/nonexistent/model", "", f.empty_dir, f.bad_config, f.not_a_dir});
  add_values("--init-config", {"gpt3", ""});
  Args custom_without_layers(custom.begin(), custom.begin() + 2);
  for (const char* flag : {"--n-layer", "--n-embd", "--n-head", "--n-positions", "--vocab-size"}) {
    Args more = custom;
    // Replace the flag's value if it is one of custom's, else append it.
    auto it = std::find(more.begin(), more.end(), flag);
    if (it != more.end()) {
      more.erase(it, it + 2);
    }
    add_values(flag, {"0", "-1", "x", ""}, more);
  }
  add_values("--vocab-size", {"100"}, custom);             // fewer rows than the tokenizer has tokens
  add_values("--n-positions", {"16"}, custom);             // shorter than --block-size 64
  add_values("--tokenizer-dir", {"/nonexistent/tok", "", f.empty_dir});
  // Data and outputs.
  add_values("--train-file", {"/nonexistent/train.txt", "", f.three_tokens, f.latin1, f.empty_dir});
  add_values("--valid-file", {"/nonexistent/valid.txt", f.three_tokens, f.latin1});
  add_values("--valid-fraction", {"0", "1", "nan", "-0.5"}, {"--valid-file", ""});
  add_values("--valid-fraction", {"0.0001"}, {"--valid-file", ""}); // too few held-out tokens for a block
  add_values("--out", {"", f.not_a_dir + "/sub"});
  add_values("--save-model", {"", f.not_a_dir + "/sub"});
  add_values("--check-input", {"/nonexistent/input.safetensors", f.three_tokens},
             {"--save-model", f.dir.file("saved"), "--check-logits"});

  // Conflicts: every flag involved is named.
  const std::vector<Case> conflicts = {
      {{"--optimizer", "adam", "--compare", "adam,flora"}, {"--optimizer 'adam'", "--compare 'adam,flora'"}},
      {{"--optimizer", "adam", "--rank", "8"}, {"--rank", "flora only", "--optimizer adam"}},
      {{"--compare", "adam,adamw", "--kappa", "8"}, {"--kappa", "flora only", "--compare adam,adamw"}},
      {{"--optimizer", "adamw", "--fused-backward"}, {"--fused-backward", "flora only"}},
      {{"--optimizer", "adam", "--quantization", "8bit"}, {"--quantization", "flora only"}},
      {{"--optimizer", "adam", "--momentum-rescale"}, {"--momentum-rescale", "flora only"}},
      {{"--optimizer", "adamw", "--stats-every", "5"}, {"--stats-every", "flora only"}},
      {{"--momentum-projection", "subspace", "--momentum-rescale"}, {"--momentum-rescale", "'subspace'"}},
      {{"--momentum-projection", "orthonormal", "--projection", "reference"},
       {"--momentum-projection 'orthonormal'", "--projection philox"}},
      {{"--optimizer", "adam", "--flora-lr", "0.1"}, {"--flora-lr", "flora only"}},
      {{"--optimizer", "flora", "--adam-lr", "0.1"}, {"--adam-lr", "adam and adamw only"}},
      {{"--lr", "0.1", "--adam-lr", "0.1"}, {"--lr '0.1'", "--adam-lr"}},
      {{"--accumulation-rank", "4"}, {"--accumulation-rank '4'", "--grad-accum"}},
      {{"--steps", "10", "--warmup-steps", "20"}, {"--warmup-steps '20'", "--steps 10"}},
      {{"--valid-fraction", "0.2"}, {"--valid-fraction '0.2'", "--valid-file"}},
      {{"--check-logits"}, {"--check-logits", "--save-model"}},
      {{"--check-input", f.three_tokens}, {"--check-input '" + f.three_tokens + "'", "--check-logits"}},
      {{"--init-config", "tiny", "--model-dir", f.empty_dir}, {"--init-config 'tiny'", "--model-dir '" + f.empty_dir}},
      {{"--n-layer", "2"}, {"--n-layer", "--init-config"}},
      {{"--init-config", "gpt2", "--n-embd", "64"}, {"--n-embd", "--init-config is 'gpt2'"}},
      {custom_without_layers, {"--init-config 'custom'", "--n-layer", "--n-embd", "--n-head"}},
      {{"--init-config", "custom", "--n-layer", "2", "--n-embd", "30", "--n-head", "4"}, {"--n-embd '30'", "--n-head 4"}},
      {{"--optimizer", "flora", "--fused-backward=2"}, {"--fused-backward '2'"}},
      {{"--activation-checkpointing=abc"}, {"--activation-checkpointing 'abc'"}},
      {{"--save-model", f.dir.file("saved"), "--check-logits=yes"}, {"--check-logits 'yes'"}},
      {{"--optimizer", "adam", "--max-aspect-ratio", "inf"}, {"--max-aspect-ratio", "flora only", "--optimizer adam"}},
      {{"--optimizer", "adamw", "--stochastic-rounding", "--dtype", "bfloat16"}, {"--stochastic-rounding", "flora only"}},
      {{"--stochastic-rounding"}, {"--stochastic-rounding", "--dtype is float32", "--dtype bfloat16"}},
      {{"--stochastic-rounding", "--dtype", "bfloat16", "--projection", "reference"},
       {"--stochastic-rounding", "--projection philox", "'reference'"}},
      {{"--stochastic-rounding=1", "--dtype", "bfloat16"}, {"--stochastic-rounding '1'"}},
      {{"--rank", "0", "--max-aspect-ratio", "inf"}, {"--max-aspect-ratio 'inf'", "--rank 0"}},
      {{"--quantization-min-size", "0"}, {"--quantization-min-size 0", "--quantization is 'none'"}},
      {{"--optimizer", "adam", "--quantization-min-size", "0"}, {"--quantization-min-size", "flora only"}},
      {{"--optimizer", "adam", "--projection-precision", "bfloat16"}, {"--projection-precision", "flora only"}},
      {{"--projection", "reference", "--projection-precision", "bfloat16"},
       {"projection_precision(bfloat16)", "philox"}},
      // Data-parallel flags: only under a launcher, and in the modes the library has.
      {{"--compression-rank", "8"}, {"--compression-rank '8'", "torchrun", "RANK/WORLD_SIZE"}},
      {{"--overlap"}, {"--overlap", "torchrun"}},
      {{"--overlap=yes"}, {"--overlap 'yes'"}},
      {{"--optimizer", "flora", "--overlap", "--fused-backward"}, {"--overlap", "--fused-backward"}},
      {{"--overlap", "--grad-accum", "2", "--accumulation-rank", "4"}, {"--overlap", "--accumulation-rank '4'"}},
      {{"--compression-rank", "8", "--grad-accum", "2", "--accumulation-rank", "4"},
       {"--compression-rank '8'", "--accumulation-rank '4'"}},
      {{"--optimizer", "flora", "--compression-rank", "8", "--fused-backward", "--grad-accum", "2"},
       {"--compression-rank '8'", "--fused-backward", "--grad-accum 2", "--accumulation-rank"}},
      {{"--checkpoint-every", "10"}, {"--checkpoint-every '10'", "--checkpoint"}},
      {{"--resume"}, {"--resume", "--checkpoint"}},
      {{"--stop-after", "10"}, {"--stop-after '10'", "--checkpoint"}},
      {{"--checkpoint", f.dir.file("ck"), "--steps", "10", "--stop-after", "11"}, {"--stop-after '11'", "--steps 10"}},
      {{"--checkpoint", f.empty_dir, "--resume", "--compare", "adam,flora"},
       {"--resume", "adam run", "--checkpoint '" + f.empty_dir + "'", "no such file"}},
      {{"--optimizer", "flora", "--checkpoint", f.dir.file("ck"), "--fused-backward", "--grad-accum", "2",
        "--accumulation-rank", "4"},
       {"--checkpoint", "--fused-backward", "--accumulation-rank 4"}},
      {{"--steps", "5", "--steps", "6"}, {"--steps"}},
      {{"--steps"}, {"--steps"}},
      {{"--no-such-flag", "1"}, {"--no-such-flag"}},
  };
  cases.insert(cases.end(), conflicts.begin(), conflicts.end());

  for (const auto& c : cases) {
    std::string line;
    for (const auto& a : c.args) {
      line += " '" + a + "'";
    }
    const auto message = error_of(c.args);
    EXPECT_FALSE(message.empty()) << "accepted:" << line;
    for (const auto& needle : c.needles) {
      EXPECT_NE(message.find(needle), std::string::npos) << "args:" << line << "\n  message: " << message
                                                          << "\n  expected it to name: " << needle;
    }
  }
  EXPECT_GE(cases.size(), 197u); // none dropped by accident
}

// The same sweep by kind, for every flag the program's --help lists (a flag
// added later is swept without editing this test): each kind of value a
// new user gets wrong (empty, not a number, out of range, a switch given a
// value) and a flag given twice with different values must be refused with
// a message naming the flag (and, for a bad value, quoting it).
TEST(Gpt2Cli, EveryFlagInTheHelpRefusesEmptyNonNumericOutOfRangeAndRepeatedValues) {
  const auto help = parse_command_line({"--help"}).help_text;
  // Lines "  --name TYPE ..." (a valued flag) or "  --name ..." (a switch).
  std::map<std::string, std::string> kinds; // flag -> type name ("" for a switch)
  std::istringstream lines(help);
  std::string line;
  while (std::getline(lines, line)) {
    const auto start = line.find_first_not_of(' ');
    if (start == std::string::npos || line.compare(start, 2, "--") != 0) {
      continue;
    }
    std::istringstream words(line.substr(start));
    std::string name, type;
    words >> name >> type;
    type = type.substr(0, type.find('=')); // "INT=0": the type, then the default
    const bool valued = !type.empty() && type[0] >= 'A' && type[0] <= 'Z';
    kinds[name] = valued ? type : "";
  }
  ASSERT_GE(kinds.size(), 50u) << help; // the help lists every flag
  const std::map<std::string, std::vector<std::string>> bad_by_kind = {
      {"INT", {"", "x", "1.5", "1e3", "0x10", "7x", "99999999999999999999", "-99999999999999999999"}},
      {"X", {"", "x", "nan", "inf", "-inf", "1e999", "0.5x"}},
      {"X|inf", {"", "x", "nan", "-inf", "0", "0.5"}},
      {"NAME", {"", "x"}},
      {"LIST", {"", "x"}},
      {"PATH", {""}},
  };
  // A second value of each kind, valid on its own (for the repeated flag).
  const std::map<std::string, std::pair<std::string, std::string>> good_by_kind = {
      {"INT", {"1", "2"}}, {"X", {"0.5", "0.25"}}, {"X|inf", {"2", "inf"}}, {"PATH", {"a", "b"}}};
  int tried = 0, switches = 0;
  for (const auto& [flag, kind] : kinds) {
    if (flag == "--help") {
      continue;
    }
    if (kind.empty()) { // a switch: takes no value
      const auto message = error_of({flag + "=x"});
      EXPECT_NE(message.find(flag + " 'x'"), std::string::npos) << flag << "=x: " << message;
      ++tried;
      ++switches;
      continue;
    }
    const auto values = bad_by_kind.find(kind);
    ASSERT_NE(values, bad_by_kind.end()) << flag << " has a type this test does not know: " << kind;
    for (const auto& v : values->second) {
      if (v.empty() && flag == "--valid-file") {
        continue; // documented: "" means --valid-fraction of the training text
      }
      const auto message = error_of({flag, v});
      EXPECT_NE(message.find(flag + " '" + v + "'"), std::string::npos)
          << flag << " '" << v << "' (" << kind << ")\n  message: " << message;
      ++tried;
    }
    // Given twice (a list flag, --train-file, takes several values instead).
    const auto good = good_by_kind.find(kind);
    if (good != good_by_kind.end() && flag != "--train-file") {
      const auto message = error_of({flag, good->second.first, flag, good->second.second});
      EXPECT_NE(message.find(flag), std::string::npos) << flag << " given twice\n  message: " << message;
      ++tried;
    }
  }
  EXPECT_GE(switches, 6); // --fused-backward, --stochastic-rounding, --overlap, --activation-checkpointing, --resume, --check-logits
  EXPECT_GE(tried, 250);
  std::cout << "[ flags    ] " << kinds.size() - 1 << " flags from --help, " << tried
            << " bad command lines, every one refused naming its flag" << std::endl;
}

// The sweep's cases are bad because of their bad value, not because
// anything fails: the same flags with good values pass every check.
TEST(Gpt2Cli, GoodValuesPassEveryCheck) {
  const testing::TempDir dir;
  EXPECT_EQ(error_of({}), "");
  EXPECT_EQ(error_of({"--optimizer", "flora", "--rank", "0", "--kappa", "1", "--beta1", "0", "--flora-seed",
                      "4294967295", "--projection", "reference", "--quantization", "8bit", "--fused-backward",
                      "--grad-accum", "2", "--accumulation-rank", "4", "--steps", "10", "--warmup-steps", "10",
                      "--lr", "0.1", "--weight-decay", "0.01", "--dtype", "bfloat16", "--device", "cpu",
                      "--threads", "2", "--seed", "7", "--eval-every", "0", "--log-every", "0", "--block-size",
                      "64", "--batch-size", "1"}),
            "");
  EXPECT_EQ(error_of({"--compare", "adamw,adam,flora", "--adam-lr", "1e-3", "--flora-lr", "0.05"}), "");
  EXPECT_EQ(error_of({"--optimizer", "flora", "--momentum-projection", "orthonormal", "--momentum-rescale",
                      "--stats-every", "5"}),
            "");
  EXPECT_EQ(error_of({"--valid-file", "", "--valid-fraction", "0.2", "--save-model", dir.file("a/b"),
                      "--check-logits", "--init-config", "tiny"}),
            "");
  EXPECT_EQ(error_of({"--init-config", "custom", "--n-layer", "2", "--n-embd", "32", "--n-head", "2",
                      "--n-positions", "128", "--vocab-size", "600"}),
            "");
  EXPECT_EQ(error_of({"--init-config", "gpt2", "--tokenizer-dir", testing::tiny_model_dir()}), "");
  EXPECT_EQ(error_of({"--max-aspect-ratio", "inf", "--stochastic-rounding", "--dtype", "bfloat16",
                      "--parameter-checksums", dir.file("sums")}),
            "");
  EXPECT_EQ(error_of({"--max-aspect-ratio", "1"}), "");
  EXPECT_EQ(error_of({"--checkpoint", dir.file("ck"), "--checkpoint-every", "100", "--stop-after", "500"}), "");
  EXPECT_EQ(error_of({"--max-aspect-ratio", "12.5", "--optimizer", "flora"}), "");

  // What the flags set.
  const auto s = parse_command_line({"--compare", "adamw,flora", "--steps", "30", "--rank", "0"}).settings;
  EXPECT_EQ(s.optimizers, (std::vector<std::string>{"adamw", "flora"}));
  EXPECT_EQ(s.train.steps, 30);
  EXPECT_EQ(s.train.warmup_steps, 30); // the default 50, at most --steps
  const auto plan = prepare_run(s);
  ASSERT_EQ(plan.specs.size(), 2u);
  EXPECT_FALSE(plan.specs[1].rank.has_value()); // --rank 0: no compression
  EXPECT_EQ(plan.specs[0].lr, 3e-3);
  EXPECT_EQ(plan.specs[1].lr, 0.08);
  // Flora's new options reach its spec and its label.
  const auto memory = prepare_run(parse_command_line({"--optimizer", "flora", "--max-aspect-ratio", "inf",
                                                      "--stochastic-rounding", "--dtype", "bfloat16"})
                                      .settings);
  ASSERT_EQ(memory.specs.size(), 1u);
  EXPECT_TRUE(std::isinf(memory.specs[0].max_aspect_ratio));
  EXPECT_TRUE(memory.specs[0].stochastic_rounding);
  EXPECT_TRUE(std::isinf(flora_options(memory.specs[0]).max_aspect_ratio()));
  EXPECT_TRUE(flora_options(memory.specs[0]).stochastic_rounding());
  EXPECT_EQ(memory.specs[0].label(), "flora(lr=0.08,rank=32,kappa=1000,b1=0.9,aspect=inf,sr)");
  EXPECT_FALSE(memory.launch.has_value()); // no launcher's variables here
  EXPECT_EQ(parse_command_line({"--max-aspect-ratio", "6"}).settings.max_aspect_ratio, 6.0);
  const auto defaults = parse_command_line({}).settings;
  EXPECT_EQ(defaults.max_aspect_ratio, 4.0);
  EXPECT_FALSE(defaults.stochastic_rounding);
  EXPECT_FALSE(defaults.compression_rank.has_value());
  EXPECT_EQ(defaults.optimizers, (std::vector<std::string>{"adam", "flora"}));
  EXPECT_EQ(defaults.train.steps, 1000);
  EXPECT_EQ(defaults.train.warmup_steps, 50);
  EXPECT_TRUE(parse_command_line({"--help"}).help);
}

#ifdef FLORA_GPT2_FINETUNE
// The program itself: status 1 and one "error: --flag 'value': ..." line.
struct Outcome {
  int status;
  std::string output;
};

Outcome run_program(const Args& args) {
  std::string command = FLORA_GPT2_FINETUNE;
  for (const auto& a : args) {
    std::string quoted = "'";
    for (const char c : a) {
      quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
    }
    command += " " + quoted + "'";
  }
  command += " 2>&1";
  Outcome outcome{-1, ""};
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) {
    return outcome;
  }
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) {
    outcome.output.append(buffer, n);
  }
  const int status = ::pclose(pipe);
  outcome.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return outcome;
}

TEST(Gpt2Cli, TheProgramExitsWithStatus1AndNamesTheFlag) {
  const Files f;
  // One error of the parsing, one of the checks against the files (each
  // run loads LibTorch: the sweep above covers the messages).
  const std::vector<std::pair<Args, std::string>> cases = {
      {{"--optimizer", "flora", "--rank", "-3"}, "error: --rank '-3'"},
      {{"--train-file", f.three_tokens}, "error: --train-file '" + f.three_tokens + "'"},
  };
  for (const auto& [args, want] : cases) {
    const auto outcome = run_program(args);
    EXPECT_EQ(outcome.status, 1) << want;
    EXPECT_EQ(outcome.output.rfind(want, 0), 0u) << outcome.output;
  }
}
#endif

} // namespace
} // namespace flora::gpt2
