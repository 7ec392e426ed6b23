// Schemas and C++ entry points of the fused step's operators (fused_ops.h).
// Kernels register per backend: src/cpu/fused_step_kernel.cpp, cuda/.

#include "fused_ops.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

namespace flora::ops {

TORCH_LIBRARY_FRAGMENT(flora, m) {
  m.def("gradient_sums_(Tensor[] params, Tensor[] grads, bool factored, Tensor(a!) flags, Tensor(b!) sums) -> ()");
  m.def(
      "factored_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avg_sq_rows, "
      "Tensor(c!)[] exp_avg_sq_cols, Tensor(d!)[] exp_avgs, Tensor(e!)[] exp_avg_absmaxs, Tensor(f!)[] rms, "
      "Tensor(g!) sums, int[] steps, Tensor[] counters, Tensor? lr_tensor, float[] hyper, int block_size, "
      "Tensor? code_map, int[] rounding_keys) -> ()");
  m.def(
      "full_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avg_sqs, Tensor(c!)[] exp_avg_sq_absmaxs, "
      "Tensor(d!)[] exp_avgs, Tensor(e!)[] exp_avg_absmaxs, Tensor(f!)[] rms, Tensor(g!) sums, int[] steps, "
      "Tensor[] counters, Tensor? lr_tensor, float[] hyper, int block_size, Tensor? code_map, "
      "int[] rounding_keys) -> ()");
  m.def(
      "factored_normalize_(Tensor[] grads, Tensor(a!)[] exp_avg_sq_rows, Tensor(b!)[] exp_avg_sq_cols, "
      "Tensor(c!) sums, int[] steps, Tensor[] counters, float eps1, float decay_rate, Tensor(d!) out) -> ()");
  m.def(
      "apply_updates_(Tensor(a!)[] params, Tensor updates, Tensor(b!)[] rms, Tensor(c!) sums, int[] steps, "
      "Tensor[] counters, Tensor? lr_tensor, float[] hyper, int[] rounding_keys) -> ()");
  m.def(
      "philox_normal_batch_(Tensor(a!) out, int[] seeds, Tensor[] counters, int counter_slot, int side, "
      "float scale) -> ()");
  m.def(
      "gather_moments_(Tensor[] moments, Tensor[] absmaxes, int block_size, Tensor? code_map, Tensor(a!) out) -> ()");
  m.def(
      "scatter_moments_(Tensor src, Tensor? mix, float beta, Tensor(a!)[] moments, Tensor(b!)[] absmaxes, "
      "int block_size, Tensor? code_map) -> ()");
  m.def("advance_counters_(Tensor(a!)[] counters, int kappa) -> ()");
  m.def("keep_unless_resampled_(Tensor(a!) transforms, Tensor[] counters, int kappa) -> ()");
}

namespace {

template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// Raw kernels write through data pointers, which autograd cannot see: bump
// the version counters as ATen's in-place ops do.
void bump(const at::Tensor& t) {
  if (t.defined() && !t.is_inference()) {
    torch::autograd::impl::bump_version(t);
  }
}
void bump(at::TensorList list) {
  for (const auto& t : list) {
    bump(t);
  }
}

using List = at::TensorList;
using Ints = c10::ArrayRef<int64_t>;
using Floats = c10::ArrayRef<double>;
using OptTensor = const std::optional<at::Tensor>&;

} // namespace

std::vector<double> hyper_list(const detail::StepHyper& h) {
  return {h.lr,
          h.eps1,
          h.eps2,
          h.beta1,
          h.decay_rate,
          h.clip_threshold,
          h.weight_decay,
          h.scale_parameter ? 1.0 : 0.0,
          h.relative_step ? 1.0 : 0.0,
          h.warmup_init ? 1.0 : 0.0};
}

detail::StepHyper hyper_from(Floats list) {
  TORCH_CHECK(list.size() == 10, "flora fused step: hyper must have 10 entries, got ", list.size());
  detail::StepHyper h;
  h.lr = list[0];
  h.eps1 = list[1];
  h.eps2 = list[2];
  h.beta1 = list[3];
  h.decay_rate = list[4];
  h.clip_threshold = list[5];
  h.weight_decay = list[6];
  h.scale_parameter = list[7] != 0.0;
  h.relative_step = list[8] != 0.0;
  h.warmup_init = list[9] != 0.0;
  return h;
}

void gradient_sums_(List params, List grads, bool factored, at::Tensor& flags, at::Tensor& sums) {
  static const auto handle = op<void(List, List, bool, at::Tensor&, at::Tensor&)>("flora::gradient_sums_");
  handle.call(params, grads, factored, flags, sums);
  bump(flags);
  bump(sums);
}

void factored_step_(
    List params, List grads, List rows, List cols, List exp_avgs, List exp_avg_absmaxs, List rms, at::Tensor& sums,
    Ints steps, List counters, OptTensor lr_tensor, const detail::StepHyper& hyper, int64_t block_size,
    OptTensor code_map, Ints rounding_keys) {
  static const auto handle = op<void(
      List, List, List, List, List, List, List, at::Tensor&, Ints, List, OptTensor, Floats, int64_t, OptTensor, Ints)>(
      "flora::factored_step_");
  const auto h = hyper_list(hyper);
  handle.call(
      params, grads, rows, cols, exp_avgs, exp_avg_absmaxs, rms, sums, steps, counters, lr_tensor, h, block_size,
      code_map, rounding_keys);
  for (const List& list : {params, rows, cols, exp_avgs, exp_avg_absmaxs, rms}) {
    bump(list);
  }
  bump(sums);
}

void full_step_(
    List params, List grads, List exp_avg_sqs, List exp_avg_sq_absmaxs, List exp_avgs, List exp_avg_absmaxs, List rms,
    at::Tensor& sums, Ints steps, List counters, OptTensor lr_tensor, const detail::StepHyper& hyper,
    int64_t block_size, OptTensor code_map, Ints rounding_keys) {
  static const auto handle = op<void(
      List, List, List, List, List, List, List, at::Tensor&, Ints, List, OptTensor, Floats, int64_t, OptTensor, Ints)>(
      "flora::full_step_");
  const auto h = hyper_list(hyper);
  handle.call(
      params, grads, exp_avg_sqs, exp_avg_sq_absmaxs, exp_avgs, exp_avg_absmaxs, rms, sums, steps, counters,
      lr_tensor, h, block_size, code_map, rounding_keys);
  for (const List& list : {params, exp_avg_sqs, exp_avg_sq_absmaxs, exp_avgs, exp_avg_absmaxs, rms}) {
    bump(list);
  }
  bump(sums);
}

void factored_normalize_(
    List grads, List rows, List cols, at::Tensor& sums, Ints steps, List counters, double eps1, double decay_rate,
    at::Tensor& out) {
  static const auto handle = op<void(List, List, List, at::Tensor&, Ints, List, double, double, at::Tensor&)>(
      "flora::factored_normalize_");
  handle.call(grads, rows, cols, sums, steps, counters, eps1, decay_rate, out);
  bump(rows);
  bump(cols);
  bump(sums);
  bump(out);
}

void apply_updates_(
    List params, const at::Tensor& updates, List rms, at::Tensor& sums, Ints steps, List counters,
    OptTensor lr_tensor, const detail::StepHyper& hyper, Ints rounding_keys) {
  static const auto handle = op<void(List, const at::Tensor&, List, at::Tensor&, Ints, List, OptTensor, Floats, Ints)>(
      "flora::apply_updates_");
  const auto h = hyper_list(hyper);
  handle.call(params, updates, rms, sums, steps, counters, lr_tensor, h, rounding_keys);
  bump(params);
  bump(rms);
  bump(sums);
}

void philox_normal_batch_(
    at::Tensor& out, Ints seeds, List counters, int64_t counter_slot, SeedSide side, double scale) {
  static const auto handle =
      op<void(at::Tensor&, Ints, List, int64_t, int64_t, double)>("flora::philox_normal_batch_");
  handle.call(out, seeds, counters, counter_slot, static_cast<int64_t>(side), scale);
  bump(out);
}

void gather_moments_(List moments, List absmaxes, int64_t block_size, OptTensor code_map, at::Tensor& out) {
  static const auto handle =
      op<void(List, List, int64_t, OptTensor, at::Tensor&)>("flora::gather_moments_");
  handle.call(moments, absmaxes, block_size, code_map, out);
  bump(out);
}

void scatter_moments_(
    const at::Tensor& src, List moments, List absmaxes, int64_t block_size, OptTensor code_map, OptTensor mix,
    double beta) {
  static const auto handle =
      op<void(const at::Tensor&, OptTensor, double, List, List, int64_t, OptTensor)>("flora::scatter_moments_");
  handle.call(src, mix, beta, moments, absmaxes, block_size, code_map);
  bump(moments);
  bump(absmaxes);
}

void advance_counters_(List counters, int64_t kappa) {
  static const auto handle = op<void(List, int64_t)>("flora::advance_counters_");
  handle.call(counters, kappa);
  bump(counters);
}

void keep_unless_resampled_(at::Tensor& transforms, List counters, int64_t kappa) {
  static const auto handle = op<void(at::Tensor&, List, int64_t)>("flora::keep_unless_resampled_");
  handle.call(transforms, counters, kappa);
  bump(transforms);
}

} // namespace flora::ops
