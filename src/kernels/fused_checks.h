#pragma once

// The argument checks of the fused step's operators (src/fused_ops.h), one
// function per operator, called first by its CPU and its CUDA kernel (as
// kernels/checks.h does for the other operators, whose building blocks and
// message form "<op>: <argument> <what is wrong>, <the value found>" these
// share). Unlike those operators, the fused ones take contiguous tensors
// only: the optimizer hands them contiguous working copies.

#include "kernels/checks.h"
#include "kernels/sums_layout.h"

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

namespace flora::detail {

inline void check_contiguous(const char* op, const std::string& name, const at::Tensor& t) {
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous, got strides ", t.strides());
}

inline void check_count(const char* op, const char* name, size_t count, size_t expected) {
  TORCH_CHECK(count == expected, op, ": ", count, " ", name, " for ", expected, " params");
}

/// params and grads: one of the parameter dtypes, one device, contiguous;
/// grads like their parameters; `matrices`: all 2-d, and `same_shape`: all
/// of params[0]'s shape.
inline void check_params_and_grads(
    const char* op, at::TensorList params, at::TensorList grads, bool matrices, bool same_shape,
    const char* params_name = "params", const char* grads_name = "grads") {
  check_count(op, grads_name, grads.size(), params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const auto pn = item(params_name, i);
    const auto gn = item(grads_name, i);
    check_parameter_dtype(op, pn, params[i]);
    if (i > 0) {
      check_dtype(op, pn, params[i], params[0].scalar_type());
      check_device(op, pn, params[i], item(params_name, 0), params[0]);
    }
    if (matrices) {
      check_matrix(op, pn, params[i]);
    }
    if (same_shape && i > 0) {
      check_shape(op, pn, params[i], params[0].sizes());
    }
    check_contiguous(op, pn, params[i]);
    if (grads.data() != params.data()) {
      check_shape(op, gn, grads[i], params[i].sizes());
      check_dtype(op, gn, grads[i], params[i].scalar_type());
      check_device(op, gn, grads[i], pn, params[i]);
      check_contiguous(op, gn, grads[i]);
    }
  }
}

/// One state tensor per parameter: `dtype`, `numel(i)` elements, on the
/// parameter's device, contiguous.
inline void check_state_list(
    const char* op, const char* name, at::TensorList list, at::TensorList params, at::ScalarType dtype,
    const std::function<int64_t(size_t)>& numel, const char* params_name = "params") {
  check_count(op, name, list.size(), params.size());
  for (size_t i = 0; i < list.size(); ++i) {
    const auto n = item(name, i);
    check_dtype(op, n, list[i], dtype);
    check_numel(op, n, list[i], numel(i));
    check_device(op, n, list[i], item(params_name, i), params[i]);
    check_contiguous(op, n, list[i]);
  }
}

/// A moment list: empty (no such moment), float32 values, or uint8 codes with
/// one float32 absmax per block (and a code map). Returns whether quantized.
inline bool check_moments(
    const char* op, const char* name, const char* absmax_name, at::TensorList moments, at::TensorList absmaxes,
    at::TensorList params, int64_t block_size, const std::optional<at::Tensor>& code_map,
    const std::function<int64_t(size_t)>& numel, const char* params_name = "params") {
  if (moments.empty()) {
    TORCH_CHECK(absmaxes.empty(), op, ": ", absmax_name, " given without ", name);
    return false;
  }
  const bool quantized = moments[0].scalar_type() == at::kByte;
  check_state_list(op, name, moments, params, quantized ? at::kByte : at::kFloat, numel, params_name);
  if (!quantized) {
    TORCH_CHECK(absmaxes.empty(), op, ": ", name, " are float32, so ", absmax_name, " must be empty");
    return false;
  }
  check_block_size(op, block_size);
  check_state_list(
      op, absmax_name, absmaxes, params, at::kFloat,
      [&](size_t i) { return quantization_block_count(numel(i), block_size); }, params_name);
  TORCH_CHECK(code_map.has_value(), op, ": quantized ", name, " need a code_map");
  // As for the quantize operators: read on the host on every device.
  check_numel(op, "code_map", *code_map, 256);
  check_dtype(op, "code_map", *code_map, at::kFloat);
  TORCH_CHECK(code_map->device().is_cpu(), op, ": code_map is on ", code_map->device(), ", expected cpu");
  check_contiguous(op, "code_map", *code_map);
  return true;
}

/// Capturable steps' counters: empty, or one int64 (step, seed, previous
/// seed) per parameter on its device.
inline void check_counters(const char* op, at::TensorList counters, at::TensorList params, const char* params_name = "params") {
  if (!counters.empty()) {
    check_state_list(op, "counters", counters, params, at::kLong, [](size_t) { return int64_t{3}; }, params_name);
  }
}

inline void check_steps(const char* op, c10::ArrayRef<int64_t> steps, at::TensorList counters, size_t n) {
  if (!counters.empty()) {
    return;
  }
  check_count(op, "steps", steps.size(), n);
  for (size_t i = 0; i < n; ++i) {
    TORCH_CHECK(steps[i] >= 1, op, ": steps[", i, "] must be at least 1, got ", steps[i]);
  }
}

inline void check_sums(
    const char* op, const at::Tensor& sums, const SumsLayout& layout, const std::string& anchor_name,
    const at::Tensor& anchor) {
  check_dtype(op, "sums", sums, at::kFloat);
  check_numel(op, "sums", sums, layout.size);
  check_device(op, "sums", sums, anchor_name, anchor);
  check_contiguous(op, "sums", sums);
}

inline void check_lr_tensor(const char* op, const std::optional<at::Tensor>& lr, const at::Tensor& anchor) {
  if (lr.has_value()) {
    check_dtype(op, "lr_tensor", *lr, at::kDouble);
    check_numel(op, "lr_tensor", *lr, 1);
    check_device(op, "lr_tensor", *lr, "params[0]", anchor);
  }
}

inline void check_hyper(const char* op, c10::ArrayRef<double> hyper, bool momentum_given) {
  TORCH_CHECK(hyper.size() == 10, op, ": hyper must have 10 entries, got ", hyper.size());
  TORCH_CHECK(
      momentum_given == (hyper[3] != 0.0), op, ": exp_avgs must be given exactly when beta1 (hyper[3] = ", hyper[3],
      ") is not 0");
}

/// Stochastic rounding keys: none, or one per parameter; they are for
/// bfloat16 parameters (float32 ones need no rounding, float16 ones would
/// need another rule).
inline void check_rounding_keys(const char* op, c10::ArrayRef<int64_t> keys, at::TensorList params) {
  if (keys.empty()) {
    return;
  }
  check_count(op, "rounding_keys", keys.size(), params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    TORCH_CHECK(
        params[i].scalar_type() != at::kHalf, op, ": ", item("params", i),
        " is Half: stochastic rounding (rounding_keys) is for BFloat16 parameters");
  }
}

/// A (G, rows, cols) float32 batch for G matrices of (rows, cols).
inline void check_batch(
    const char* op, const char* name, const at::Tensor& batch, int64_t count, int64_t rows, int64_t cols,
    const std::string& anchor_name, const at::Tensor& anchor) {
  check_dtype(op, name, batch, at::kFloat);
  check_shape(op, name, batch, {count, rows, cols});
  check_device(op, name, batch, anchor_name, anchor);
  check_contiguous(op, name, batch);
}

// ------------------------------------------------------------ one per operator

inline void check_gradient_sums_args(
    at::TensorList params, at::TensorList grads, bool factored, const at::Tensor& flags, const at::Tensor& sums) {
  constexpr const char* op = "gradient_sums_";
  check_params_and_grads(op, params, grads, factored, false);
  if (params.empty()) {
    return;
  }
  check_dtype(op, "flags", flags, at::kFloat);
  check_numel(op, "flags", flags, static_cast<int64_t>(params.size()));
  check_device(op, "flags", flags, "params[0]", params[0]);
  check_contiguous(op, "flags", flags);
  check_sums(op, sums, SumsLayout::of(params, factored), "params[0]", params[0]);
}

inline void check_factored_step_args(
    at::TensorList params, at::TensorList grads, at::TensorList rows, at::TensorList cols, at::TensorList exp_avgs,
    at::TensorList exp_avg_absmaxs, at::TensorList rms, const at::Tensor& sums, c10::ArrayRef<int64_t> steps,
    at::TensorList counters, const std::optional<at::Tensor>& lr_tensor, c10::ArrayRef<double> hyper,
    int64_t block_size, const std::optional<at::Tensor>& code_map, c10::ArrayRef<int64_t> rounding_keys = {}) {
  constexpr const char* op = "factored_step_";
  check_params_and_grads(op, params, grads, true, false);
  check_hyper(op, hyper, !exp_avgs.empty());
  if (params.empty()) {
    return;
  }
  check_state_list(op, "exp_avg_sq_rows", rows, params, at::kFloat, [&](size_t i) { return params[i].size(0); });
  check_state_list(op, "exp_avg_sq_cols", cols, params, at::kFloat, [&](size_t i) { return params[i].size(1); });
  check_moments(op, "exp_avgs", "exp_avg_absmaxs", exp_avgs, exp_avg_absmaxs, params, block_size, code_map, [&](size_t i) {
    return params[i].numel();
  });
  check_state_list(op, "rms", rms, params, at::kFloat, [](size_t) { return int64_t{1}; });
  check_counters(op, counters, params);
  check_steps(op, steps, counters, params.size());
  check_sums(op, sums, SumsLayout::of(params, true), "params[0]", params[0]);
  check_lr_tensor(op, lr_tensor, params[0]);
  check_rounding_keys(op, rounding_keys, params);
}

inline void check_full_step_args(
    at::TensorList params, at::TensorList grads, at::TensorList exp_avg_sqs, at::TensorList exp_avg_sq_absmaxs,
    at::TensorList exp_avgs, at::TensorList exp_avg_absmaxs, at::TensorList rms, const at::Tensor& sums,
    c10::ArrayRef<int64_t> steps, at::TensorList counters, const std::optional<at::Tensor>& lr_tensor,
    c10::ArrayRef<double> hyper, int64_t block_size, const std::optional<at::Tensor>& code_map,
    c10::ArrayRef<int64_t> rounding_keys = {}) {
  constexpr const char* op = "full_step_";
  check_params_and_grads(op, params, grads, false, false);
  check_hyper(op, hyper, !exp_avgs.empty());
  if (params.empty()) {
    return;
  }
  const auto numel = [&](size_t i) { return params[i].numel(); };
  check_count(op, "exp_avg_sqs", exp_avg_sqs.size(), params.size());
  check_moments(op, "exp_avg_sqs", "exp_avg_sq_absmaxs", exp_avg_sqs, exp_avg_sq_absmaxs, params, block_size, code_map, numel);
  check_moments(op, "exp_avgs", "exp_avg_absmaxs", exp_avgs, exp_avg_absmaxs, params, block_size, code_map, numel);
  check_state_list(op, "rms", rms, params, at::kFloat, [](size_t) { return int64_t{1}; });
  check_counters(op, counters, params);
  check_steps(op, steps, counters, params.size());
  check_sums(op, sums, SumsLayout::of(params, false), "params[0]", params[0]);
  check_lr_tensor(op, lr_tensor, params[0]);
  check_rounding_keys(op, rounding_keys, params);
}

inline void check_factored_normalize_args(
    at::TensorList grads, at::TensorList rows, at::TensorList cols, const at::Tensor& sums,
    c10::ArrayRef<int64_t> steps, at::TensorList counters, const at::Tensor& out) {
  constexpr const char* op = "factored_normalize_";
  check_params_and_grads(op, grads, grads, true, true, "grads", "grads");
  if (grads.empty()) {
    return;
  }
  const int64_t m = grads[0].size(0), n = grads[0].size(1);
  check_state_list(op, "exp_avg_sq_rows", rows, grads, at::kFloat, [&](size_t) { return m; }, "grads");
  check_state_list(op, "exp_avg_sq_cols", cols, grads, at::kFloat, [&](size_t) { return n; }, "grads");
  check_counters(op, counters, grads, "grads");
  check_steps(op, steps, counters, grads.size());
  check_sums(op, sums, SumsLayout::of(grads, true), "grads[0]", grads[0]);
  check_batch(op, "out", out, static_cast<int64_t>(grads.size()), m, n, "grads[0]", grads[0]);
}

inline void check_apply_updates_args(
    at::TensorList params, const at::Tensor& updates, at::TensorList rms, const at::Tensor& sums,
    c10::ArrayRef<int64_t> steps, at::TensorList counters, const std::optional<at::Tensor>& lr_tensor,
    c10::ArrayRef<double> hyper, c10::ArrayRef<int64_t> rounding_keys = {}) {
  constexpr const char* op = "apply_updates_";
  check_params_and_grads(op, params, params, true, true);
  TORCH_CHECK(hyper.size() == 10, op, ": hyper must have 10 entries, got ", hyper.size());
  if (params.empty()) {
    return;
  }
  check_batch(
      op, "updates", updates, static_cast<int64_t>(params.size()), params[0].size(0), params[0].size(1), "params[0]",
      params[0]);
  check_state_list(op, "rms", rms, params, at::kFloat, [](size_t) { return int64_t{1}; });
  check_counters(op, counters, params);
  check_steps(op, steps, counters, params.size());
  check_sums(op, sums, SumsLayout::of(params, true), "params[0]", params[0]);
  check_lr_tensor(op, lr_tensor, params[0]);
  check_rounding_keys(op, rounding_keys, params);
}

inline void check_philox_normal_batch_args(
    const at::Tensor& out, c10::ArrayRef<int64_t> seeds, at::TensorList counters, int64_t counter_slot,
    int64_t side) {
  constexpr const char* op = "philox_normal_batch_";
  check_dtype(op, "out", out, at::kFloat);
  TORCH_CHECK(out.dim() == 3, op, ": out must be 3-d (G, rows, cols), got shape ", out.sizes());
  check_contiguous(op, "out", out);
  TORCH_CHECK(side >= 0 && side <= 2, op, ": side must be 0 (direct), 1 (left) or 2 (right), got ", side);
  const auto count = static_cast<size_t>(out.size(0));
  if (counters.empty()) {
    check_count(op, "seeds", seeds.size(), count);
    return;
  }
  TORCH_CHECK(
      counter_slot == 1 || counter_slot == 2, op, ": counter_slot must be 1 (seed) or 2 (previous seed), got ",
      counter_slot);
  check_count(op, "counters", counters.size(), count);
  for (size_t i = 0; i < counters.size(); ++i) {
    check_dtype(op, item("counters", i), counters[i], at::kLong);
    check_numel(op, item("counters", i), counters[i], 3);
    check_device(op, item("counters", i), counters[i], "out", out);
    check_contiguous(op, item("counters", i), counters[i]);
  }
}

/// Returns whether the moments are quantized.
inline bool check_moment_batch_args(
    const char* op, const char* batch_name, const at::Tensor& batch, at::TensorList moments, at::TensorList absmaxes,
    int64_t block_size, const std::optional<at::Tensor>& code_map) {
  if (moments.empty()) {
    return false;
  }
  const int64_t each = moments[0].numel();
  for (size_t i = 1; i < moments.size(); ++i) {
    check_device(op, item("moments", i), moments[i], "moments[0]", moments[0]);
  }
  const bool quantized = check_moments(
      op, "moments", "absmaxes", moments, absmaxes, moments, block_size, code_map, [&](size_t) { return each; },
      "moments");
  check_dtype(op, batch_name, batch, at::kFloat);
  check_numel(op, batch_name, batch, each * static_cast<int64_t>(moments.size()));
  check_device(op, batch_name, batch, "moments[0]", moments[0]);
  check_contiguous(op, batch_name, batch);
  return quantized;
}

inline bool check_gather_moments_args(
    at::TensorList moments, at::TensorList absmaxes, int64_t block_size, const std::optional<at::Tensor>& code_map,
    const at::Tensor& out) {
  return check_moment_batch_args("gather_moments_", "out", out, moments, absmaxes, block_size, code_map);
}

inline bool check_scatter_moments_args(
    const at::Tensor& src, at::TensorList moments, at::TensorList absmaxes, int64_t block_size,
    const std::optional<at::Tensor>& code_map, const std::optional<at::Tensor>& mix = std::nullopt) {
  constexpr const char* op = "scatter_moments_";
  const bool quantized = check_moment_batch_args(op, "src", src, moments, absmaxes, block_size, code_map);
  if (mix.has_value() && !moments.empty()) {
    check_dtype(op, "mix", *mix, at::kFloat);
    check_shape(op, "mix", *mix, src.sizes());
    check_device(op, "mix", *mix, "src", src);
    check_contiguous(op, "mix", *mix);
  }
  return quantized;
}

inline void check_advance_counters_args(at::TensorList counters, int64_t kappa) {
  constexpr const char* op = "advance_counters_";
  TORCH_CHECK(kappa > 0, op, ": kappa must be positive, got ", kappa);
  for (size_t i = 0; i < counters.size(); ++i) {
    check_dtype(op, item("counters", i), counters[i], at::kLong);
    check_numel(op, item("counters", i), counters[i], 3);
    if (i > 0) {
      check_device(op, item("counters", i), counters[i], "counters[0]", counters[0]);
    }
    check_contiguous(op, item("counters", i), counters[i]);
  }
}

inline void check_keep_unless_resampled_args(const at::Tensor& transforms, at::TensorList counters, int64_t kappa) {
  constexpr const char* op = "keep_unless_resampled_";
  TORCH_CHECK(kappa > 0, op, ": kappa must be positive, got ", kappa);
  check_dtype(op, "transforms", transforms, at::kFloat);
  TORCH_CHECK(
      transforms.dim() == 3 && transforms.size(1) == transforms.size(2), op,
      ": transforms must be (G, r, r), got shape ", transforms.sizes());
  check_contiguous(op, "transforms", transforms);
  check_count(op, "counters", counters.size(), static_cast<size_t>(transforms.size(0)));
  for (size_t i = 0; i < counters.size(); ++i) {
    check_dtype(op, item("counters", i), counters[i], at::kLong);
    check_numel(op, item("counters", i), counters[i], 3);
    check_device(op, item("counters", i), counters[i], "transforms", transforms);
    check_contiguous(op, item("counters", i), counters[i]);
  }
}

} // namespace flora::detail
