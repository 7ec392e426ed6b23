#pragma once

// GPT-2 in the LibTorch C++ frontend, with the parameter names and layouts
// of Hugging Face's GPT2LMHeadModel, so that its safetensors files load and
// save unchanged:
//
//   transformer.wte.weight                (vocab_size, n_embd)
//   transformer.wpe.weight                (n_positions, n_embd)
//   transformer.h.{i}.ln_1.{weight,bias}
//   transformer.h.{i}.attn.c_attn.{weight,bias}   Conv1D (n_embd, 3 n_embd)
//   transformer.h.{i}.attn.c_proj.{weight,bias}   Conv1D (n_embd, n_embd)
//   transformer.h.{i}.ln_2.{weight,bias}
//   transformer.h.{i}.mlp.c_fc.{weight,bias}      Conv1D (n_embd, n_inner)
//   transformer.h.{i}.mlp.c_proj.{weight,bias}    Conv1D (n_inner, n_embd)
//   transformer.ln_f.{weight,bias}
//   lm_head.weight                        only when tie_word_embeddings is
//                                         false; tied, the logits use wte.
//
// Conv1D is GPT-2's transposed linear layer: weight (in, out), y = x W + b.
// Attention is causal scaled-dot-product attention; gelu_new is the tanh
// approximation. Dropout is not implemented (the config's *_pdrop are
// ignored; training here is without dropout).

#include "config.h"

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <string>

namespace flora::gpt2 {

class Conv1DImpl : public torch::nn::Module {
 public:
  Conv1DImpl(int64_t in_features, int64_t out_features);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight; // (in, out)
  torch::Tensor bias;   // (out)
};
TORCH_MODULE(Conv1D);

class AttentionImpl : public torch::nn::Module {
 public:
  AttentionImpl(const GPT2Config& config, int64_t layer_index);
  torch::Tensor forward(const torch::Tensor& x);
  Conv1D c_attn{nullptr};
  Conv1D c_proj{nullptr};

 private:
  int64_t n_head_;
  double scale_;
};
TORCH_MODULE(Attention);

class MLPImpl : public torch::nn::Module {
 public:
  explicit MLPImpl(const GPT2Config& config);
  torch::Tensor forward(const torch::Tensor& x);
  Conv1D c_fc{nullptr};
  Conv1D c_proj{nullptr};

 private:
  std::string activation_;
};
TORCH_MODULE(MLP);

class BlockImpl : public torch::nn::Module {
 public:
  BlockImpl(const GPT2Config& config, int64_t layer_index);
  torch::Tensor forward(const torch::Tensor& x);
  torch::nn::LayerNorm ln_1{nullptr};
  Attention attn{nullptr};
  torch::nn::LayerNorm ln_2{nullptr};
  MLP mlp{nullptr};
};
TORCH_MODULE(Block);

/// HF's GPT2Model: embeddings, blocks, final LayerNorm.
class GPT2ModelImpl : public torch::nn::Module {
 public:
  explicit GPT2ModelImpl(const GPT2Config& config);
  /// input_ids (batch, time) int64 -> hidden states (batch, time, n_embd).
  /// With `checkpoint_blocks`, each block runs under activation
  /// checkpointing (see checkpoint.h) when gradients are being recorded.
  torch::Tensor forward(const torch::Tensor& input_ids, bool checkpoint_blocks = false);
  torch::nn::Embedding wte{nullptr};
  torch::nn::Embedding wpe{nullptr};
  torch::nn::ModuleList h{nullptr};
  torch::nn::LayerNorm ln_f{nullptr};

 private:
  int64_t n_positions_;
};
TORCH_MODULE(GPT2Model);

/// HF's GPT2LMHeadModel: GPT2Model plus the language-model head.
class GPT2LMHeadModelImpl : public torch::nn::Module {
 public:
  explicit GPT2LMHeadModelImpl(const GPT2Config& config);

  /// input_ids (batch, time) -> logits (batch, time, vocab_size).
  torch::Tensor forward(const torch::Tensor& input_ids);
  /// Mean cross-entropy of the next-token predictions: logits of
  /// input_ids (batch, T) against targets (batch, T) (already shifted).
  torch::Tensor loss(const torch::Tensor& input_ids, const torch::Tensor& targets);
  /// HF's causal-LM loss with labels = input_ids: the logits at positions
  /// 0..T-2 against the ids at 1..T-1.
  torch::Tensor lm_loss(const torch::Tensor& input_ids);

  /// GPT-2's initialisation (normal(0, 0.02), residual projections scaled by
  /// 1/sqrt(2 n_layer), LayerNorm 1/0, biases 0), from torch's generator.
  void init_weights();

  /// Recompute each transformer block in backward instead of storing its
  /// activations (less memory, about one more forward pass of compute).
  void set_activation_checkpointing(bool on) {
    activation_checkpointing_ = on;
  }
  bool activation_checkpointing() const {
    return activation_checkpointing_;
  }
  const GPT2Config& config() const {
    return config_;
  }
  /// The output embedding: wte's weight when tied, else lm_head's.
  torch::Tensor output_embedding() const;

  GPT2Model transformer{nullptr};
  torch::nn::Linear lm_head{nullptr}; // null when tied

 private:
  GPT2Config config_;
  bool activation_checkpointing_ = false;
};
TORCH_MODULE(GPT2LMHeadModel);

} // namespace flora::gpt2
