// CPU kernel of flora::apply_update_: RMS clipping, the (relative, scaled)
// step size, decoupled weight decay and the parameter write. The sequence of
// ATen operations is flora-opt 0.0.3's, including where it switches between
// a tensor-valued and a float-valued step size, so that results agree with it
// to the last bit. Reading 0-d CPU tensors here costs nothing: there is no
// device to wait for. `update` ends holding the step that was subtracted, as
// ops.h promises (the CUDA kernel writes it too).

#include "kernels/checks.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

namespace flora::cpu {
namespace {

at::Tensor rms(const at::Tensor& t) {
  return at::linalg_vector_norm(t, 2).div(std::sqrt(static_cast<double>(t.numel())));
}

at::Tensor apply_update_cpu(
    at::Tensor& param, at::Tensor& update, double lr, double eps2, bool scale_parameter,
    double clip_threshold, double weight_decay) {
  detail::check_apply_update_args(param, update);
  const bool low_precision = param.scalar_type() != at::kFloat;
  at::Tensor p = low_precision ? param.to(at::kFloat) : param;

  const at::Tensor param_rms = rms(p);
  update.div_((rms(update) / clip_threshold).clamp_(1.0));

  // flora-opt: lr_t = max(eps2, RMS) * lr, where Python's max returns the
  // tensor RMS only when it is strictly larger (the product is then a float32
  // tensor) and the float eps2 otherwise (a double product).
  // A float32 tensor takes a double scalar only within float32's range
  // (ATen throws a std::runtime_error past it): options far out of range
  // (a fuzzed checkpoint's weight_decay of 1e30) get flora's error instead.
  auto check_scalar = [](double value, const char* what) {
    TORCH_CHECK(
        !(std::isfinite(value) && std::fabs(value) > std::numeric_limits<float>::max()), "Flora: ", what, " is ",
        value, ", beyond float32's range: the options' lr, eps2 or weight_decay are too large");
  };
  double decay_alpha = 0.0;
  if (scale_parameter && param_rms.item<float>() > eps2) {
    const at::Tensor lr_t = param_rms * lr;
    update.mul_(lr_t);
    decay_alpha = (lr_t * -weight_decay).item<double>();
  } else {
    const double lr_t = (scale_parameter ? eps2 : 1.0) * lr;
    check_scalar(lr_t, "the step size lr_t");
    update.mul_(lr_t);
    decay_alpha = -weight_decay * lr_t;
  }
  if (weight_decay != 0) {
    check_scalar(decay_alpha, "the decay factor -weight_decay * lr_t");
    p.add_(p, decay_alpha);
  }
  p.sub_(update);
  if (low_precision) {
    param.copy_(p);
  }
  return param_rms;
}

} // namespace

TORCH_LIBRARY_IMPL(flora, CPU, m) {
  m.impl("apply_update_", &apply_update_cpu);
}

} // namespace flora::cpu
