#pragma once

// The dispatcher operators of the fused step (ProjectionMode::philox), the
// optimizer's building blocks: internal to flora (their schemas may change
// with the step), defined once in fused_ops.cpp, with CPU kernels in
// src/cpu/fused_step_kernel.cpp and CUDA kernels in cuda/.
//
// A step over one group of parameters (same options, device and dtype; for
// the compressed ones also the same shape) is:
//   1. gradient_sums_: per parameter sum p^2, whether the gradient has a
//      non-finite element, and (factored) the row and column sums of g^2.
//      Nothing else is written, so the host can refuse a non-finite
//      gradient before anything changes.
//   2. factored_step_ / full_step_: the rest of the step for parameters
//      without a compressed momentum, in two passes over each tensor (the
//      update's RMS, then the write), no update tensor materialised;
//   or, for compressed momentum: factored_normalize_ writes the normalised
//   gradients of a shape group into one (G, rows, cols) buffer, the
//   optimizer mixes in the momentum with batched GEMMs (bmm / baddbmm on
//   projections from philox_normal_batch_, momenta from gather_moments_ and
//   back through scatter_moments_), and apply_updates_ writes the
//   parameters.
//
// Per-parameter scalars: `steps` are the step counts of this step (already
// advanced), or, when `counters` is not empty (capturable steps), the counts
// are read from counters[i] = int64 (step, seed, seed at the start of this
// step) on the parameter's device, advanced by advance_counters_. The
// learning rate is hyper[0], or *lr_tensor (float64, 1 element) when given.
// `hyper` = (lr, eps1, eps2, beta1, decay_rate, clip_threshold,
// weight_decay, scale_parameter, relative_step, warmup_init), see
// step_math.h. Quantized moments are uint8 codes with one float32 absmax
// per `block_size` elements and `code_map` the 256-entry dynamic map (a CPU
// tensor on every device). `rounding_keys`, when not empty, has one key per
// parameter (kernels/stochastic_rounding.h's rounding_key) and bfloat16
// parameters are then written with stochastic rounding (float32 ones need
// no rounding; float16 ones are refused).

#include "kernels/step_math.h"

#include <flora/export.h>

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <optional>
#include <vector>

namespace flora::ops {

FLORA_API std::vector<double> hyper_list(const detail::StepHyper& h);
FLORA_API detail::StepHyper hyper_from(c10::ArrayRef<double> list);

FLORA_API void gradient_sums_(at::TensorList params, at::TensorList grads, bool factored, at::Tensor& flags, at::Tensor& sums);

FLORA_API void factored_step_(
    at::TensorList params,
    at::TensorList grads,
    at::TensorList exp_avg_sq_rows,
    at::TensorList exp_avg_sq_cols,
    at::TensorList exp_avgs,
    at::TensorList exp_avg_absmaxs,
    at::TensorList rms,
    at::Tensor& sums,
    c10::ArrayRef<int64_t> steps,
    at::TensorList counters,
    const std::optional<at::Tensor>& lr_tensor,
    const detail::StepHyper& hyper,
    int64_t block_size,
    const std::optional<at::Tensor>& code_map,
    c10::ArrayRef<int64_t> rounding_keys = {});

FLORA_API void full_step_(
    at::TensorList params,
    at::TensorList grads,
    at::TensorList exp_avg_sqs,
    at::TensorList exp_avg_sq_absmaxs,
    at::TensorList exp_avgs,
    at::TensorList exp_avg_absmaxs,
    at::TensorList rms,
    at::Tensor& sums,
    c10::ArrayRef<int64_t> steps,
    at::TensorList counters,
    const std::optional<at::Tensor>& lr_tensor,
    const detail::StepHyper& hyper,
    int64_t block_size,
    const std::optional<at::Tensor>& code_map,
    c10::ArrayRef<int64_t> rounding_keys = {});

/// out[i] = (r c) g_i with r = rsqrt(row / mean(row)), c = rsqrt(col) after
/// the rows' and columns' EMAs are updated; out is (G, rows, cols) float32.
FLORA_API void factored_normalize_(
    at::TensorList grads,
    at::TensorList exp_avg_sq_rows,
    at::TensorList exp_avg_sq_cols,
    at::Tensor& sums,
    c10::ArrayRef<int64_t> steps,
    at::TensorList counters,
    double eps1,
    double decay_rate,
    at::Tensor& out);

/// Writes params[i] from the update updates[i] ((G, rows, cols) float32).
FLORA_API void apply_updates_(
    at::TensorList params,
    const at::Tensor& updates,
    at::TensorList rms,
    at::Tensor& sums,
    c10::ArrayRef<int64_t> steps,
    at::TensorList counters,
    const std::optional<at::Tensor>& lr_tensor,
    const detail::StepHyper& hyper,
    c10::ArrayRef<int64_t> rounding_keys = {});

/// How a projection's seed selects its matrix (projection.h): as it is, or
/// the left / right half of split_seed.
enum class SeedSide : int64_t { direct = 0, left = 1, right = 2 };

/// out[g] (G, rows, cols) = scale * N(0, 1) of the Philox stream of
/// seeds[g] (or of counters[g][counter_slot] when counters are given),
/// after `side`'s split.
FLORA_API void philox_normal_batch_(
    at::Tensor& out,
    c10::ArrayRef<int64_t> seeds,
    at::TensorList counters,
    int64_t counter_slot,
    SeedSide side,
    double scale);

/// out (G, ...) float32 = the moments (float32, or uint8 codes dequantized).
FLORA_API void gather_moments_(
    at::TensorList moments,
    at::TensorList absmaxes,
    int64_t block_size,
    const std::optional<at::Tensor>& code_map,
    at::Tensor& out);
/// The moments = src[i], or, with `mix`, beta src[i] + (1 - beta) mix[i]
/// (quantized when they are uint8 codes). The mixing in here, rather than in
/// ATen ops on the batch, keeps the step free of allocations once it writes.
FLORA_API void scatter_moments_(
    const at::Tensor& src,
    at::TensorList moments,
    at::TensorList absmaxes,
    int64_t block_size,
    const std::optional<at::Tensor>& code_map,
    const std::optional<at::Tensor>& mix = std::nullopt,
    double beta = 1.0);

/// Capturable steps: step += 1; previous seed = seed; on every kappa-th step
/// seed = next_seed(seed) (philox).
FLORA_API void advance_counters_(at::TensorList counters, int64_t kappa);
/// transforms[g] ((G, r, r)) becomes the identity unless parameter g
/// resampled in this step (its step count a multiple of kappa).
FLORA_API void keep_unless_resampled_(at::Tensor& transforms, at::TensorList counters, int64_t kappa);

} // namespace flora::ops
