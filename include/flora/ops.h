#pragma once

// C++ entry points of flora's dispatcher operators (namespace `flora` in the
// PyTorch dispatcher; also reachable as torch.ops.flora.* from Python once
// libflora is loaded). Each schema is defined once (src/ops.cpp); the CPU
// kernels live in src/cpu/, the CUDA kernels in cuda/. The kernels know
// nothing about optimizers.
//
// Common rules. Parameter-typed tensors (parameters, gradients, Philox
// outputs, quantization inputs) are float32, float16 or bfloat16, with float32
// arithmetic; state tensors are float32. All tensor arguments of one call are
// on one device, except the quantization code map, which is always a CPU
// tensor. Any strides are accepted (channels_last weights, transposed views):
// kernels that need dense memory work on a contiguous copy and write it back.
// A bad argument raises c10::Error naming the argument and the value found.
// No operator waits for the device.

#include <flora/export.h>

#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace flora::ops {

/// Fills the 2-d tensor `out` (float32, float16 or bfloat16) with
/// scale * N(0, 1) draws of the Philox stream of `seed` (layout in
/// projection.h). Math in float32.
FLORA_API torch::Tensor& philox_normal_(torch::Tensor& out, int64_t seed, double scale);

/// Fills the 2-d int32 tensor `out` with the raw 32-bit Philox draws behind
/// philox_normal_ (element (i, j) is lane j % 4 of the block of (i, j / 4)),
/// bit pattern stored in int32.
FLORA_API torch::Tensor& philox_bits_(torch::Tensor& out, int64_t seed);

/// Adafactor's factored second moment for a 2-d gradient. With u = grad^2 + eps1 it updates
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
/// float32). `update` (float32) is overwritten: on return it holds the step
/// that was subtracted, update / max(1, RMS(update) / clip_threshold) * lr_t,
/// on every device. Returns rms as a 0-d float32 tensor on the parameter's
/// device (no host synchronisation).
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
/// followed by apply_update_(params[i], update, lrs[i], ...). All params share
/// one dtype and one device. On CUDA it is three multi-tensor launches for all
/// of them, whatever their number (moments, per-tensor step sizes, parameter
/// writes): the path of biases and norm weights. No update tensor is
/// materialised. Returns RMS(param_i) before the update (0-d each).
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

/// Blockwise 8-bit quantization of `x` (float32, float16 or bfloat16; see
/// flora/quantization.h for the scheme) into existing storage: `codes`
/// (uint8, x.numel() elements, in x's row-major order) and `absmax` (float32,
/// one per block of `block_size` elements). `code` is the 256-entry float32
/// code map (flora::dynamic_code_map()), a CPU tensor on every device: the
/// CUDA kernel takes its values as a launch argument, so quantizing never
/// copies the map to the device and can be captured in a CUDA graph.
FLORA_API void quantize_blockwise_(
    const torch::Tensor& x,
    torch::Tensor& codes,
    torch::Tensor& absmax,
    const torch::Tensor& code,
    int64_t block_size);

/// code[codes] * absmax[block]: float32, the shape of `codes`. `code` is a
/// CPU tensor, as for quantize_blockwise_.
FLORA_API torch::Tensor dequantize_blockwise(
    const torch::Tensor& codes,
    const torch::Tensor& absmax,
    const torch::Tensor& code,
    int64_t block_size);

} // namespace flora::ops
