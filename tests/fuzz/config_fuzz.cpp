// Fuzz target: the GPT-2 example's config.json reader (parse_config) on
// arbitrary text. Properties:
//   - parsing succeeds or throws c10::Error naming the field;
//   - a config that parsed is usable: its derived sizes (head_dim,
//     inner_dim, what the model is built from) are defined, and it writes
//     (config_to_json) and reads back to the same values.

#include "fuzz_target.h"

#include "config.h"

#include <c10/util/Exception.h>

#include <string>

FLORA_FUZZ_TARGET(config) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  flora::gpt2::GPT2Config c;
  try {
    c = flora::gpt2::parse_config(text, "config.json");
  } catch (const c10::Error&) {
    return 0;
  }
  FLORA_FUZZ_CHECK(c.head_dim() > 0 && c.inner_dim() > 0, "a parsed config has non-positive sizes");
  // A valid config writes and reads back (no exception of any kind).
  const auto again = flora::gpt2::parse_config(flora::gpt2::config_to_json(c), "config.json (written)");
  FLORA_FUZZ_CHECK(
      again.vocab_size == c.vocab_size && again.n_positions == c.n_positions && again.n_embd == c.n_embd &&
          again.n_layer == c.n_layer && again.n_head == c.n_head && again.inner_dim() == c.inner_dim() &&
          again.layer_norm_epsilon == c.layer_norm_epsilon && again.activation_function == c.activation_function &&
          again.tie_word_embeddings == c.tie_word_embeddings && again.scale_attn_weights == c.scale_attn_weights &&
          again.scale_attn_by_inverse_layer_idx == c.scale_attn_by_inverse_layer_idx,
      "a config reads back different");
  return 0;
}
