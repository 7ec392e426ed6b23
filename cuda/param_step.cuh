#pragma once

// The end of a step for one parameter, shared by flora::apply_update_ and
// flora::full_moment_step_: from the sums of param^2 and update^2 (a
// parameter's partial sums, added in a fixed order by one block) to the step
// size, the clip divisor and the decay factor; then, per element, the
// parameter write. The order of operations is the CPU kernel's
// (src/cpu/apply_update_kernel.cpp), and the values the CPU computes in
// double (eps2 * lr, the decay of a floored step) are computed in double on
// the host here too.

#include "common.cuh"

#include <cmath>

namespace flora::cuda {

/// Per-parameter values known on the host.
struct StepSizes {
  float lr; // lr_t = RMS(param) * lr when the RMS scale applies
  float floor_lr; // lr_t otherwise: eps2 * lr (scale_parameter) or lr
  float floor_decay; // -weight_decay * floor_lr, rounded from double
  float sqrt_numel; // RMS = sqrt(sum) / sqrt_numel
};

/// Per-group values known on the host.
struct StepRule {
  double eps2;
  bool scale_parameter;
  float clip_threshold;
  float neg_weight_decay;
  bool decay; // weight_decay != 0
};

inline StepSizes step_sizes(int64_t numel, double lr, double eps2, bool scale_parameter, double weight_decay) {
  const double floor_lr = scale_parameter ? eps2 * lr : lr;
  return {static_cast<float>(lr), static_cast<float>(floor_lr), static_cast<float>(-weight_decay * floor_lr),
          static_cast<float>(std::sqrt(static_cast<double>(numel)))};
}

inline StepRule step_rule(double eps2, bool scale_parameter, double clip_threshold, double weight_decay) {
  return {eps2, scale_parameter, static_cast<float>(clip_threshold), static_cast<float>(-weight_decay),
          weight_decay != 0.0};
}

/// What a parameter's elements need: lr_t, the clip divisor and the decay.
struct ParamStep {
  float lr_t;
  float denom;
  float decay;
  float rms;
};

__device__ __forceinline__ ParamStep param_step(float sum_p2, float sum_u2, const StepSizes& sizes, const StepRule& rule) {
  ParamStep s;
  s.rms = __fdiv_rn(sqrtf(sum_p2), sizes.sqrt_numel);
  const float rms_u = __fdiv_rn(sqrtf(sum_u2), sizes.sqrt_numel);
  // flora-opt: max(eps2, RMS) * lr, the RMS only when strictly larger.
  if (rule.scale_parameter && static_cast<double>(s.rms) > rule.eps2) {
    s.lr_t = __fmul_rn(s.rms, sizes.lr);
    s.decay = __fmul_rn(s.lr_t, rule.neg_weight_decay);
  } else {
    s.lr_t = sizes.floor_lr;
    s.decay = sizes.floor_decay;
  }
  s.denom = fmaxf(__fdiv_rn(rms_u, rule.clip_threshold), 1.f);
  return s;
}

/// update / denom * lr_t: the amount subtracted from the parameter.
__device__ __forceinline__ float applied_update(float update, const ParamStep& s) {
  return __fmul_rn(__fdiv_rn(update, s.denom), s.lr_t);
}

/// p + decay p - applied.
__device__ __forceinline__ float updated_param(float p, float applied, const ParamStep& s, const StepRule& rule) {
  if (rule.decay) {
    p = fmaf(s.decay, p, p);
  }
  return __fsub_rn(p, applied);
}

/// One block: adds `count` (sum p^2, sum u^2) partial pairs in a fixed order
/// and derives the parameter's step; valid in thread 0.
__device__ __forceinline__ ParamStep reduce_param_step(
    const float* __restrict__ partial, int64_t count, const StepSizes& sizes, const StepRule& rule) {
  __shared__ float scratch[kWarps];
  float sp = 0.f, su = 0.f;
  block_stride(0, count, [&](int64_t c) {
    sp += partial[2 * c];
    su += partial[2 * c + 1];
  });
  sp = block_sum(sp, scratch);
  su = block_sum(su, scratch);
  return param_step(sp, su, sizes, rule);
}

} // namespace flora::cuda
