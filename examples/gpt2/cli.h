#pragma once

// The command line of gpt2-finetune: every flag with its default, the values
// it accepts and the flags it conflicts with. Parsing reads no file; what
// needs the model or the data (e.g. --block-size against the model's
// n_positions, a corpus too short for one batch) is checked by
// prepare_run() (finetune.h) before anything is trained.
//
// Every value is parsed here, strictly: integers are decimal with nothing
// after them ("1.5", "1e3", "0x10" and "10abc" are refused, and so is a
// value out of range); numbers must be finite (no nan, no inf). A bad value
// or a conflict throws UsageError, whose message starts with the flag and
// the value as given.

#include "train.h"

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace flora::gpt2 {

/// A bad command line; the message names the flag and the value.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Throws UsageError("<flag> '<value>': <why>"), the form of every message
/// about one flag's value.
[[noreturn]] void throw_usage_error(const std::string& flag, const std::string& value, const std::string& why);

/// A number as the user would write it ("0.1", "1e-05").
std::string format_number(double v);

/// The named model configurations of --init-config.
inline const std::vector<std::string> kInitConfigs = {"tiny", "gpt2", "gpt2-medium", "custom"};

/// What the flags say, typed and checked; defaults are the program's.
struct Settings {
  // Optimizers, each run from the same weights, seed and batches.
  std::vector<std::string> optimizers = {"adam", "flora"};
  std::optional<double> lr; // every optimizer's peak rate
  double adam_lr = 3e-3;
  double flora_lr = 0.08; // relative to each parameter's RMS (Flora's scale_parameter)
  double weight_decay = 0.0;
  int64_t rank = 32; // 0: no compression
  int64_t kappa = 1000;
  double beta1 = 0.9; // 0: no momentum
  int64_t flora_seed = 0;
  std::string projection = "philox";
  std::string quantization = "none";
  /// With 8-bit states: parameters of fewer elements keep float32 moments.
  int64_t quantization_min_size = 4096;
  /// Flora: arithmetic of the projection products ("float32", "bfloat16", "tf32").
  std::string projection_precision = "float32";
  int64_t accumulation_rank = 0;
  bool fused_backward = false;
  /// Flora's compression rule: the largest aspect ratio of a matrix whose
  /// momentum is compressed (4, flora-opt's; infinity: no limit).
  double max_aspect_ratio = 4.0;
  /// Flora: write bfloat16 parameters with stochastic rounding.
  bool stochastic_rounding = false;

  // Data-parallel training (under torchrun; see data_parallel.h).
  /// Exchange compressible gradients as rank-r sketches; unset: plain.
  std::optional<int64_t> compression_rank;
  /// Start the exchange from hooks during backward.
  bool overlap = false;
  /// Every rank writes its trained parameters' checksum here (empty: no).
  std::string parameter_checksums;

  /// Checkpoints: DIR/<optimizer>.pt (empty: none); continue from them.
  /// (How often, and where to stop, are TrainOptions'.)
  std::string checkpoint;
  bool resume = false;
  /// flora::MomentumProjection by name, and momentum_rescale.
  std::string momentum_projection = "gaussian";
  bool momentum_rescale = false;

  TrainOptions train = default_train_options();
  std::string device = "auto";
  /// "float32" or "bfloat16": parameters, activations and gradients.
  std::string dtype = "float32";
  int64_t threads = 0; // 0: auto

  /// A Hugging Face GPT-2 directory to fine-tune; empty with --init-config.
  std::string model_dir;
  /// Train an untrained model of this configuration (kInitConfigs) instead.
  std::string init_config;
  /// The sizes of --init-config custom (n_positions and vocab_size have
  /// defaults: 1024 and the tokenizer's vocabulary size).
  std::optional<int64_t> n_layer, n_embd, n_head, n_positions, vocab_size;
  /// Where vocab.json and merges.txt come from; empty: the model
  /// directory, or with --init-config the shipped tiny model's.
  std::string tokenizer_dir;

  std::vector<std::string> train_files;
  std::string valid_file; // empty: the last valid_fraction of the training tokens
  double valid_fraction = 0.1;
  std::string out = "gpt2-out";
  std::string save_model;
  bool check_logits = false;
  std::string check_input;

  static TrainOptions default_train_options();
};

struct CommandLine {
  /// --help was given: print help_text, exit with status 0.
  bool help = false;
  std::string help_text;
  Settings settings;
};

/// Parses the arguments after the program name. Throws UsageError.
CommandLine parse_command_line(const std::vector<std::string>& args);

/// A path inside examples/gpt2 (the shipped model, corpus and fixtures).
std::string shipped_path(const std::string& relative);

} // namespace flora::gpt2
