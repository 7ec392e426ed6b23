#include "pretrained.h"

#include "file_io.h"
#include "safetensors.h"

#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <map>
#include <memory>
#include <set>

namespace flora::gpt2 {
namespace {

std::string dtype_name(torch::Dtype dtype) {
  switch (dtype) {
    case torch::kFloat:
      return "float32";
    case torch::kHalf:
      return "float16";
    case torch::kBFloat16:
      return "bfloat16";
    case torch::kDouble:
      return "float64";
    default:
      TORCH_CHECK(false, "unsupported model dtype ", dtype);
  }
}

} // namespace

std::vector<std::string> weight_files(const std::string& dir) {
  const std::string single = join_path(dir, "model.safetensors");
  if (is_file(single)) {
    return {single};
  }
  const std::string index = join_path(dir, "model.safetensors.index.json");
  if (is_file(index)) {
    nlohmann::json json;
    try {
      json = nlohmann::json::parse(read_file(index));
    } catch (const nlohmann::json::exception& e) {
      TORCH_CHECK(false, index, ": malformed JSON: ", e.what());
    }
    TORCH_CHECK(json.contains("weight_map") && json["weight_map"].is_object(), index, ": no weight_map object");
    std::set<std::string> shards;
    for (const auto& [name, file] : json["weight_map"].items()) {
      TORCH_CHECK(file.is_string(), index, ": weight_map entry '", name, "' is not a file name");
      shards.insert(file.get<std::string>());
    }
    std::vector<std::string> files;
    for (const auto& s : shards) {
      files.push_back(join_path(dir, s));
    }
    return files;
  }
  std::string hint;
  if (is_file(join_path(dir, "pytorch_model.bin"))) {
    hint = " (it has pytorch_model.bin, which this program does not read: download model.safetensors instead)";
  }
  TORCH_CHECK(false, "no model.safetensors or model.safetensors.index.json in '", dir, "'", hint);
}

LoadReport load_weights(GPT2LMHeadModel& model, const std::vector<std::string>& safetensors_files) {
  TORCH_CHECK(!safetensors_files.empty(), "load_weights: no files");
  std::vector<std::unique_ptr<SafetensorsReader>> readers;
  std::map<std::string, std::pair<const SafetensorsReader*, std::string>> available; // canonical -> (reader, name)
  LoadReport report;
  const bool tied = model->config().tie_word_embeddings;
  auto params = model->named_parameters();
  for (const auto& file : safetensors_files) {
    readers.push_back(std::make_unique<SafetensorsReader>(file));
    for (const auto& info : readers.back()->tensors()) {
      std::string canonical = info.name;
      if (canonical.rfind("transformer.", 0) != 0 && canonical != "lm_head.weight") {
        canonical = "transformer." + canonical;
      }
      if (params.contains(canonical)) {
        TORCH_CHECK(
            available.count(canonical) == 0, "load_weights: parameter '", canonical, "' is stored twice (as '",
            available[canonical].second, "' and '", info.name, "')");
        available[canonical] = {readers.back().get(), info.name};
      } else {
        report.skipped.push_back(info.name);
      }
    }
  }
  std::set<std::string> dtypes;
  // Validate everything first, so that an error changes nothing.
  std::vector<std::string> missing;
  for (const auto& item : params) {
    const auto it = available.find(item.key());
    if (it == available.end()) {
      missing.push_back(item.key());
      continue;
    }
    const auto& info = it->second.first->info(it->second.second);
    TORCH_CHECK(
        c10::IntArrayRef(info.shape) == item.value().sizes(), "load_weights: '", info.name, "' in '",
        it->second.first->path(), "' has shape ", c10::IntArrayRef(info.shape), ", the model's ", item.key(),
        " has ", item.value().sizes(), " (does config.json match the weights?)");
    TORCH_CHECK(
        at::isFloatingType(info.dtype), "load_weights: '", info.name, "' has dtype ", info.dtype_name,
        ", expected a floating type");
    dtypes.insert(info.dtype_name);
  }
  if (!missing.empty()) {
    std::string list;
    for (size_t i = 0; i < missing.size() && i < 5; ++i) {
      list += (i ? ", " : "") + missing[i];
    }
    if (missing.size() > 5) {
      list += ", ...";
    }
    TORCH_CHECK(
        false, "load_weights: ", missing.size(), " parameter(s) missing from ", safetensors_files.front(),
        (safetensors_files.size() > 1 ? " and the other shards" : ""), ": ", list,
        (!tied && missing.front() == "lm_head.weight" ? " (tie_word_embeddings is false)" : ""));
  }
  torch::NoGradGuard no_grad;
  for (auto& item : params) {
    const auto& [reader, name] = available.at(item.key());
    item.value().copy_(reader->load(name));
  }
  for (const auto& d : dtypes) {
    report.stored_dtype += (report.stored_dtype.empty() ? "" : ",") + d;
  }
  return report;
}

GPT2LMHeadModel load_pretrained(
    const std::string& dir,
    torch::Dtype dtype,
    torch::Device device,
    LoadReport* report) {
  TORCH_CHECK(is_dir(dir), "model directory '", dir, "' does not exist");
  GPT2LMHeadModel model(load_config(join_path(dir, "config.json")));
  auto r = load_weights(model, weight_files(dir));
  model->to(device, dtype);
  if (report != nullptr) {
    *report = std::move(r);
  }
  return model;
}

std::vector<std::pair<std::string, torch::Tensor>> pretrained_tensors(const GPT2LMHeadModel& model) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& item : model->named_parameters()) {
    out.emplace_back(item.key(), item.value().detach());
  }
  return out;
}

void save_pretrained(
    const GPT2LMHeadModel& model,
    const Tokenizer& tokenizer,
    const std::string& dir,
    const std::string& source_dir) {
  make_dirs(dir);
  const auto tensors = pretrained_tensors(model);
  TORCH_CHECK(!tensors.empty(), "save_pretrained: the model has no parameters");
  save_config(model->config(), join_path(dir, "config.json"), dtype_name(tensors.front().second.scalar_type()));
  save_safetensors(join_path(dir, "model.safetensors"), tensors, {{"format", "pt"}});
  tokenizer.save(dir);
  auto copy_or = [&](const std::string& name, const std::string& fallback) {
    const std::string from = source_dir.empty() ? "" : join_path(source_dir, name);
    if (!from.empty() && is_file(from)) {
      copy_file(from, join_path(dir, name));
    } else if (!fallback.empty()) {
      write_file_atomic(join_path(dir, name), fallback);
    }
  };
  const std::string eot = "<|endoftext|>";
  nlohmann::ordered_json special = {{"bos_token", eot}, {"eos_token", eot}, {"unk_token", eot}};
  nlohmann::ordered_json tokenizer_config = {
      {"tokenizer_class", "GPT2Tokenizer"},
      {"add_prefix_space", false},
      {"bos_token", eot},
      {"eos_token", eot},
      {"unk_token", eot},
      {"model_max_length", model->config().n_positions},
      {"clean_up_tokenization_spaces", false},
  };
  copy_or("tokenizer_config.json", tokenizer_config.dump(2) + "\n");
  copy_or("special_tokens_map.json", special.dump(2) + "\n");
  copy_or("generation_config.json", "");
}

} // namespace flora::gpt2
