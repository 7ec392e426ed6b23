#pragma once

// GPT2Config: the architecture hyper-parameters of a Hugging Face GPT-2
// model, read from and written to its config.json.

#include <cstdint>
#include <string>

namespace flora::gpt2 {

struct GPT2Config {
  // Required in config.json (or under their transformers aliases
  // vocab_size / max_position_embeddings / hidden_size / num_hidden_layers /
  // num_attention_heads for the last four).
  int64_t vocab_size = 0;
  int64_t n_positions = 0;
  int64_t n_embd = 0;
  int64_t n_layer = 0;
  int64_t n_head = 0;
  // Optional, with transformers' defaults.
  /// Width of the MLP; 0 (config: null or absent) means 4 * n_embd.
  int64_t n_inner = 0;
  double layer_norm_epsilon = 1e-5;
  /// gelu_new (= gelu_pytorch_tanh, the tanh approximation), gelu (exact,
  /// erf), relu, silu (= swish), tanh.
  std::string activation_function = "gelu_new";
  /// lm_head shares wte's weight (GPT-2's default). false: a separate
  /// lm_head.weight, loaded and saved as such.
  bool tie_word_embeddings = true;
  /// Scale attention scores by 1/sqrt(head_dim).
  bool scale_attn_weights = true;
  /// Further scale them by 1/(layer_index + 1).
  bool scale_attn_by_inverse_layer_idx = false;

  /// The config.json text this came from (empty if built in code); saving
  /// keeps its other fields (bos/eos ids, task parameters, ...).
  std::string source_json;

  int64_t inner_dim() const {
    return n_inner > 0 ? n_inner : 4 * n_embd;
  }
  int64_t head_dim() const {
    return n_embd / n_head;
  }

  /// Throws c10::Error naming the bad field unless the values are usable.
  void validate(const std::string& where = "GPT2Config") const;
};

/// Parses config.json text; `source` names it in errors. Missing required
/// fields, wrong types and invalid values throw c10::Error naming the field.
GPT2Config parse_config(const std::string& json_text, const std::string& source = "config.json");
/// Reads and parses a config.json file.
GPT2Config load_config(const std::string& path);
/// config.json text: the source's fields with ours updated, plus
/// model_type "gpt2", architectures ["GPT2LMHeadModel"] and the weights'
/// dtype name (e.g. "float32") under "dtype" (or "torch_dtype" if the source
/// used that key).
std::string config_to_json(const GPT2Config& config, const std::string& dtype_name = "float32");
/// Writes config_to_json atomically.
void save_config(const GPT2Config& config, const std::string& path, const std::string& dtype_name = "float32");

} // namespace flora::gpt2
