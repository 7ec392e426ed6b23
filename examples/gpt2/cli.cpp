#include "cli.h"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <deque>
#include <functional>
#include <limits>
#include <map>
#include <sstream>

namespace flora::gpt2 {

std::string shipped_path(const std::string& relative) {
  return std::string(FLORA_GPT2_SOURCE_DIR) + "/" + relative;
}

void throw_usage_error(const std::string& flag, const std::string& value, const std::string& why) {
  throw UsageError(flag + " '" + value + "': " + why);
}

std::string format_number(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

TrainOptions Settings::default_train_options() {
  TrainOptions t;
  t.steps = 1000;
  t.warmup_steps = 50;
  t.eval_every = 100;
  t.log_every = 100;
  return t;
}

namespace {

constexpr int64_t kNoLimit = std::numeric_limits<int64_t>::max();
// Seeds: any 32-bit unsigned value, so that seed + parameter index never
// overflows anywhere.
constexpr int64_t kMaxSeed = (int64_t{1} << 32) - 1;

std::string join(const std::vector<std::string>& items, const char* separator = ", ") {
  std::string out;
  for (const auto& item : items) {
    out += (out.empty() ? "" : separator) + item;
  }
  return out;
}

std::string integer_range(int64_t lo, int64_t hi) {
  return hi == kNoLimit ? ">= " + std::to_string(lo) : "in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
}

int64_t parse_integer(const std::string& flag, const std::string& text, int64_t lo, int64_t hi) {
  int64_t value = 0;
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (text.empty() || ec != std::errc() || ptr != end || value < lo || value > hi) {
    throw_usage_error(flag, text, "expected a decimal integer " + integer_range(lo, hi));
  }
  return value;
}

/// Where a number may lie: (lo, hi) or [lo, hi) etc.
struct Interval {
  double lo;
  bool lo_open;
  double hi;
  bool hi_open;

  bool contains(double v) const {
    return (lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi);
  }
  std::string describe() const {
    if (std::isinf(hi)) {
      return (lo_open ? "> " : ">= ") + format_number(lo);
    }
    return "in " + std::string(lo_open ? "(" : "[") + format_number(lo) + ", " + format_number(hi) + (hi_open ? ")" : "]");
  }
};
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr Interval kPositive{0, true, kInf, true};
constexpr Interval kNonNegative{0, false, kInf, true};
constexpr Interval kFraction{0, true, 1, true};  // (0, 1)
constexpr Interval kMomentum{0, false, 1, true}; // [0, 1)

double parse_number(const std::string& flag, const std::string& text, const Interval& range) {
  double value = 0;
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (text.empty() || ec != std::errc() || ptr != end || !std::isfinite(value) || !range.contains(value)) {
    throw_usage_error(flag, text, "expected a finite number " + range.describe());
  }
  return value;
}

// A number >= 1, or "inf" (no limit): the aspect-ratio rule's limit.
double parse_aspect_ratio(const std::string& flag, const std::string& text) {
  double value = 0;
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, value);
  // from_chars also reads "nan", "-inf" and "infinity"; only +infinity and
  // finite values >= 1 mean something here.
  if (text.empty() || ec != std::errc() || ptr != end || std::isnan(value) || value < 1) {
    throw_usage_error(flag, text, "expected a number >= 1, or inf (no limit)");
  }
  return value;
}

// CLI11 does the syntax (flags, values, --help); every value is taken as
// text and converted here, because CLI11's own conversions accept nan,
// octal and hexadecimal, and clamp or wrap out-of-range integers silently.
class Flags {
 public:
  explicit Flags(CLI::App& app) : app_(app) {}

  void integer(const std::string& name, int64_t& out, int64_t lo, int64_t hi, const std::string& help) {
    auto& raw = add(name, help + " (integer " + integer_range(lo, hi) + ")", "INT", std::to_string(out));
    converters_.push_back([this, name, &raw, &out, lo, hi] {
      if (given(name)) {
        out = parse_integer(name, raw, lo, hi);
      }
    });
  }
  void optional_integer(const std::string& name, std::optional<int64_t>& out, int64_t lo, int64_t hi,
                        const std::string& help) {
    auto& raw = add(name, help + " (integer " + integer_range(lo, hi) + ")", "INT", "");
    converters_.push_back([this, name, &raw, &out, lo, hi] {
      if (given(name)) {
        out = parse_integer(name, raw, lo, hi);
      }
    });
  }
  void number(const std::string& name, double& out, Interval range, const std::string& help) {
    auto& raw = add(name, help + " (" + range.describe() + ")", "X", format_number(out));
    converters_.push_back([this, name, &raw, &out, range] {
      if (given(name)) {
        out = parse_number(name, raw, range);
      }
    });
  }
  void optional_number(const std::string& name, std::optional<double>& out, Interval range, const std::string& help) {
    auto& raw = add(name, help + " (" + range.describe() + ")", "X", "");
    converters_.push_back([this, name, &raw, &out, range] {
      if (given(name)) {
        out = parse_number(name, raw, range);
      }
    });
  }
  void choice(const std::string& name, std::string& out, const std::vector<std::string>& choices,
              const std::string& help) {
    auto& raw = add(name, help + " (" + join(choices, ", ") + ")", "NAME", out);
    converters_.push_back([this, name, &raw, &out, choices] {
      if (given(name)) {
        if (std::find(choices.begin(), choices.end(), raw) == choices.end()) {
          throw_usage_error(name, raw, "expected one of " + join(choices, ", "));
        }
        out = raw;
      }
    });
  }
  /// A number >= 1 or "inf".
  void aspect_ratio(const std::string& name, double& out, const std::string& help) {
    auto& raw = add(name, help + " (>= 1, or inf)", "X|inf", format_number(out));
    converters_.push_back([this, name, &raw, &out] {
      if (given(name)) {
        out = parse_aspect_ratio(name, raw);
      }
    });
  }
  /// A path; empty only when `empty_means` says what that means.
  void path(const std::string& name, std::string& out, const std::string& help, const std::string& empty_means = "") {
    auto& raw = add(name, help, "PATH", out);
    converters_.push_back([this, name, &raw, &out, empty_means] {
      if (given(name)) {
        if (raw.empty() && empty_means.empty()) {
          throw_usage_error(name, raw, "expected a path, got an empty string");
        }
        out = raw;
      }
    });
  }
  void paths(const std::string& name, std::vector<std::string>& out, const std::string& help) {
    raw_lists_.emplace_back();
    auto& raw = raw_lists_.back();
    options_[name] = app_.add_option(name, raw, help)->type_name("PATH")->default_str(join(out, " "));
    converters_.push_back([this, name, &raw, &out] {
      if (given(name)) {
        for (const auto& p : raw) {
          if (p.empty()) {
            throw_usage_error(name, p, "expected a path, got an empty string");
          }
        }
        out = raw;
      }
    });
  }
  /// Raw text, converted by the caller (e.g. a list).
  std::string& text(const std::string& name, const std::string& help, const std::string& type,
                    const std::string& default_text) {
    return add(name, help, type, default_text);
  }
  /// A switch: given or not.
  void flag(const std::string& name, bool& out, const std::string& help) {
    options_[name] = app_.add_flag(name, out, help);
    switches_.push_back(name);
  }
  /// CLI11 would also take a switch as --name=VALUE, reading "2" or "yes"
  /// as true: that form is refused, before parsing.
  void refuse_switch_values(const std::vector<std::string>& args) const {
    for (const auto& arg : args) {
      const auto equals = arg.find('=');
      if (equals != std::string::npos &&
          std::find(switches_.begin(), switches_.end(), arg.substr(0, equals)) != switches_.end()) {
        throw_usage_error(arg.substr(0, equals), arg.substr(equals + 1), "a switch takes no value");
      }
    }
  }

  /// Converts every given value, in the order the flags were declared.
  void convert() const {
    for (const auto& c : converters_) {
      c();
    }
  }
  bool given(const std::string& name) const {
    return options_.at(name)->count() > 0;
  }

 private:
  std::string& add(const std::string& name, const std::string& help, const std::string& type,
                   const std::string& default_text) {
    raw_.emplace_back();
    auto* option = app_.add_option(name, raw_.back(), help)->type_name(type);
    if (!default_text.empty()) {
      option->default_str(default_text);
    }
    options_[name] = option;
    return raw_.back();
  }

  CLI::App& app_;
  std::deque<std::string> raw_; // stable addresses for CLI11
  std::deque<std::vector<std::string>> raw_lists_;
  std::map<std::string, CLI::Option*> options_;
  std::vector<std::function<void()>> converters_;
  std::vector<std::string> switches_;
};

const std::vector<std::string> kOptimizers = {"adam", "adamw", "flora"};

std::vector<std::string> parse_optimizer_list(const std::string& flag, const std::string& text) {
  std::vector<std::string> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (std::find(kOptimizers.begin(), kOptimizers.end(), item) == kOptimizers.end()) {
      throw_usage_error(flag, text, "'" + item + "' is not an optimizer (expected a comma-separated list of " +
                           join(kOptimizers, ", ") + ")");
    }
    if (std::find(out.begin(), out.end(), item) != out.end()) {
      throw_usage_error(flag, text, "'" + item + "' is listed twice");
    }
    out.push_back(item);
  }
  if (out.empty() || text.back() == ',') {
    throw_usage_error(flag, text, "expected a comma-separated list of " + join(kOptimizers, ", "));
  }
  return out;
}

bool contains(const std::vector<std::string>& items, const std::string& item) {
  return std::find(items.begin(), items.end(), item) != items.end();
}

} // namespace

