// Every flora operator's schema, defined once. Kernels register themselves
// per backend: src/cpu/*.cpp (CPU) and cuda/*.cu (CUDA).

#include <flora/ops.h>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

namespace flora::ops {

TORCH_LIBRARY(flora, m) {
  m.def("philox_normal_(Tensor(a!) self, int seed, float scale) -> Tensor(a!)");
  m.def("philox_bits_(Tensor(a!) self, int seed) -> Tensor(a!)");
  m.def(
      "second_moment_factored_(Tensor grad, Tensor(a!) exp_avg_sq_row, "
      "Tensor(b!) exp_avg_sq_col, float beta2, float eps1) -> Tensor");
  m.def("second_moment_full_(Tensor grad, Tensor(a!) exp_avg_sq, float beta2, float eps1) -> Tensor");
  m.def(
      "apply_update_(Tensor(a!) param, Tensor(b!) update, float lr, float eps2, "
      "bool scale_parameter, float clip_threshold, float weight_decay) -> Tensor");
  m.def(
      "full_moment_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avg_sqs, "
      "Tensor(c!)[] exp_avgs, float[] beta2s, float[] lrs, float eps1, float eps2, float beta1, "
      "bool scale_parameter, float clip_threshold, float weight_decay) -> Tensor[]");
  m.def(
      "quantize_blockwise_(Tensor x, Tensor(a!) codes, Tensor(b!) absmax, Tensor code, int block_size) -> ()");
  m.def("dequantize_blockwise(Tensor codes, Tensor absmax, Tensor code, int block_size) -> Tensor");
}

namespace {

template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// Raw kernels write through data pointers, which autograd cannot see; bump
// the version counters so that a tensor saved for backward and then updated
// is detected, as it is for ATen's in-place ops.
void bump(const torch::Tensor& t) {
  if (t.defined() && !t.is_inference()) {
    torch::autograd::impl::bump_version(t);
  }
}

} // namespace

torch::Tensor& philox_normal_(torch::Tensor& out, int64_t seed, double scale) {
  static const auto handle = op<torch::Tensor&(torch::Tensor&, int64_t, double)>("flora::philox_normal_");
  handle.call(out, seed, scale);
  bump(out);
  return out;
}

torch::Tensor& philox_bits_(torch::Tensor& out, int64_t seed) {
  static const auto handle = op<torch::Tensor&(torch::Tensor&, int64_t)>("flora::philox_bits_");
  handle.call(out, seed);
  bump(out);
  return out;
}

torch::Tensor second_moment_factored_(
    const torch::Tensor& grad, torch::Tensor& row, torch::Tensor& col, double beta2, double eps1) {
  static const auto handle =
      op<torch::Tensor(const torch::Tensor&, torch::Tensor&, torch::Tensor&, double, double)>(
          "flora::second_moment_factored_");
  auto update = handle.call(grad, row, col, beta2, eps1);
  bump(row);
  bump(col);
  return update;
}

torch::Tensor second_moment_full_(
    const torch::Tensor& grad, torch::Tensor& exp_avg_sq, double beta2, double eps1) {
  static const auto handle =
      op<torch::Tensor(const torch::Tensor&, torch::Tensor&, double, double)>("flora::second_moment_full_");
  auto update = handle.call(grad, exp_avg_sq, beta2, eps1);
  bump(exp_avg_sq);
  return update;
}

torch::Tensor apply_update_(
    torch::Tensor& param, torch::Tensor& update, double lr, double eps2, bool scale_parameter,
    double clip_threshold, double weight_decay) {
  static const auto handle =
      op<torch::Tensor(torch::Tensor&, torch::Tensor&, double, double, bool, double, double)>(
          "flora::apply_update_");
  auto rms = handle.call(param, update, lr, eps2, scale_parameter, clip_threshold, weight_decay);
  bump(param);
  bump(update);
  return rms;
}

std::vector<torch::Tensor> full_moment_step_(
    torch::TensorList params, torch::TensorList grads, torch::TensorList exp_avg_sqs,
    torch::TensorList exp_avgs, c10::ArrayRef<double> beta2s, c10::ArrayRef<double> lrs, double eps1,
    double eps2, double beta1, bool scale_parameter, double clip_threshold, double weight_decay) {
  static const auto handle = op<std::vector<torch::Tensor>(
      torch::TensorList, torch::TensorList, torch::TensorList, torch::TensorList, c10::ArrayRef<double>,
      c10::ArrayRef<double>, double, double, double, bool, double, double)>("flora::full_moment_step_");
  auto rms = handle.call(
      params, grads, exp_avg_sqs, exp_avgs, beta2s, lrs, eps1, eps2, beta1, scale_parameter, clip_threshold,
      weight_decay);
  for (const auto& list : {params, exp_avg_sqs, exp_avgs}) {
    for (const auto& t : list) {
      bump(t);
    }
  }
  return rms;
}

void quantize_blockwise_(
    const torch::Tensor& x, torch::Tensor& codes, torch::Tensor& absmax, const torch::Tensor& code,
    int64_t block_size) {
  static const auto handle =
      op<void(const torch::Tensor&, torch::Tensor&, torch::Tensor&, const torch::Tensor&, int64_t)>(
          "flora::quantize_blockwise_");
  handle.call(x, codes, absmax, code, block_size);
  bump(codes);
  bump(absmax);
}

torch::Tensor dequantize_blockwise(
    const torch::Tensor& codes, const torch::Tensor& absmax, const torch::Tensor& code, int64_t block_size) {
  static const auto handle =
      op<torch::Tensor(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, int64_t)>(
          "flora::dequantize_blockwise");
  return handle.call(codes, absmax, code, block_size);
}

} // namespace flora::ops
