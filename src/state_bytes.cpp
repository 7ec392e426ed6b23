#include "param_state.h"

#include <flora/optimizer.h>
#include <flora/quantization.h>
#include <flora/state_bytes.h>

#include <torch/optim.h>

namespace flora {
namespace {

using detail::tensor_bytes;

int64_t state_bytes(const torch::optim::OptimizerParamState& s) {
  using namespace torch::optim;
  if (const auto* f = dynamic_cast<const FloraParamState*>(&s)) {
    return f->nbytes();
  }
  if (const auto* a = dynamic_cast<const AdamParamState*>(&s)) {
    return tensor_bytes(a->exp_avg()) + tensor_bytes(a->exp_avg_sq()) + tensor_bytes(a->max_exp_avg_sq());
  }
  if (const auto* a = dynamic_cast<const AdamWParamState*>(&s)) {
    return tensor_bytes(a->exp_avg()) + tensor_bytes(a->exp_avg_sq()) + tensor_bytes(a->max_exp_avg_sq());
  }
  if (const auto* g = dynamic_cast<const SGDParamState*>(&s)) {
    return tensor_bytes(g->momentum_buffer());
  }
  if (const auto* r = dynamic_cast<const RMSpropParamState*>(&s)) {
    return tensor_bytes(r->square_avg()) + tensor_bytes(r->momentum_buffer()) + tensor_bytes(r->grad_avg());
  }
  if (const auto* a = dynamic_cast<const AdagradParamState*>(&s)) {
    return tensor_bytes(a->sum());
  }
  TORCH_CHECK(false, "optimizer_state_bytes: unknown optimizer state type ", typeid(s).name());
}

} // namespace

int64_t optimizer_state_bytes(const torch::optim::Optimizer& optimizer) {
  int64_t total = 0;
  for (const auto& entry : optimizer.state()) {
    total += state_bytes(*entry.second);
  }
  return total;
}

namespace {

// Bytes of one moment of `numel` elements: float32, or 8-bit codes plus one
// float32 absmax per block.
int64_t moment_bytes(int64_t numel, const ParamLayout& layout, const FloraOptions& options) {
  if (!layout.quantized) {
    return 4 * numel;
  }
  return numel + 4 * quantization_blocks(numel, options.quantization_block_size());
}

} // namespace

int64_t estimate_state_bytes(const std::vector<std::vector<int64_t>>& shapes, const FloraOptions& options) {
  int64_t total = 0;
  for (const auto& shape : shapes) {
    const int64_t numel = c10::multiply_integers(shape);
    if (numel == 0) {
      continue; // never stepped
    }
    const auto layout = ParamLayout::of(shape, options);
    total += 4; // rms
    if (layout.momentum) {
      total += moment_bytes(c10::multiply_integers(layout.momentum_shape(shape, options)), layout, options);
    }
    total += layout.factored ? 4 * (shape[0] + shape[1]) : moment_bytes(numel, layout, options);
  }
  return total;
}

int64_t estimate_adam_state_bytes(const std::vector<std::vector<int64_t>>& shapes) {
  int64_t total = 0;
  for (const auto& shape : shapes) {
    total += 2 * 4 * c10::multiply_integers(shape);
  }
  return total;
}

} // namespace flora
