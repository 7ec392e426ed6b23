#include "init_config.h"

#include "cli.h"

#include <c10/util/Exception.h>

namespace flora::gpt2 {

GPT2Config sized_config(int64_t n_layer, int64_t n_embd, int64_t n_head, int64_t n_positions, int64_t vocab_size) {
  GPT2Config c;
  c.n_layer = n_layer;
  c.n_embd = n_embd;
  c.n_head = n_head;
  c.n_positions = n_positions;
  c.vocab_size = vocab_size;
  c.validate("GPT-2 configuration");
  return c;
}

GPT2Config named_config(const std::string& name) {
  if (name == "tiny") {
    return load_config(shipped_path("assets/tiny-gpt2/config.json"));
  }
  if (name == "gpt2") {
    return sized_config(12, 768, 12, 1024, 50257);
  }
  if (name == "gpt2-medium") {
    return sized_config(24, 1024, 16, 1024, 50257);
  }
  TORCH_CHECK(false, "unknown GPT-2 configuration '", name, "' (expected tiny, gpt2 or gpt2-medium)");
}

} // namespace flora::gpt2
