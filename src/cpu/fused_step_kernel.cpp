// CPU kernels of the fused step's operators (src/fused_ops.h): argument
// checks, the per-parameter scalars (step_math.h), and the vectorised work
// of fused_kernels.h. Step counts and the learning rate are read from the
// counters / lr tensors when a capturable step gives them (on the CPU that
// memory is the host's).

#include "fused_ops.h"
#include "kernels/fused_checks.h"
#include "kernels/philox.h"
#include "kernels/projection_seed.h"
#include "kernels/step_math.h"
#include "fused_kernels.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>

namespace flora::cpu {
namespace {

using detail::StepHyper;
using detail::SumsLayout;
using OptTensor = const std::optional<at::Tensor>&;

TensorView view_of(const at::Tensor& param, const at::Tensor& grad, bool matrix) {
  TensorView v;
  v.param = param.data_ptr();
  v.grad = grad.data_ptr();
  v.dtype = param.scalar_type();
  v.rows = matrix ? param.size(0) : 1;
  v.cols = matrix ? param.size(1) : param.numel();
  return v;
}

// This step's count of parameter i.
std::vector<int64_t> resolve_steps(c10::ArrayRef<int64_t> steps, at::TensorList counters, size_t n) {
  if (counters.empty()) {
    return steps.vec();
  }
  std::vector<int64_t> out(n);
  for (size_t i = 0; i < n; ++i) {
    out[i] = counters[i].data_ptr<int64_t>()[0];
    TORCH_CHECK(out[i] >= 1, "flora fused step: counters[", i, "] holds step ", out[i], "; advance_counters_ first");
  }
  return out;
}

double resolve_lr(OptTensor lr_tensor, const StepHyper& h) {
  return lr_tensor.has_value() ? lr_tensor->data_ptr<double>()[0] : h.lr;
}

Moment moment_of(at::TensorList values, at::TensorList absmaxes, size_t i, int64_t block, OptTensor code_map) {
  Moment m;
  if (values.empty()) {
    return m;
  }
  if (values[i].scalar_type() == at::kByte) {
    m.codes = values[i].data_ptr<uint8_t>();
    m.absmax = absmaxes[i].data_ptr<float>();
    m.block = block;
    m.code_map = code_map->data_ptr<float>();
  } else {
    m.values = values[i].data_ptr<float>();
  }
  return m;
}

// Adafactor's row and column EMAs from phase 1's sums of g^2, then the
// normalising factors rsqrt(row / mean(row)) and rsqrt(col) written over
// the sums (which are not needed after this).
void factored_factors(
    float* row_sums, float* col_sums, float* row, float* col, int64_t rows, int64_t cols, int64_t step,
    double eps1, double decay_rate) {
  const double beta2 = detail::beta2_at(step, decay_rate);
  const float b2 = static_cast<float>(beta2);
  const float omb2 = static_cast<float>(1.0 - beta2);
  const float e = static_cast<float>(eps1);
  const float inv_cols = 1.0f / static_cast<float>(cols);
  const float inv_rows = 1.0f / static_cast<float>(rows);
  double row_total = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    row[r] = row[r] * b2 + (row_sums[r] * inv_cols + e) * omb2;
    row_total += row[r];
  }
  for (int64_t c = 0; c < cols; ++c) {
    col[c] = col[c] * b2 + (col_sums[c] * inv_rows + e) * omb2;
  }
  const float row_mean = static_cast<float>(row_total / static_cast<double>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    row_sums[r] = 1.0f / std::sqrt(row[r] / row_mean);
  }
  for (int64_t c = 0; c < cols; ++c) {
    col_sums[c] = 1.0f / std::sqrt(col[c]);
  }
}

// Elements per piece of a parallel copy or mix of moments.
constexpr int64_t kCopyGrain = 16384;

// n floats from `from` to `to`, in parallel pieces (one thread's memcpy
// does not reach the memory bandwidth).
void parallel_copy(float* to, const float* from, int64_t n) {
  at::parallel_for(0, n, kCopyGrain, [&](int64_t e0, int64_t e1) {
    std::memcpy(to + e0, from + e0, static_cast<size_t>(e1 - e0) * sizeof(float));
  });
}

// ---------------------------------------------------------------- operators

void gradient_sums_cpu(at::TensorList params, at::TensorList grads, bool factored, at::Tensor& flags, at::Tensor& sums) {
  detail::check_gradient_sums_args(params, grads, factored, flags, sums);
  const auto layout = SumsLayout::of(params, factored);
  if (params.empty()) {
    return;
  }
  float* s = sums.data_ptr<float>();
  float* f = flags.data_ptr<float>();
  const auto& k = kernels();
  for (size_t i = 0; i < params.size(); ++i) {
    const auto view = view_of(params[i], grads[i], factored);
    const auto r = k.gradient_sums(
        view, factored, factored ? s + layout.row_offset[i] : nullptr, factored ? s + layout.col_offset[i] : nullptr);
    s[layout.param_sq(static_cast<int64_t>(i))] = static_cast<float>(r.param_sq);
    f[i] = r.nonfinite ? 1.0f : 0.0f;
  }
}

// Shared by factored_step_ and full_step_: update_sq, coefficients, apply.
// How parameter i is written: rounding stochastically when keys are given
// (they only matter for bfloat16 parameters).
ApplyRule apply_rule(const detail::WriteCoefficients& c, c10::ArrayRef<int64_t> rounding_keys, size_t i, int64_t step) {
  ApplyRule a{static_cast<float>(c.keep), static_cast<float>(c.scale)};
  if (!rounding_keys.empty()) {
    a.stochastic = true;
    a.rounding_key = static_cast<uint64_t>(rounding_keys[i]);
    a.step = step;
  }
  return a;
}

void update_and_apply(
    const Kernels& k, const TensorView& view, const UpdateRule& rule, float* sums, const SumsLayout& layout, size_t i,
    int64_t step, double lr, const StepHyper& h, at::Tensor rms, c10::ArrayRef<int64_t> rounding_keys) {
  const double update_sq = k.update_sq(view, rule);
  sums[layout.update_sq(static_cast<int64_t>(i))] = static_cast<float>(update_sq);
  const auto c = detail::write_coefficients(
      sums[layout.param_sq(static_cast<int64_t>(i))], update_sq, view.numel(), detail::base_step_size(step, lr, h), h);
  k.apply(view, rule, apply_rule(c, rounding_keys, i, step));
  rms.data_ptr<float>()[0] = static_cast<float>(c.param_rms);
}

void momentum_rule(UpdateRule& rule, const StepHyper& h) {
  rule.beta1 = static_cast<float>(h.beta1);
  rule.one_minus_beta1 = static_cast<float>(1.0 - h.beta1);
}

void factored_step_cpu(
    at::TensorList params, at::TensorList grads, at::TensorList rows, at::TensorList cols, at::TensorList exp_avgs,
    at::TensorList exp_avg_absmaxs, at::TensorList rms, at::Tensor& sums, c10::ArrayRef<int64_t> steps,
    at::TensorList counters, OptTensor lr_tensor, c10::ArrayRef<double> hyper, int64_t block_size,
    OptTensor code_map, c10::ArrayRef<int64_t> rounding_keys) {
  detail::check_factored_step_args(
      params, grads, rows, cols, exp_avgs, exp_avg_absmaxs, rms, sums, steps, counters, lr_tensor, hyper, block_size,
      code_map, rounding_keys);
  if (params.empty()) {
    return;
  }
  const auto h = ops::hyper_from(hyper);
  const auto layout = SumsLayout::of(params, true);

  const auto step_of = resolve_steps(steps, counters, params.size());
  const double lr = resolve_lr(lr_tensor, h);
  float* s = sums.data_ptr<float>();
  const auto& k = kernels();
  for (size_t i = 0; i < params.size(); ++i) {
    const auto view = view_of(params[i], grads[i], true);
    float* rf = s + layout.row_offset[i];
    float* cf = s + layout.col_offset[i];
    factored_factors(
        rf, cf, rows[i].data_ptr<float>(), cols[i].data_ptr<float>(), view.rows, view.cols, step_of[i], h.eps1,
        h.decay_rate);
    UpdateRule rule;
    rule.factored = true;
    rule.row_factor = rf;
    rule.col_factor = cf;
    rule.momentum = moment_of(exp_avgs, exp_avg_absmaxs, i, block_size, code_map);
    momentum_rule(rule, h);
    update_and_apply(k, view, rule, s, layout, i, step_of[i], lr, h, rms[i], rounding_keys);
  }
}

void full_step_cpu(
    at::TensorList params, at::TensorList grads, at::TensorList exp_avg_sqs, at::TensorList exp_avg_sq_absmaxs,
    at::TensorList exp_avgs, at::TensorList exp_avg_absmaxs, at::TensorList rms, at::Tensor& sums,
    c10::ArrayRef<int64_t> steps, at::TensorList counters, OptTensor lr_tensor, c10::ArrayRef<double> hyper,
    int64_t block_size, OptTensor code_map, c10::ArrayRef<int64_t> rounding_keys) {
  detail::check_full_step_args(
      params, grads, exp_avg_sqs, exp_avg_sq_absmaxs, exp_avgs, exp_avg_absmaxs, rms, sums, steps, counters,
      lr_tensor, hyper, block_size, code_map, rounding_keys);
  if (params.empty()) {
    return;
  }
  const auto h = ops::hyper_from(hyper);
  const auto layout = SumsLayout::of(params, false);

  const auto step_of = resolve_steps(steps, counters, params.size());
  const double lr = resolve_lr(lr_tensor, h);
  float* s = sums.data_ptr<float>();
  const auto& k = kernels();
  for (size_t i = 0; i < params.size(); ++i) {
    const auto view = view_of(params[i], grads[i], false);
    const double beta2 = detail::beta2_at(step_of[i], h.decay_rate);
    UpdateRule rule;
    rule.factored = false;
    rule.second = moment_of(exp_avg_sqs, exp_avg_sq_absmaxs, i, block_size, code_map);
    rule.beta2 = static_cast<float>(beta2);
    rule.one_minus_beta2 = static_cast<float>(1.0 - beta2);
    rule.eps1 = static_cast<float>(h.eps1);
    rule.momentum = moment_of(exp_avgs, exp_avg_absmaxs, i, block_size, code_map);
    momentum_rule(rule, h);
    update_and_apply(k, view, rule, s, layout, i, step_of[i], lr, h, rms[i], rounding_keys);
  }
}

void factored_normalize_cpu(
    at::TensorList grads, at::TensorList rows, at::TensorList cols, at::Tensor& sums, c10::ArrayRef<int64_t> steps,
    at::TensorList counters, double eps1, double decay_rate, at::Tensor& out) {
  detail::check_factored_normalize_args(grads, rows, cols, sums, steps, counters, out);
  if (grads.empty()) {
    return;
  }
  const auto layout = SumsLayout::of(grads, true);
  const int64_t m = grads[0].size(0), n = grads[0].size(1);

  const auto step_of = resolve_steps(steps, counters, grads.size());
  float* s = sums.data_ptr<float>();
  float* o = out.data_ptr<float>();
  const auto& k = kernels();
  for (size_t i = 0; i < grads.size(); ++i) {
    float* rf = s + layout.row_offset[i];
    float* cf = s + layout.col_offset[i];
    factored_factors(rf, cf, rows[i].data_ptr<float>(), cols[i].data_ptr<float>(), m, n, step_of[i], eps1, decay_rate);
    k.normalize(view_of(grads[i], grads[i], true), rf, cf, o + static_cast<int64_t>(i) * m * n);
  }
}

void apply_updates_cpu(
    at::TensorList params, const at::Tensor& updates, at::TensorList rms, at::Tensor& sums,
    c10::ArrayRef<int64_t> steps, at::TensorList counters, OptTensor lr_tensor, c10::ArrayRef<double> hyper,
    c10::ArrayRef<int64_t> rounding_keys) {
  detail::check_apply_updates_args(params, updates, rms, sums, steps, counters, lr_tensor, hyper, rounding_keys);
  if (params.empty()) {
    return;
  }
  const auto h = ops::hyper_from(hyper);
  const auto layout = SumsLayout::of(params, true);
  const int64_t m = params[0].size(0), n = params[0].size(1);

  const auto step_of = resolve_steps(steps, counters, params.size());
  const double lr = resolve_lr(lr_tensor, h);
  float* s = sums.data_ptr<float>();
  const float* u = updates.data_ptr<float>();
  const auto& k = kernels();
  for (size_t i = 0; i < params.size(); ++i) {
    const float* update = u + static_cast<int64_t>(i) * m * n;
    const double update_sq = k.sum_sq(update, m * n);
    s[layout.update_sq(static_cast<int64_t>(i))] = static_cast<float>(update_sq);
    const auto c = detail::write_coefficients(
        s[layout.param_sq(static_cast<int64_t>(i))], update_sq, m * n, detail::base_step_size(step_of[i], lr, h), h);
    k.apply_from(view_of(params[i], params[i], true), update, apply_rule(c, rounding_keys, i, step_of[i]));
    rms[i].data_ptr<float>()[0] = static_cast<float>(c.param_rms);
  }
}

void philox_normal_batch_cpu(
    at::Tensor& out, c10::ArrayRef<int64_t> seeds, at::TensorList counters, int64_t counter_slot, int64_t side,
    double scale) {
  detail::check_philox_normal_batch_args(out, seeds, counters, counter_slot, side);
  const int64_t count = out.size(0);
  const int64_t rows = out.size(1), cols = out.size(2);
  float* o = out.data_ptr<float>();
  const auto& k = kernels();
  for (int64_t g = 0; g < count; ++g) {
    const int64_t seed = counters.empty() ? seeds[g] : counters[g].data_ptr<int64_t>()[counter_slot];
    k.philox_normal(
        o + g * rows * cols, rows, cols, detail::projection_seed(seed, side),
        static_cast<float>(scale));
  }
}

void gather_moments_cpu(
    at::TensorList moments, at::TensorList absmaxes, int64_t block_size, OptTensor code_map, at::Tensor& out) {
  const bool quantized = detail::check_gather_moments_args(moments, absmaxes, block_size, code_map, out);
  if (moments.empty()) {
    return;
  }
  const int64_t each = moments[0].numel();
  float* o = out.data_ptr<float>();
  const auto& k = kernels();
  for (size_t i = 0; i < moments.size(); ++i) {
    float* dst = o + static_cast<int64_t>(i) * each;
    if (quantized) {
      k.dequantize(moment_of(moments, absmaxes, i, block_size, code_map), each, dst);
    } else {
      parallel_copy(dst, moments[i].data_ptr<float>(), each);
    }
  }
}

void scatter_moments_cpu(
    const at::Tensor& src, OptTensor mix, double beta, at::TensorList moments, at::TensorList absmaxes,
    int64_t block_size, OptTensor code_map) {
  const bool quantized = detail::check_scatter_moments_args(src, moments, absmaxes, block_size, code_map, mix);
  if (moments.empty()) {
    return;
  }
  const int64_t each = moments[0].numel();
  const float* s = src.data_ptr<float>();
  const float* x = mix.has_value() ? mix->data_ptr<float>() : nullptr;
  const float b = static_cast<float>(beta), omb = static_cast<float>(1.0 - beta);
  const auto& k = kernels();
  // Float32 moments take the mix (or the copy) directly; 8-bit ones get it
  // in a float32 buffer that the quantiser then reads.
  std::vector<float> mixed(quantized && x != nullptr ? static_cast<size_t>(each) : 0);
  for (size_t i = 0; i < moments.size(); ++i) {
    const float* from = s + static_cast<int64_t>(i) * each;
    float* to = quantized ? mixed.data() : moments[i].data_ptr<float>();
    if (x != nullptr) {
      const float* other = x + static_cast<int64_t>(i) * each;
      at::parallel_for(0, each, kCopyGrain, [&](int64_t e0, int64_t e1) {
        for (int64_t e = e0; e < e1; ++e) {
          to[e] = from[e] * b + other[e] * omb;
        }
      });
      from = to;
    } else if (!quantized) {
      parallel_copy(to, from, each);
    }
    if (quantized) {
      k.quantize(from, each, moment_of(moments, absmaxes, i, block_size, code_map));
    }
  }
}

void advance_counters_cpu(at::TensorList counters, int64_t kappa) {
  detail::check_advance_counters_args(counters, kappa);
  for (size_t i = 0; i < counters.size(); ++i) {
    int64_t* c = counters[i].data_ptr<int64_t>();
    c[0] += 1;
    c[2] = c[1];
    if (c[0] % kappa == 0) {
      c[1] = detail::next_philox_seed(c[1]);
    }
  }
}

void keep_unless_resampled_cpu(at::Tensor& transforms, at::TensorList counters, int64_t kappa) {
  detail::check_keep_unless_resampled_args(transforms, counters, kappa);
  const int64_t r = transforms.size(1);
  float* t = transforms.data_ptr<float>();
  for (size_t g = 0; g < counters.size(); ++g) {
    if (counters[g].data_ptr<int64_t>()[0] % kappa != 0) {
      float* m = t + static_cast<int64_t>(g) * r * r;
      std::fill(m, m + r * r, 0.0f);
      for (int64_t d = 0; d < r; ++d) {
        m[d * r + d] = 1.0f;
      }
    }
  }
}

} // namespace

TORCH_LIBRARY_IMPL(flora, CPU, m) {
  m.impl("gradient_sums_", &gradient_sums_cpu);
  m.impl("factored_step_", &factored_step_cpu);
  m.impl("full_step_", &full_step_cpu);
  m.impl("factored_normalize_", &factored_normalize_cpu);
  m.impl("apply_updates_", &apply_updates_cpu);
  m.impl("philox_normal_batch_", &philox_normal_batch_cpu);
  m.impl("gather_moments_", &gather_moments_cpu);
  m.impl("scatter_moments_", &scatter_moments_cpu);
  m.impl("advance_counters_", &advance_counters_cpu);
  m.impl("keep_unless_resampled_", &keep_unless_resampled_cpu);
}

} // namespace flora::cpu
