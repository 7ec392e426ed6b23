#include "model.h"

#include "checkpoint.h"

#include <torch/torch.h>

#include <cmath>

namespace flora::gpt2 {

Conv1DImpl::Conv1DImpl(int64_t in_features, int64_t out_features) {
  weight = register_parameter("weight", torch::empty({in_features, out_features}));
  bias = register_parameter("bias", torch::zeros({out_features}));
  torch::NoGradGuard no_grad;
  weight.normal_(0.0, 0.02);
}

torch::Tensor Conv1DImpl::forward(const torch::Tensor& x) {
  auto sizes = x.sizes().vec();
  sizes.back() = weight.size(1);
  return torch::addmm(bias, x.reshape({-1, x.size(-1)}), weight).view(sizes);
}

AttentionImpl::AttentionImpl(const GPT2Config& config, int64_t layer_index) : n_head_(config.n_head) {
  c_attn = register_module("c_attn", Conv1D(config.n_embd, 3 * config.n_embd));
  c_proj = register_module("c_proj", Conv1D(config.n_embd, config.n_embd));
  scale_ = config.scale_attn_weights ? 1.0 / std::sqrt(static_cast<double>(config.head_dim())) : 1.0;
  if (config.scale_attn_by_inverse_layer_idx) {
    scale_ /= static_cast<double>(layer_index + 1);
  }
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x) {
  const int64_t batch = x.size(0), time = x.size(1), embd = x.size(2);
  const int64_t head_dim = embd / n_head_;
  auto qkv = c_attn->forward(x).view({batch, time, 3, n_head_, head_dim}).permute({2, 0, 3, 1, 4});
  auto y = at::scaled_dot_product_attention(
      qkv[0], qkv[1], qkv[2], /*attn_mask=*/std::nullopt, /*dropout_p=*/0.0, /*is_causal=*/true, scale_);
  return c_proj->forward(y.transpose(1, 2).reshape({batch, time, embd}));
}

MLPImpl::MLPImpl(const GPT2Config& config) : activation_(config.activation_function) {
  c_fc = register_module("c_fc", Conv1D(config.n_embd, config.inner_dim()));
  c_proj = register_module("c_proj", Conv1D(config.inner_dim(), config.n_embd));
}

torch::Tensor MLPImpl::forward(const torch::Tensor& x) {
  auto h = c_fc->forward(x);
  if (activation_ == "gelu_new" || activation_ == "gelu_pytorch_tanh") {
    h = torch::gelu(h, "tanh");
  } else if (activation_ == "gelu") {
    h = torch::gelu(h);
  } else if (activation_ == "relu") {
    h = torch::relu(h);
  } else if (activation_ == "silu" || activation_ == "swish") {
    h = torch::silu(h);
  } else if (activation_ == "tanh") {
    h = torch::tanh(h);
  } else {
    TORCH_CHECK(false, "unsupported activation_function '", activation_, "'");
  }
  return c_proj->forward(h);
}

BlockImpl::BlockImpl(const GPT2Config& config, int64_t layer_index) {
  const auto ln = torch::nn::LayerNormOptions({config.n_embd}).eps(config.layer_norm_epsilon);
  ln_1 = register_module("ln_1", torch::nn::LayerNorm(ln));
  attn = register_module("attn", Attention(config, layer_index));
  ln_2 = register_module("ln_2", torch::nn::LayerNorm(ln));
  mlp = register_module("mlp", MLP(config));
}

torch::Tensor BlockImpl::forward(const torch::Tensor& x) {
  auto h = x + attn->forward(ln_1->forward(x));
  return h + mlp->forward(ln_2->forward(h));
}

GPT2ModelImpl::GPT2ModelImpl(const GPT2Config& config) : n_positions_(config.n_positions) {
  config.validate();
  wte = register_module("wte", torch::nn::Embedding(config.vocab_size, config.n_embd));
  wpe = register_module("wpe", torch::nn::Embedding(config.n_positions, config.n_embd));
  h = register_module("h", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.n_layer; ++i) {
    h->push_back(Block(config, i));
  }
  ln_f = register_module(
      "ln_f", torch::nn::LayerNorm(torch::nn::LayerNormOptions({config.n_embd}).eps(config.layer_norm_epsilon)));
}

torch::Tensor GPT2ModelImpl::forward(const torch::Tensor& input_ids, bool checkpoint_blocks) {
  TORCH_CHECK(input_ids.dim() == 2, "GPT-2: input_ids must be (batch, time), got ", input_ids.sizes());
  const int64_t time = input_ids.size(1);
  TORCH_CHECK(
      time <= n_positions_, "GPT-2: sequence length ", time, " exceeds n_positions ", n_positions_);
  auto positions = torch::arange(time, input_ids.options().dtype(torch::kLong));
  auto x = wte->forward(input_ids) + wpe->forward(positions);
  const bool recompute = checkpoint_blocks && is_training() && torch::GradMode::is_enabled();
  for (const auto& module : *h) {
    auto block = std::dynamic_pointer_cast<BlockImpl>(module);
    if (recompute) {
      x = checkpoint([block](const torch::Tensor& in) { return block->forward(in); }, x, block->parameters());
    } else {
      x = block->forward(x);
    }
  }
  return ln_f->forward(x);
}

GPT2LMHeadModelImpl::GPT2LMHeadModelImpl(const GPT2Config& config) : config_(config) {
  transformer = register_module("transformer", GPT2Model(config));
  if (!config.tie_word_embeddings) {
    lm_head = register_module(
        "lm_head", torch::nn::Linear(torch::nn::LinearOptions(config.n_embd, config.vocab_size).bias(false)));
  }
  init_weights();
}

torch::Tensor GPT2LMHeadModelImpl::output_embedding() const {
  return lm_head ? lm_head->weight : transformer->wte->weight;
}

torch::Tensor GPT2LMHeadModelImpl::forward(const torch::Tensor& input_ids) {
  auto hidden = transformer->forward(input_ids, activation_checkpointing_);
  return torch::matmul(hidden, output_embedding().t());
}

torch::Tensor GPT2LMHeadModelImpl::loss(const torch::Tensor& input_ids, const torch::Tensor& targets) {
  auto logits = forward(input_ids);
  return torch::nn::functional::cross_entropy(
      logits.reshape({-1, logits.size(-1)}).to(torch::kFloat), targets.reshape({-1}));
}

torch::Tensor GPT2LMHeadModelImpl::lm_loss(const torch::Tensor& input_ids) {
  auto logits = forward(input_ids);
  using torch::indexing::Slice;
  auto shifted = logits.index({Slice(), Slice(torch::indexing::None, -1)});
  auto labels = input_ids.index({Slice(), Slice(1, torch::indexing::None)});
  return torch::nn::functional::cross_entropy(
      shifted.reshape({-1, shifted.size(-1)}).to(torch::kFloat), labels.reshape({-1}));
}

void GPT2LMHeadModelImpl::init_weights() {
  torch::NoGradGuard no_grad;
  const double residual_std = 0.02 / std::sqrt(2.0 * static_cast<double>(config_.n_layer));
  for (auto& item : named_parameters()) {
    const std::string& name = item.key();
    auto& p = item.value();
    const bool is_ln = name.find(".ln_") != std::string::npos;
    if (name.size() >= 5 && name.compare(name.size() - 5, 5, ".bias") == 0) {
      p.zero_();
    } else if (is_ln) {
      p.fill_(1.0);
    } else if (name.find("c_proj.weight") != std::string::npos) {
      p.normal_(0.0, residual_std);
    } else {
      p.normal_(0.0, 0.02);
    }
  }
}

} // namespace flora::gpt2
