#pragma once

// Argument checks that the CPU and the CUDA kernel of an operator share, so
// that both reject the same inputs with the same messages.

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace flora::detail {

inline void check_code_map(const at::Tensor& code, const at::Tensor& like, const char* op) {
  TORCH_CHECK(
      code.numel() == 256 && code.scalar_type() == at::kFloat && code.is_contiguous(), op,
      ": code must be a contiguous float32 tensor of 256 entries, got ", code.sizes(), " ", code.scalar_type());
  TORCH_CHECK(code.device() == like.device(), op, ": code is on ", code.device(), ", the data on ", like.device());
}

/// Checks quantize_blockwise_'s arguments; returns the number of blocks.
inline int64_t check_quantize_args(
    const at::Tensor& x, const at::Tensor& codes, const at::Tensor& absmax, const at::Tensor& code,
    int64_t block_size) {
  TORCH_CHECK(block_size > 0, "quantize_blockwise_: block_size must be positive, got ", block_size);
  check_code_map(code, x, "quantize_blockwise_");
  const int64_t n = x.numel();
  const int64_t blocks = (n + block_size - 1) / block_size;
  TORCH_CHECK(
      codes.scalar_type() == at::kByte && codes.numel() == n && codes.is_contiguous(),
      "quantize_blockwise_: codes must be a contiguous uint8 tensor of ", n, " elements");
  TORCH_CHECK(
      absmax.scalar_type() == at::kFloat && absmax.numel() == blocks && absmax.is_contiguous(),
      "quantize_blockwise_: absmax must be a contiguous float32 tensor of ", blocks, " elements");
  return blocks;
}

inline void check_dequantize_args(
    const at::Tensor& codes, const at::Tensor& absmax, const at::Tensor& code, int64_t block_size) {
  TORCH_CHECK(block_size > 0, "dequantize_blockwise: block_size must be positive, got ", block_size);
  TORCH_CHECK(codes.scalar_type() == at::kByte, "dequantize_blockwise: codes must be uint8, got ", codes.scalar_type());
  check_code_map(code, codes, "dequantize_blockwise");
  const int64_t blocks = (codes.numel() + block_size - 1) / block_size;
  TORCH_CHECK(
      absmax.scalar_type() == at::kFloat && absmax.numel() == blocks,
      "dequantize_blockwise: absmax must be float32 with ", blocks, " elements, got ", absmax.numel());
}

inline void check_full_moment_lists(
    at::TensorList params, at::TensorList grads, at::TensorList exp_avg_sqs, at::TensorList exp_avgs,
    c10::ArrayRef<double> beta2s, c10::ArrayRef<double> lrs) {
  const size_t n = params.size();
  TORCH_CHECK(
      grads.size() == n && exp_avg_sqs.size() == n && beta2s.size() == n && lrs.size() == n &&
          (exp_avgs.empty() || exp_avgs.size() == n),
      "full_moment_step_: list lengths differ (", n, " params, ", grads.size(), " grads, ", exp_avg_sqs.size(),
      " exp_avg_sqs, ", exp_avgs.size(), " exp_avgs, ", beta2s.size(), " beta2s, ", lrs.size(), " lrs)");
}

} // namespace flora::detail