CommandLine parse_command_line(const std::vector<std::string>& args) {
  CommandLine result;
  Settings& s = result.settings;
  s.model_dir = shipped_path("assets/tiny-gpt2");
  s.train_files = {shipped_path("data/train.txt")};
  s.valid_file = shipped_path("data/valid.txt");
  s.check_input = shipped_path("../../tests/fixtures/gpt2/logits.safetensors");
  auto& t = s.train;

  CLI::App app{
      "gpt2-finetune: fine-tune a Hugging Face GPT-2 (or train one from scratch) with Adam, AdamW or Flora, and "
      "compare them.\nWithout arguments: the shipped tiny GPT-2 on the shipped corpus, adam vs flora."};
  Flags flags(app);
  // Optimizers.
  std::string optimizer;
  flags.choice("--optimizer", optimizer, kOptimizers, "one optimizer (default: --compare)");
  auto& compare = flags.text("--compare", "comma-separated optimizers to run on the same data and seed", "LIST",
                             join(s.optimizers, ","));
  flags.optional_number("--lr", s.lr, kPositive, "peak learning rate of every optimizer");
  flags.number("--adam-lr", s.adam_lr, kPositive, "peak learning rate of adam/adamw");
  flags.number("--flora-lr", s.flora_lr, kPositive, "peak learning rate of flora (relative to each parameter's RMS)");
  flags.number("--weight-decay", s.weight_decay, kNonNegative, "weight decay (adam: L2; adamw, flora: decoupled)");
  flags.integer("--rank", s.rank, 0, kNoLimit, "flora: rank of the compressed momentum (0: no compression)");
  flags.integer("--kappa", s.kappa, 1, kNoLimit, "flora: resample the projection every kappa steps");
  flags.number("--beta1", s.beta1, kMomentum, "flora: momentum (0: none)");
  flags.integer("--flora-seed", s.flora_seed, 0, kMaxSeed, "flora: seed of the random projections");
  flags.choice("--projection", s.projection, {"philox", "reference"}, "flora: projection generator");
  flags.choice("--quantization", s.quantization, {"none", "8bit"}, "flora: 8-bit optimizer states");
  flags.choice("--projection-precision", s.projection_precision, {"float32", "bfloat16", "tf32"},
               "flora: arithmetic of the projection products (tf32: CUDA only, float32 on a CPU)");
  flags.integer("--quantization-min-size", s.quantization_min_size, 0, kNoLimit,
                "flora, --quantization 8bit: parameters of fewer elements keep float32 states (0: none do, as "
                "flora-opt)");
  flags.integer("--accumulation-rank", s.accumulation_rank, 0, kNoLimit,
                "compress the gradient accumulation of --grad-accum micro-batches to this rank (0: off)");
  flags.flag("--fused-backward", s.fused_backward,
             "flora: update each parameter inside backward and release its gradient at once");
  flags.aspect_ratio("--max-aspect-ratio", s.max_aspect_ratio,
                     "flora: compress the momentum of matrices up to this aspect ratio (4: flora-opt's rule, which "
                     "leaves embeddings uncompressed; inf: every matrix with min(shape) >= --rank)");
  flags.flag("--stochastic-rounding", s.stochastic_rounding,
             "flora: write bfloat16 parameters rounded up or down at random (needs --dtype bfloat16)");
  // Data-parallel training.
  flags.optional_integer("--compression-rank", s.compression_rank, 1, kNoLimit,
                         "data-parallel (under torchrun): exchange gradients of compressible matrices as rank-R "
                         "random sketches instead of in full");
  flags.flag("--overlap", s.overlap,
             "data-parallel: start the gradient exchange from hooks during backward");
  flags.choice("--momentum-projection", s.momentum_projection, {"gaussian", "orthonormal", "subspace"},
               "flora: how the compressed momentum is projected (gaussian: flora-opt's)");
  flags.flag("--momentum-rescale", s.momentum_rescale,
             "flora: scale the decompressed momentum to the norm it has without projection noise");
  flags.integer("--stats-every", t.stats_every, 0, kNoLimit,
                "flora: write each parameter's update RMS and clip factor every N steps to statistics.csv (0: off)");
  // Training.
  flags.integer("--steps", t.steps, 1, kNoLimit, "optimizer steps per run");
  flags.integer("--batch-size", t.batch_size, 1, kNoLimit, "sequences per micro-batch");
  flags.integer("--block-size", t.block_size, 1, kNoLimit, "tokens per sequence (at most the model's n_positions)");
  flags.integer("--grad-accum", t.grad_accum, 1, kNoLimit, "micro-batches per step (gradients summed, scaled by 1/N)");
  flags.integer("--warmup-steps", t.warmup_steps, 0, kNoLimit,
                "linear warm-up steps, at most --steps (default: 50, or --steps if fewer), then cosine decay to 10%");
  flags.integer("--eval-every", t.eval_every, 0, kNoLimit, "evaluate every N steps (0: only at the end)");
  flags.integer("--eval-max-blocks", t.eval_max_blocks, 0, kNoLimit, "evaluate on at most N held-out blocks (0: all)");
  flags.integer("--log-every", t.log_every, 0, kNoLimit, "progress line every N steps (0: none)");
  flags.flag("--activation-checkpointing", t.activation_checkpointing,
             "recompute transformer blocks in backward instead of storing activations");
  int64_t seed = 0;
  flags.path("--checkpoint", s.checkpoint,
             "write each run's state to DIR/<optimizer>.pt (model, optimizer, accumulator, data-parallel exchange, "
             "step, loss curve) at the end, and every --checkpoint-every steps");
  flags.integer("--checkpoint-every", t.checkpoint_every, 1, kNoLimit, "with --checkpoint: also every N steps");
  flags.flag("--resume", s.resume, "continue each run from its --checkpoint file, with the flags it started with");
  flags.integer("--stop-after", t.stop_after, 1, kNoLimit,
                "end after step N of the --steps schedule (with --checkpoint, to --resume later)");
  flags.integer("--seed", seed, 0, kMaxSeed, "seed of the batch order and of --init-config's weights");
  flags.choice("--device", s.device, {"cpu", "cuda", "auto"}, "auto: cuda when available");
  flags.choice("--dtype", s.dtype, {"float32", "bfloat16"},
               "parameters, activations and gradients (optimizer states stay float32 or 8-bit)");
  flags.integer("--threads", s.threads, 0, 1024,
                "CPU threads (0: auto: 1 for models with n_embd < 256, else LibTorch's default)");
  // Model.
  flags.path("--model-dir", s.model_dir,
             "Hugging Face GPT-2 directory (config.json, model.safetensors, vocab.json, merges.txt)");
  flags.choice("--init-config", s.init_config, kInitConfigs,
               "train an untrained GPT-2 of this configuration from scratch instead of --model-dir");
  flags.optional_integer("--n-layer", s.n_layer, 1, kNoLimit, "--init-config custom: transformer blocks");
  flags.optional_integer("--n-embd", s.n_embd, 1, kNoLimit, "--init-config custom: width");
  flags.optional_integer("--n-head", s.n_head, 1, kNoLimit, "--init-config custom: attention heads");
  flags.optional_integer("--n-positions", s.n_positions, 1, kNoLimit,
                         "--init-config custom: longest sequence (default 1024)");
  flags.optional_integer("--vocab-size", s.vocab_size, 1, kNoLimit,
                         "--init-config custom: vocabulary (default: the tokenizer's)");
  flags.path("--tokenizer-dir", s.tokenizer_dir,
             "directory with vocab.json and merges.txt (default: --model-dir; with --init-config the shipped tiny "
             "model's)");
  // Data and outputs.
  flags.paths("--train-file", s.train_files, "training text file(s), UTF-8");
  flags.path("--valid-file", s.valid_file, "held-out text file (\"\": use --valid-fraction of the training text)",
             "--valid-fraction");
  flags.number("--valid-fraction", s.valid_fraction, kFraction,
               "held-out fraction of the training tokens, with --valid-file \"\"");
  flags.path("--out", s.out, "directory for metrics.csv, summary.csv, loss.svg, loss.png");
  flags.path("--save-model", s.save_model,
             "save the trained model as a Hugging Face directory (several optimizers: DIR/<optimizer>)");
  flags.flag("--check-logits", s.check_logits,
             "with --save-model: also write flora_check_logits.safetensors (logits of --check-input's input_ids)");
  flags.path("--check-input", s.check_input, "safetensors file with the input_ids for --check-logits");
  flags.path("--parameter-checksums", s.parameter_checksums,
             "write each trained model's parameter checksum to DIR/<optimizer>.rank<R>.txt (every rank of a "
             "data-parallel run writes its own)");

  flags.refuse_switch_values(args);
  std::vector<std::string> reversed(args.rbegin(), args.rend()); // CLI11 consumes from the back
  try {
    app.parse(reversed);
  } catch (const CLI::CallForHelp&) {
    result.help = true;
    result.help_text = app.help();
    return result;
  } catch (const CLI::ParseError& e) {
    throw UsageError(e.what());
  }
  flags.convert();
  t.seed = static_cast<uint64_t>(seed);

  // Which optimizers.
  if (flags.given("--optimizer") && flags.given("--compare")) {
    throw UsageError("--optimizer '" + optimizer + "' and --compare '" + compare +
                     "' conflict: give one optimizer or a list");
  }
  if (flags.given("--optimizer")) {
    s.optimizers = {optimizer};
  } else if (flags.given("--compare")) {
    s.optimizers = parse_optimizer_list("--compare", compare);
  } else {
    s.optimizers = {"adam", "flora"};
  }
  const bool flora = contains(s.optimizers, "flora");
  const bool adam = contains(s.optimizers, "adam") || contains(s.optimizers, "adamw");
  const std::string which = flags.given("--optimizer") ? "--optimizer " + s.optimizers.front()
                                                       : "--compare " + join(s.optimizers, ",");

  // Flags that no requested optimizer uses.
  for (const char* name :
       {"--flora-lr", "--rank", "--kappa", "--beta1", "--flora-seed", "--projection", "--quantization",
        "--quantization-min-size", "--projection-precision", "--fused-backward", "--max-aspect-ratio", "--stochastic-rounding",
        "--momentum-projection", "--momentum-rescale", "--stats-every"}) {
    if (flags.given(name) && !flora) {
      throw UsageError(std::string(name) + " applies to flora only, and " + which + " runs no flora");
    }
  }
  if (s.stochastic_rounding && s.dtype != "bfloat16") {
    throw UsageError("--stochastic-rounding rounds bfloat16 parameters, and --dtype is " + s.dtype +
                     ": add --dtype bfloat16 (float32 parameters need no rounding)");
  }
  if (s.stochastic_rounding && s.projection != "philox") {
    throw UsageError("--stochastic-rounding needs --projection philox (reference mode writes parameters as "
                     "flora-opt does), and --projection is '" + s.projection + "'");
  }
  if (flags.given("--quantization-min-size") && s.quantization != "8bit") {
    throw UsageError("--quantization-min-size " + std::to_string(s.quantization_min_size) +
                     " chooses which parameters get 8-bit states, and --quantization is '" + s.quantization +
                     "': add --quantization 8bit");
  }
  if (flags.given("--max-aspect-ratio") && s.rank == 0 && !s.compression_rank) {
    throw UsageError("--max-aspect-ratio '" + format_number(s.max_aspect_ratio) +
                     "' chooses which momenta (and with --compression-rank, which exchanged gradients) are "
                     "compressed, and --rank 0 compresses none");
  }
  // Checkpoints.
  if (flags.given("--checkpoint-every") && s.checkpoint.empty()) {
    throw UsageError("--checkpoint-every '" + std::to_string(t.checkpoint_every) + "' needs --checkpoint DIR");
  }
  if (s.resume && s.checkpoint.empty()) {
    throw UsageError("--resume needs --checkpoint DIR (where the runs to continue were saved)");
  }
  if (flags.given("--stop-after") && s.checkpoint.empty()) {
    throw UsageError("--stop-after '" + std::to_string(t.stop_after) +
                     "' ends the run early to continue it later, and without --checkpoint there is nothing to "
                     "continue from");
  }
  if (flags.given("--stop-after") && t.stop_after > t.steps) {
    throw UsageError("--stop-after '" + std::to_string(t.stop_after) + "' is past --steps " + std::to_string(t.steps));
  }
  if (!s.checkpoint.empty() && s.fused_backward && t.grad_accum > 1 && s.accumulation_rank > 0) {
    throw UsageError("--checkpoint '" + s.checkpoint + "' with --fused-backward, --grad-accum " +
                     std::to_string(t.grad_accum) + " and --accumulation-rank " +
                     std::to_string(s.accumulation_rank) +
                     ": flora::FusedBackward does not save its accumulator's seeds, so the run could not continue "
                     "exactly");
  }
  // The data-parallel exchange's modes (the library's rules, with the flags
  // named). Whether this is a data-parallel run at all is prepare_run's to
  // say (it reads the launcher's variables).
  if (s.overlap && s.fused_backward) {
    throw UsageError("--overlap starts the exchange of gradients after they are complete, and --fused-backward "
                     "already exchanges each gradient inside backward, right before its update");
  }
  if (s.overlap && s.accumulation_rank > 0) {
    throw UsageError("--overlap and --accumulation-rank '" + std::to_string(s.accumulation_rank) +
                     "' conflict: the accumulator's sketches are exchanged once, after the last micro-batch");
  }
  if (s.compression_rank && s.accumulation_rank > 0) {
    throw UsageError("--compression-rank '" + std::to_string(*s.compression_rank) + "' and --accumulation-rank '" +
                     std::to_string(s.accumulation_rank) +
                     "' conflict: the accumulator's sketches are what is exchanged (its rank decides)");
  }
  if (s.compression_rank && s.fused_backward && t.grad_accum > 1) {
    throw UsageError("--compression-rank '" + std::to_string(*s.compression_rank) +
                     "' with --fused-backward and --grad-accum " + std::to_string(t.grad_accum) +
                     ": the fused backward exchanges its accumulated gradients as they are; compress them with "
                     "--accumulation-rank instead");
  }
  // The library's rules for the momentum variants, named by their flags.
  if (s.momentum_rescale && s.momentum_projection == "subspace") {
    throw UsageError("--momentum-rescale and --momentum-projection 'subspace' conflict: a subspace momentum has "
                     "its own norm already");
  }
  if ((s.momentum_rescale || s.momentum_projection != "gaussian") && s.projection == "reference") {
    throw UsageError(std::string(s.momentum_rescale ? "--momentum-rescale" : "--momentum-projection '" +
                                                                                 s.momentum_projection + "'") +
                     " needs --projection philox (reference is flora-opt's own sequence)");
  }
  if (flags.given("--adam-lr") && !adam) {
    throw UsageError("--adam-lr applies to adam and adamw only, and " + which + " runs neither");
  }
  if (flags.given("--lr") && (flags.given("--adam-lr") || flags.given("--flora-lr"))) {
    throw UsageError("--lr '" + format_number(*s.lr) + "' sets every optimizer's learning rate: give either --lr "
                     "or --adam-lr/--flora-lr");
  }
  if (s.accumulation_rank > 0 && t.grad_accum == 1) {
    throw UsageError("--accumulation-rank '" + std::to_string(s.accumulation_rank) +
                     "' needs --grad-accum > 1: with one micro-batch there is nothing to accumulate");
  }
  if (!flags.given("--warmup-steps")) {
    t.warmup_steps = std::min(t.warmup_steps, t.steps); // a short run still reaches its peak rate
  } else if (t.warmup_steps > t.steps) {
    throw UsageError("--warmup-steps '" + std::to_string(t.warmup_steps) + "' exceeds --steps " +
                     std::to_string(t.steps) + ": the learning rate would never reach its peak");
  }

  // Model and tokenizer.
  if (flags.given("--init-config") && flags.given("--model-dir")) {
    throw UsageError("--init-config '" + s.init_config + "' and --model-dir '" + s.model_dir +
                     "' conflict: train a new model or fine-tune a saved one");
  }
  if (!s.init_config.empty()) {
    s.model_dir.clear();
  }
  for (const char* name : {"--n-layer", "--n-embd", "--n-head", "--n-positions", "--vocab-size"}) {
    if (flags.given(name) && s.init_config != "custom") {
      throw UsageError(std::string(name) + " sets a size of --init-config custom, and " +
                       (s.init_config.empty() ? std::string("there is no --init-config")
                                              : "--init-config is '" + s.init_config + "'"));
    }
  }
  if (s.init_config == "custom") {
    if (!s.n_layer || !s.n_embd || !s.n_head) {
      throw UsageError("--init-config 'custom' needs --n-layer, --n-embd and --n-head");
    }
    if (*s.n_embd % *s.n_head != 0) {
      throw UsageError("--n-embd '" + std::to_string(*s.n_embd) + "' is not divisible by --n-head " +
                       std::to_string(*s.n_head));
    }
  }

  // Data and outputs.
  if (flags.given("--valid-fraction") && !s.valid_file.empty()) {
    throw UsageError("--valid-fraction '" + format_number(s.valid_fraction) +
                     "' applies only with --valid-file \"\", and the held-out text is '" + s.valid_file + "'");
  }
  if (s.check_logits && s.save_model.empty()) {
    throw UsageError("--check-logits needs --save-model DIR");
  }
  if (flags.given("--check-input") && !s.check_logits) {
    throw UsageError("--check-input '" + s.check_input + "' is read only with --check-logits");
  }
  return result;
}

} // namespace flora::gpt2
