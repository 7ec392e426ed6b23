// CPU kernels of Adafactor's second moment. They run the same sequence of
// ATen operations as flora-opt 0.0.3, so that results agree with it to the
// last bit on the CPU.

#include <ATen/ATen.h>
#include <torch/library.h>

namespace flora::cpu {
namespace {

void check_state(const at::Tensor& state, const at::Tensor& grad, at::IntArrayRef shape, const char* name) {
  TORCH_CHECK(
      state.sizes() == shape, name, " has shape ", state.sizes(), ", expected ", shape,
      " for a gradient of shape ", grad.sizes());
  TORCH_CHECK(state.scalar_type() == at::kFloat, name, " must be float32, got ", state.scalar_type());
  TORCH_CHECK(state.device() == grad.device(), name, " is on ", state.device(), ", the gradient on ", grad.device());
}

at::Tensor squared_plus_eps(const at::Tensor& grad, double eps1) {
  return grad.square().add_(eps1);
}

at::Tensor second_moment_factored_cpu(
    const at::Tensor& grad_in, at::Tensor& row, at::Tensor& col, double beta2, double eps1) {
  TORCH_CHECK(grad_in.dim() == 2, "second_moment_factored_: expected a 2-d gradient, got shape ", grad_in.sizes());
  check_state(row, grad_in, {grad_in.size(0)}, "exp_avg_sq_row");
  check_state(col, grad_in, {grad_in.size(1)}, "exp_avg_sq_col");
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
  check_state(exp_avg_sq, grad_in, grad_in.sizes(), "exp_avg_sq");
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
