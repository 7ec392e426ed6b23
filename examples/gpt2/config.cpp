#include "config.h"

#include "file_io.h"

#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>

#include <initializer_list>

namespace flora::gpt2 {
namespace {

const char* const kActivations[] = {"gelu_new", "gelu_pytorch_tanh", "gelu", "relu", "silu", "swish", "tanh"};

// The value of the first of `keys` present in `json` (nullptr if none).
const nlohmann::json* find(const nlohmann::json& json, std::initializer_list<const char*> keys, std::string* found) {
  for (const char* key : keys) {
    const auto it = json.find(key);
    if (it != json.end()) {
      *found = key;
      return &*it;
    }
  }
  return nullptr;
}

int64_t required_int(const nlohmann::json& json, std::initializer_list<const char*> keys, const std::string& source) {
  std::string key;
  const auto* value = find(json, keys, &key);
  TORCH_CHECK(value != nullptr, source, ": missing required field '", *keys.begin(), "'");
  TORCH_CHECK(
      value->is_number_integer(), source, ": field '", key, "' must be an integer, got ", value->dump());
  return value->get<int64_t>();
}

} // namespace

void GPT2Config::validate(const std::string& where) const {
  TORCH_CHECK(vocab_size > 0, where, ": vocab_size must be positive, got ", vocab_size);
  TORCH_CHECK(n_positions > 0, where, ": n_positions must be positive, got ", n_positions);
  TORCH_CHECK(n_embd > 0, where, ": n_embd must be positive, got ", n_embd);
  TORCH_CHECK(n_layer > 0, where, ": n_layer must be positive, got ", n_layer);
  TORCH_CHECK(n_head > 0, where, ": n_head must be positive, got ", n_head);
  TORCH_CHECK(
      n_embd % n_head == 0, where, ": n_embd (", n_embd, ") must be divisible by n_head (", n_head, ")");
  TORCH_CHECK(n_inner >= 0, where, ": n_inner must be positive or null, got ", n_inner);
  TORCH_CHECK(
      layer_norm_epsilon > 0, where, ": layer_norm_epsilon must be positive, got ", layer_norm_epsilon);
  bool known = false;
  std::string names;
  for (const char* a : kActivations) {
    known = known || activation_function == a;
    names += names.empty() ? a : std::string(", ") + a;
  }
  TORCH_CHECK(
      known, where, ": activation_function '", activation_function, "' is not supported (supported: ", names, ")");
}

GPT2Config parse_config(const std::string& json_text, const std::string& source) {
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(json_text);
  } catch (const nlohmann::json::exception& e) {
    TORCH_CHECK(false, source, ": malformed JSON: ", e.what());
  }
  TORCH_CHECK(json.is_object(), source, ": not a JSON object");
  GPT2Config c;
  c.source_json = json_text;
  if (json.contains("model_type")) {
    TORCH_CHECK(
        json["model_type"] == "gpt2", source, ": model_type is ", json["model_type"].dump(),
        ", this program only knows \"gpt2\"");
  }
  c.vocab_size = required_int(json, {"vocab_size"}, source);
  c.n_positions = required_int(json, {"n_positions", "max_position_embeddings"}, source);
  c.n_embd = required_int(json, {"n_embd", "hidden_size"}, source);
  c.n_layer = required_int(json, {"n_layer", "num_hidden_layers"}, source);
  c.n_head = required_int(json, {"n_head", "num_attention_heads"}, source);
  if (auto it = json.find("n_inner"); it != json.end() && !it->is_null()) {
    TORCH_CHECK(it->is_number_integer(), source, ": field 'n_inner' must be an integer or null, got ", it->dump());
    c.n_inner = it->get<int64_t>();
    TORCH_CHECK(c.n_inner > 0, source, ": field 'n_inner' must be positive or null, got ", c.n_inner);
  }
  if (auto it = json.find("layer_norm_epsilon"); it != json.end()) {
    TORCH_CHECK(it->is_number(), source, ": field 'layer_norm_epsilon' must be a number, got ", it->dump());
    c.layer_norm_epsilon = it->get<double>();
  }
  if (auto it = json.find("activation_function"); it != json.end()) {
    TORCH_CHECK(it->is_string(), source, ": field 'activation_function' must be a string, got ", it->dump());
    c.activation_function = it->get<std::string>();
  }
  auto boolean = [&](const char* key, bool& out) {
    if (auto it = json.find(key); it != json.end()) {
      TORCH_CHECK(it->is_boolean(), source, ": field '", key, "' must be true or false, got ", it->dump());
      out = it->get<bool>();
    }
  };
  boolean("tie_word_embeddings", c.tie_word_embeddings);
  boolean("scale_attn_weights", c.scale_attn_weights);
  boolean("scale_attn_by_inverse_layer_idx", c.scale_attn_by_inverse_layer_idx);
  c.validate(source);
  return c;
}

GPT2Config load_config(const std::string& path) {
  return parse_config(read_file(path), path);
}

std::string config_to_json(const GPT2Config& config, const std::string& dtype_name) {
  config.validate();
  nlohmann::json json = nlohmann::json::object();
  if (!config.source_json.empty()) {
    json = nlohmann::json::parse(config.source_json);
  }
  // Our names win over aliases the source may have used.
  for (const char* alias : {"max_position_embeddings", "hidden_size", "num_hidden_layers", "num_attention_heads"}) {
    json.erase(alias);
  }
  json["model_type"] = "gpt2";
  json["architectures"] = {"GPT2LMHeadModel"};
  json["vocab_size"] = config.vocab_size;
  json["n_positions"] = config.n_positions;
  json["n_embd"] = config.n_embd;
  json["n_layer"] = config.n_layer;
  json["n_head"] = config.n_head;
  json["n_inner"] = config.n_inner > 0 ? nlohmann::json(config.n_inner) : nlohmann::json(nullptr);
  json["layer_norm_epsilon"] = config.layer_norm_epsilon;
  json["activation_function"] = config.activation_function;
  json["tie_word_embeddings"] = config.tie_word_embeddings;
  json["scale_attn_weights"] = config.scale_attn_weights;
  json["scale_attn_by_inverse_layer_idx"] = config.scale_attn_by_inverse_layer_idx;
  json[json.contains("torch_dtype") && !json.contains("dtype") ? "torch_dtype" : "dtype"] = dtype_name;
  return json.dump(2) + "\n";
}

void save_config(const GPT2Config& config, const std::string& path, const std::string& dtype_name) {
  write_file_atomic(path, config_to_json(config, dtype_name));
}

} // namespace flora::gpt2
