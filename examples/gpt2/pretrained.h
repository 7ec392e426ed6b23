#pragma once

// Hugging Face model directories: loading GPT2LMHeadModel weights from
// config.json + model.safetensors (or a sharded model.safetensors.index.json)
// and saving a fine-tuned model back in the layout transformers loads with
// GPT2LMHeadModel.from_pretrained / GPT2Tokenizer.from_pretrained.

#include "model.h"
#include "tokenizer.h"

#include <torch/types.h>

#include <string>
#include <vector>

namespace flora::gpt2 {

/// What load_weights found besides the model's parameters.
struct LoadReport {
  /// safetensors dtype(s) of the loaded parameters, e.g. "F32" or "BF16".
  std::string stored_dtype;
  /// Tensors in the file that are not parameters of the model and were
  /// skipped: the causal-mask buffers of old checkpoints (h.{i}.attn.bias,
  /// h.{i}.attn.masked_bias), a tied lm_head.weight, and anything unknown.
  std::vector<std::string> skipped;
};

/// Copies the tensors of `safetensors_files` into the model's parameters,
/// converting to each parameter's dtype and device. Accepts HF's names with
/// or without the "transformer." prefix (the original gpt2 checkpoints have
/// none). Throws c10::Error naming the tensor for a missing parameter or a
/// shape mismatch; nothing is changed then.
LoadReport load_weights(GPT2LMHeadModel& model, const std::vector<std::string>& safetensors_files);

/// The model's weight files in `dir`: model.safetensors, or the shards
/// listed in model.safetensors.index.json.
std::vector<std::string> weight_files(const std::string& dir);

/// Builds the model of dir/config.json, loads its weights and moves it to
/// `dtype`/`device`.
GPT2LMHeadModel load_pretrained(
    const std::string& dir,
    torch::Dtype dtype = torch::kFloat,
    torch::Device device = torch::kCPU,
    LoadReport* report = nullptr);

/// The tensors save_pretrained writes: named_parameters(), without
/// lm_head.weight when it is tied (HF does not store it then).
std::vector<std::pair<std::string, torch::Tensor>> pretrained_tensors(const GPT2LMHeadModel& model);

/// Writes a Hugging Face model directory (created if needed):
///   config.json, model.safetensors (metadata {"format": "pt"}),
///   vocab.json, merges.txt (from `tokenizer`),
///   tokenizer_config.json, special_tokens_map.json, generation_config.json
///   (copied from `source_dir` when it has them; the first two are otherwise
///   written for GPT2Tokenizer with "<|endoftext|>" as bos/eos/unk).
/// Every file is written atomically.
void save_pretrained(
    const GPT2LMHeadModel& model,
    const Tokenizer& tokenizer,
    const std::string& dir,
    const std::string& source_dir = "");

} // namespace flora::gpt2
