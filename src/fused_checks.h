#pragma once

// Argument checks of the fused step's operators (fused_ops.h), shared by
// their CPU and CUDA kernels so that both reject the same inputs with the
// same messages.

#include "sums_layout.h"

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <functional>
#include <optional>

namespace flora::detail {

inline bool is_parameter_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf;
}

/// params and grads: the same count, contiguous, one floating dtype of the
/// three and one device; grads shaped like their parameters.
inline void check_params_and_grads(const char* op, at::TensorList params, at::TensorList grads) {
  TORCH_CHECK(
      params.size() == grads.size(), op, ": ", params.size(), " params but ", grads.size(), " grads");
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& p = params[i];
    const auto& g = grads[i];
    TORCH_CHECK(p.defined() && g.defined(), op, ": params[", i, "] or grads[", i, "] is undefined");
    TORCH_CHECK(
        is_parameter_dtype(p.scalar_type()), op, ": params[", i, "] has dtype ", p.scalar_type(),
        "; float32, float16 and bfloat16 are supported");
    TORCH_CHECK(
        g.scalar_type() == p.scalar_type() && g.sizes() == p.sizes(), op, ": grads[", i, "] is ", g.scalar_type(),
        " ", g.sizes(), ", params[", i, "] ", p.scalar_type(), " ", p.sizes());
    TORCH_CHECK(
        p.device() == params[0].device() && g.device() == params[0].device(), op, ": params[", i, "] and grads[", i,
        "] must be on ", params[0].device(), ", got ", p.device(), " and ", g.device());
    TORCH_CHECK(p.is_contiguous() && g.is_contiguous(), op, ": params[", i, "] and grads[", i, "] must be contiguous");
  }
}

/// A list of per-parameter state tensors: one per parameter, on the
/// parameter's device, contiguous, of `dtype` and `numel(i)` elements.
template <typename Numel>
void check_state_list(
    const char* op, const char* name, at::TensorList list, at::TensorList params, at::ScalarType dtype,
    const Numel& numel) {
  TORCH_CHECK(list.size() == params.size(), op, ": ", list.size(), " ", name, " for ", params.size(), " params");
  for (size_t i = 0; i < list.size(); ++i) {
    const auto& t = list[i];
    TORCH_CHECK(t.defined(), op, ": ", name, "[", i, "] is undefined");
    TORCH_CHECK(
        t.scalar_type() == dtype && t.numel() == numel(i), op, ": ", name, "[", i, "] must be ", dtype, " with ",
        numel(i), " elements, got ", t.scalar_type(), " ", t.sizes());
    TORCH_CHECK(
        t.device() == params[i].device(), op, ": ", name, "[", i, "] is on ", t.device(), ", params[", i, "] on ",
        params[i].device());
    TORCH_CHECK(t.is_contiguous(), op, ": ", name, "[", i, "] must be contiguous");
  }
}

/// A moment list (float32 values or uint8 codes with their absmax list);
/// may be empty (no such moment). Returns whether it is quantized.
inline bool check_moments(
    const char* op, const char* name, at::TensorList moments, at::TensorList absmaxes, at::TensorList params,
    int64_t block_size, const std::optional<at::Tensor>& code_map,
    const std::function<int64_t(size_t)>& numel) {
  if (moments.empty()) {
    TORCH_CHECK(absmaxes.empty(), op, ": ", name, " absmaxes given without ", name);
    return false;
  }
  const bool quantized = moments[0].defined() && moments[0].scalar_type() == at::kByte;
  check_state_list(op, name, moments, params, quantized ? at::kByte : at::kFloat, numel);
  if (!quantized) {
    TORCH_CHECK(absmaxes.empty(), op, ": ", name, " are float32 but absmaxes were given");
    return false;
  }
  TORCH_CHECK(block_size > 0, op, ": block_size must be positive, got ", block_size);
  check_state_list(op, "absmaxes", absmaxes, params, at::kFloat, [&](size_t i) {
    return (numel(i) + block_size - 1) / block_size;
  });
  TORCH_CHECK(
      code_map.has_value() && code_map->numel() == 256 && code_map->scalar_type() == at::kFloat &&
          code_map->is_contiguous() && code_map->device() == params[0].device(),
      op, ": quantized ", name, " need code_map, a contiguous float32 tensor of 256 entries on ", params[0].device());
  return true;
}

/// Capturable steps' counters: empty, or one int64 (step, seed, previous
/// seed) per parameter on its device.
inline void check_counters(const char* op, at::TensorList counters, at::TensorList params) {
  if (counters.empty()) {
    return;
  }
  check_state_list(op, "counters", counters, params, at::kLong, [](size_t) { return int64_t{3}; });
}

inline void check_steps(const char* op, c10::ArrayRef<int64_t> steps, at::TensorList counters, size_t n) {
  if (!counters.empty()) {
    return;
  }
  TORCH_CHECK(steps.size() == n, op, ": ", steps.size(), " steps for ", n, " params");
  for (size_t i = 0; i < n; ++i) {
    TORCH_CHECK(steps[i] >= 1, op, ": steps[", i, "] must be >= 1, got ", steps[i]);
  }
}

inline void check_sums(const char* op, const at::Tensor& sums, const SumsLayout& layout, const at::Device& device) {
  TORCH_CHECK(
      sums.scalar_type() == at::kFloat && sums.is_contiguous() && sums.numel() >= layout.size &&
          sums.device() == device,
      op, ": sums must be a contiguous float32 tensor of at least ", layout.size, " elements on ", device, ", got ",
      sums.scalar_type(), " ", sums.sizes(), " on ", sums.device());
}

inline void check_lr_tensor(const char* op, const std::optional<at::Tensor>& lr, const at::Device& device) {
  if (lr.has_value()) {
    TORCH_CHECK(
        lr->numel() == 1 && lr->scalar_type() == at::kDouble && lr->device() == device, op,
        ": lr_tensor must be one float64 on ", device, ", got ", lr->scalar_type(), " ", lr->sizes(), " on ",
        lr->device());
  }
}

/// A (G, rows, cols) float32 batch matching G tensors of (rows, cols).
inline void check_batch(
    const char* op, const char* name, const at::Tensor& batch, int64_t count, int64_t rows, int64_t cols,
    const at::Device& device) {
  TORCH_CHECK(
      batch.dim() == 3 && batch.size(0) == count && batch.size(1) == rows && batch.size(2) == cols &&
          batch.scalar_type() == at::kFloat && batch.is_contiguous() && batch.device() == device,
      op, ": ", name, " must be a contiguous float32 [", count, ", ", rows, ", ", cols, "] on ", device, ", got ",
      batch.scalar_type(), " ", batch.sizes(), " on ", batch.device());
}

} // namespace flora::detail
