#pragma once

// GPT-2 configurations by name, for training a model from scratch
// (--init-config). The model starts with GPT-2's initialisation
// (GPT2LMHeadModelImpl::init_weights).

#include "config.h"

#include <cstdint>
#include <string>

namespace flora::gpt2 {

/// "tiny": the shipped tiny model's config.json (assets/tiny-gpt2: 2 layers,
/// 4 heads, n_embd 64, n_positions 64, vocab 512); "gpt2": Hugging Face's
/// gpt2 (124 M parameters: 12 layers, 12 heads, n_embd 768, n_positions
/// 1024, vocab 50257); "gpt2-medium" (355 M: 24 layers, 16 heads, n_embd
/// 1024, n_positions 1024, vocab 50257). Throws c10::Error for other names.
GPT2Config named_config(const std::string& name);

/// GPT-2 (gelu_new, LayerNorm epsilon 1e-5, MLP 4 n_embd wide, tied
/// embeddings) with the given sizes; validated.
GPT2Config sized_config(int64_t n_layer, int64_t n_embd, int64_t n_head, int64_t n_positions, int64_t vocab_size);

} // namespace flora::gpt2
