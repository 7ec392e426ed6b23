#pragma once

// C++ entry points of flora's dispatcher operators (namespace `flora` in the
// PyTorch dispatcher; also reachable as torch.ops.flora.* from Python once
// libflora is loaded). Each schema is defined once (src/ops.cpp); the CPU
// kernels live in src/cpu/, the CUDA kernels in cuda/. The kernels know
// nothing about optimizers.

#include <flora/export.h>

#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace flora::ops {

/// Fills the 2-d floating tensor `out` with scale * N(0, 1) draws of the
/// Philox stream of `seed` (layout in projection.h). Math in float32.
FLORA_API torch::Tensor& philox_normal_(torch::Tensor& out, int64_t seed, double scale);

/// Fills the 2-d int32 tensor `out` with the raw 32-bit Philox draws behind
/// philox_normal_ (element (i, j) is lane j % 4 of the block of (i, j / 4)),
/// bit pattern stored in int32.
FLORA_API torch::Tensor& philox_bits_(torch::Tensor& out, int64_t seed);

/// Adafactor's factored second moment for a 2-d gradient (any floating
/// dtype; math in float32). With u = grad^2 + eps1 it updates
///   row = beta2 row + (1 - beta2) mean(u, -1),  col = beta2 col + (1 - beta2) mean(u, -2)
/// in place and returns the float32 normalised update
///   rsqrt(row / mean(row))[:, None] * rsqrt(col)[None, :] * grad.
FLORA_API torch::Tensor second_moment_factored_(
    const torch::Tensor& grad,
    torch::Tensor& exp_avg_sq_row,
    torch::Tensor& exp_avg_sq_col,
    double beta2,
    double eps1);

/// Adam-like full second moment: v = beta2 v + (1 - beta2)(grad^2 + eps1) in
/// place; returns the float32 update rsqrt(v) * grad.
FLORA_API torch::Tensor second_moment_full_(
    const torch::Tensor& grad,
    torch::Tensor& exp_avg_sq,
    double beta2,
    double eps1);

/// The end of a step for one parameter, in place:
///   rms    = RMS(param)                         (before the update; returned)
///   lr_t   = lr * (scale_parameter ? max(eps2, rms) : 1)
///   update = update / max(1, RMS(update) / clip_threshold) * lr_t
///   param -= weight_decay * lr_t * param;  param -= update
/// `param` may be float16/bfloat16 (read and written in its dtype, math in
/// float32); `update` is float32 and is overwritten. Returns rms as a 0-d
/// float32 tensor on the parameter's device (no host synchronisation).
FLORA_API torch::Tensor apply_update_(
    torch::Tensor& param,
    torch::Tensor& update,
    double lr,
    double eps2,
    bool scale_parameter,
    double clip_threshold,
    double weight_decay);

/// The whole step for a list of parameters that use the full (not factored)
/// second moment and, if exp_avgs is not empty, an uncompressed momentum:
/// for each i, with u = rsqrt(v_i') * grad_i where
/// v_i' = beta2s[i] v_i + (1 - beta2s[i]) (grad_i^2 + eps1),
///   update = exp_avgs empty ? u : (m_i' = (1 - beta1) u + beta1 m_i)
/// followed by apply_update_(params[i], update, lrs[i], ...). On CUDA it is two
/// multi-tensor launches for all of them, whatever their number: the path of
/// biases and norm weights. Returns RMS(param_i) before the update (0-d each).
FLORA_API std::vector<torch::Tensor> full_moment_step_(
    torch::TensorList params,
    torch::TensorList grads,
    torch::TensorList exp_avg_sqs,
    torch::TensorList exp_avgs,
    c10::ArrayRef<double> beta2s,
    c10::ArrayRef<double> lrs,
    double eps1,
    double eps2,
    double beta1,
    bool scale_parameter,
    double clip_threshold,
    double weight_decay);

} // namespace flora::ops
