#pragma once

// The scalar arithmetic of a Flora step, shared by the host and the CPU and
// CUDA kernels (which compute it on the device from device-side step
// counters when the step is capturable): beta2_t, the step size, and the
// parameter write's coefficients from the sums of squares. All in double.

#include "kernels/host_device.h"

#include <cmath>
#include <cstdint>

namespace flora::detail {

/// The hyper-parameters a fused step needs (one param group's options).
struct StepHyper {
  double lr = 0; // ignored with relative_step
  double eps1 = 0;
  double eps2 = 0;
  double beta1 = 0; // 0: no momentum
  double decay_rate = -0.8;
  double clip_threshold = 1;
  double weight_decay = 0;
  bool scale_parameter = true;
  bool relative_step = false;
  bool warmup_init = false;
};

/// beta2_t = 1 - t^decay_rate.
FLORA_HOST_DEVICE double beta2_at(int64_t step, double decay_rate) {
  return 1.0 - pow(static_cast<double>(step), decay_rate);
}

/// lr, or the relative step min(warmup_init ? 1e-6 t : 1e-2, 1 / sqrt(t)),
/// before the parameter-RMS scale.
FLORA_HOST_DEVICE double base_step_size(int64_t step, double lr, const StepHyper& h) {
  if (!h.relative_step) {
    return lr;
  }
  const double t = static_cast<double>(step);
  const double ceiling = h.warmup_init ? 1e-6 * t : 1e-2;
  const double decay = 1.0 / sqrt(t);
  return ceiling < decay ? ceiling : decay;
}

/// The parameter write p <- p * keep - update * scale, and RMS(p) before it.
struct WriteCoefficients {
  double keep;
  double scale;
  double param_rms;
};

/// From sum(p^2) and sum(update^2) over `numel` elements:
///   lr_t  = base * (scale_parameter ? max(eps2, RMS(p)) : 1)
///   scale = lr_t / max(1, RMS(update) / clip_threshold),  keep = 1 - weight_decay lr_t.
FLORA_HOST_DEVICE WriteCoefficients write_coefficients(
    double param_sq, double update_sq, int64_t numel, double base, const StepHyper& h) {
  const double n = static_cast<double>(numel);
  const double param_rms = sqrt(param_sq / n);
  const double update_rms = sqrt(update_sq / n);
  const double lr_t = h.scale_parameter ? (param_rms > h.eps2 ? param_rms : h.eps2) * base : base;
  const double ratio = update_rms / h.clip_threshold;
  const double denominator = ratio > 1.0 ? ratio : 1.0;
  return {1.0 - h.weight_decay * lr_t, lr_t / denominator, param_rms};
}

} // namespace flora::detail
