// CPU kernels of Adafactor's second moment. They run the same sequence of
// ATen operations as flora-opt 0.0.3, so that results agree with it to the
// last bit on the CPU. ATen's operations take any strides, so no working copy
// is needed.

#include "kernels/checks.h"

#include <ATen/ATen.h>
#include <torch/library.h>

namespace flora::cpu {
namespace {

at::Tensor squared_plus_eps(const at::Tensor& grad, double eps1) {
  return grad.square().add_(eps1);
}

at::Tensor second_moment_factored_cpu(
    const at::Tensor& grad_in, at::Tensor& row, at::Tensor& col, double beta2, double eps1) {
  detail::check_second_moment_factored_args(grad_in, row, col);
  const at::Tensor grad = grad_in.to(at::kFloat);
  at::Tensor u = squared_plus_eps(grad, eps1);
  row.mul_(beta2).add_(u.mean(-1), 1.0 - beta2);
  col.mul_(beta2).add_(u.mean(-2), 1.0 - beta2);
  const at::Tensor row_factor = (row / row.mean(-1, /*keepdim=*/true)).rsqrt_().unsqueeze(-1);
  const at::Tensor col_factor = col.unsqueeze(-2).rsqrt();
  at::mul_out(u, row_factor, col_factor); // u's storage is free again
  return u.mul_(grad);
}

at::Tensor second_moment_full_cpu(const at::Tensor& grad_in, at::Tensor& exp_avg_sq, double beta2, double eps1) {
  detail::check_second_moment_full_args(grad_in, exp_avg_sq);
  const at::Tensor grad = grad_in.to(at::kFloat);
  at::Tensor u = squared_plus_eps(grad, eps1);
  exp_avg_sq.mul_(beta2).add_(u, 1.0 - beta2);
  at::rsqrt_out(u, exp_avg_sq);
  return u.mul_(grad);
}

} // namespace

TORCH_LIBRARY_IMPL(flora, CPU, m) {
  m.impl("second_moment_factored_", &second_moment_factored_cpu);
  m.impl("second_moment_full_", &second_moment_full_cpu);
}

} // namespace flora::cpu
