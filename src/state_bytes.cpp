#include <flora/optimizer.h>
#include <flora/state_bytes.h>

#include <torch/optim.h>

namespace flora {
namespace {

int64_t bytes(const torch::Tensor& t) {
  return t.defined() ? static_cast<int64_t>(t.nbytes()) : 0;
}

int64_t state_bytes(const torch::optim::OptimizerParamState& s) {
  using namespace torch::optim;
  if (const auto* f = dynamic_cast<const FloraParamState*>(&s)) {
    return f->nbytes();
  }
  if (const auto* a = dynamic_cast<const AdamParamState*>(&s)) {
    return bytes(a->exp_avg()) + bytes(a->exp_avg_sq()) + bytes(a->max_exp_avg_sq());
  }
  if (const auto* a = dynamic_cast<const AdamWParamState*>(&s)) {
    return bytes(a->exp_avg()) + bytes(a->exp_avg_sq()) + bytes(a->max_exp_avg_sq());
  }
  if (const auto* g = dynamic_cast<const SGDParamState*>(&s)) {
    return bytes(g->momentum_buffer());
  }
  if (const auto* r = dynamic_cast<const RMSpropParamState*>(&s)) {
    return bytes(r->square_avg()) + bytes(r->momentum_buffer()) + bytes(r->grad_avg());
  }
  if (const auto* a = dynamic_cast<const AdagradParamState*>(&s)) {
    return bytes(a->sum());
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

} // namespace flora
