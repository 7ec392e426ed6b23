#pragma once

// The argument checks of every flora operator, one function per operator,
// called first by both its CPU and its CUDA kernel (as ATen's ForeachUtils.h
// serves the foreach kernels), so that the two reject the same inputs with the
// same messages. A message reads "<op>: <argument> <what is wrong>, <the value
// found>", so it names the argument and what it was.
//
// Contiguity is never required: kernels that need contiguous memory work on
// a contiguous copy and write it back (kernels/contiguous.h).

#include "kernels/ceil_div.h"
#include "kernels/dtypes.h"

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <string>

namespace flora::detail {

// ------------------------------------------------------------ building blocks

inline void check_parameter_dtype(const char* op, const std::string& name, const at::Tensor& t) {
  TORCH_CHECK(
      is_parameter_dtype(t.scalar_type()), op, ": ", name, " has dtype ", t.scalar_type(), ", expected one of ",
      parameter_dtype_names());
}

inline void check_dtype(const char* op, const std::string& name, const at::Tensor& t, at::ScalarType expected) {
  TORCH_CHECK(t.scalar_type() == expected, op, ": ", name, " has dtype ", t.scalar_type(), ", expected ", expected);
}

inline void check_shape(const char* op, const std::string& name, const at::Tensor& t, at::IntArrayRef expected) {
  TORCH_CHECK(t.sizes() == expected, op, ": ", name, " has shape ", t.sizes(), ", expected ", expected);
}

inline void check_numel(const char* op, const std::string& name, const at::Tensor& t, int64_t expected) {
  TORCH_CHECK(t.numel() == expected, op, ": ", name, " has ", t.numel(), " elements, expected ", expected);
}

/// `name` must be on the device of `anchor` (the operator's first tensor).
inline void check_device(
    const char* op, const std::string& name, const at::Tensor& t, const std::string& anchor_name,
    const at::Tensor& anchor) {
  TORCH_CHECK(
      t.device() == anchor.device(), op, ": ", name, " is on ", t.device(), ", expected ", anchor.device(), " (the device of ",
      anchor_name, ")");
}

inline void check_matrix(const char* op, const std::string& name, const at::Tensor& t) {
  TORCH_CHECK(t.dim() == 2, op, ": ", name, " must be 2-d, got shape ", t.sizes());
}

inline std::string item(const char* list, size_t i) {
  return std::string(list) + "[" + std::to_string(i) + "]";
}

// ------------------------------------------------------------ one per operator

inline void check_philox_normal_args(const at::Tensor& out) {
  check_matrix("philox_normal_", "self", out);
  check_parameter_dtype("philox_normal_", "self", out);
}

inline void check_philox_bits_args(const at::Tensor& out) {
  check_matrix("philox_bits_", "self", out);
  check_dtype("philox_bits_", "self", out, at::kInt);
}

inline void check_second_moment_factored_args(const at::Tensor& grad, const at::Tensor& row, const at::Tensor& col) {
  constexpr const char* op = "second_moment_factored_";
  check_matrix(op, "grad", grad);
  check_parameter_dtype(op, "grad", grad);
  check_shape(op, "exp_avg_sq_row", row, {grad.size(0)});
  check_dtype(op, "exp_avg_sq_row", row, at::kFloat);
  check_device(op, "exp_avg_sq_row", row, "grad", grad);
  check_shape(op, "exp_avg_sq_col", col, {grad.size(1)});
  check_dtype(op, "exp_avg_sq_col", col, at::kFloat);
  check_device(op, "exp_avg_sq_col", col, "grad", grad);
}

inline void check_second_moment_full_args(const at::Tensor& grad, const at::Tensor& exp_avg_sq) {
  constexpr const char* op = "second_moment_full_";
  check_parameter_dtype(op, "grad", grad);
  check_shape(op, "exp_avg_sq", exp_avg_sq, grad.sizes());
  check_dtype(op, "exp_avg_sq", exp_avg_sq, at::kFloat);
  check_device(op, "exp_avg_sq", exp_avg_sq, "grad", grad);
}

inline void check_apply_update_args(const at::Tensor& param, const at::Tensor& update) {
  constexpr const char* op = "apply_update_";
  check_parameter_dtype(op, "param", param);
  check_shape(op, "update", update, param.sizes());
  check_dtype(op, "update", update, at::kFloat);
  check_device(op, "update", update, "param", param);
}

/// All params share one dtype and one device (a batch is one launch).
inline void check_full_moment_step_args(
    at::TensorList params, at::TensorList grads, at::TensorList exp_avg_sqs, at::TensorList exp_avgs,
    c10::ArrayRef<double> beta2s, c10::ArrayRef<double> lrs) {
  constexpr const char* op = "full_moment_step_";
  const size_t n = params.size();
  TORCH_CHECK(
      grads.size() == n && exp_avg_sqs.size() == n && beta2s.size() == n && lrs.size() == n &&
          (exp_avgs.empty() || exp_avgs.size() == n),
      op, ": list lengths differ (", n, " params, ", grads.size(), " grads, ", exp_avg_sqs.size(), " exp_avg_sqs, ",
      exp_avgs.size(), " exp_avgs (0 or ", n, "), ", beta2s.size(), " beta2s, ", lrs.size(), " lrs)");
  for (size_t i = 0; i < n; ++i) {
    const auto& param = params[i];
    check_parameter_dtype(op, item("params", i), param);
    if (i > 0) {
      check_dtype(op, item("params", i), param, params[0].scalar_type());
      check_device(op, item("params", i), param, "params[0]", params[0]);
    }
    check_shape(op, item("grads", i), grads[i], param.sizes());
    check_dtype(op, item("grads", i), grads[i], param.scalar_type());
    check_device(op, item("grads", i), grads[i], item("params", i), param);
    check_shape(op, item("exp_avg_sqs", i), exp_avg_sqs[i], param.sizes());
    check_dtype(op, item("exp_avg_sqs", i), exp_avg_sqs[i], at::kFloat);
    check_device(op, item("exp_avg_sqs", i), exp_avg_sqs[i], item("params", i), param);
    if (!exp_avgs.empty()) {
      check_shape(op, item("exp_avgs", i), exp_avgs[i], param.sizes());
      check_dtype(op, item("exp_avgs", i), exp_avgs[i], at::kFloat);
      check_device(op, item("exp_avgs", i), exp_avgs[i], item("params", i), param);
    }
  }
}

/// The code map is read on the host by every kernel (the CUDA kernels take
/// its 256 values as a launch argument), so it is a CPU tensor on every device.
inline void check_code_map(const char* op, const at::Tensor& code) {
  check_numel(op, "code", code, 256);
  check_dtype(op, "code", code, at::kFloat);
  TORCH_CHECK(
      code.device().is_cpu(), op, ": code is on ", code.device(),
      ", expected cpu (the map is read on the host on every device)");
}

inline void check_block_size(const char* op, int64_t block_size) {
  TORCH_CHECK(block_size > 0, op, ": block_size must be positive, got ", block_size);
}

inline int64_t quantization_block_count(int64_t numel, int64_t block_size) {
  return ceil_div(numel, block_size);
}

/// Returns the number of quantization blocks.
inline int64_t check_quantize_blockwise_args(
    const at::Tensor& x, const at::Tensor& codes, const at::Tensor& absmax, const at::Tensor& code,
    int64_t block_size) {
  constexpr const char* op = "quantize_blockwise_";
  check_block_size(op, block_size);
  check_parameter_dtype(op, "x", x);
  const int64_t blocks = quantization_block_count(x.numel(), block_size);
  check_numel(op, "codes", codes, x.numel());
  check_dtype(op, "codes", codes, at::kByte);
  check_device(op, "codes", codes, "x", x);
  check_numel(op, "absmax", absmax, blocks);
  check_dtype(op, "absmax", absmax, at::kFloat);
  check_device(op, "absmax", absmax, "x", x);
  check_code_map(op, code);
  return blocks;
}

inline void check_dequantize_blockwise_args(
    const at::Tensor& codes, const at::Tensor& absmax, const at::Tensor& code, int64_t block_size) {
  constexpr const char* op = "dequantize_blockwise";
  check_block_size(op, block_size);
  check_dtype(op, "codes", codes, at::kByte);
  check_numel(op, "absmax", absmax, quantization_block_count(codes.numel(), block_size));
  check_dtype(op, "absmax", absmax, at::kFloat);
  check_device(op, "absmax", absmax, "codes", codes);
  check_code_map(op, code);
}

} // namespace flora::detail
