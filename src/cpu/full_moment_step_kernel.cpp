// CPU kernel of flora::full_moment_step_: the per-parameter operators in
// sequence, so that the CPU keeps flora-opt's exact rounding. (The CUDA
// kernel fuses the list into three multi-tensor launches.)

#include "kernels/checks.h"

#include <flora/ops.h>

#include <ATen/ATen.h>
#include <torch/library.h>

namespace flora::cpu {
namespace {

std::vector<at::Tensor> full_moment_step_cpu(
    at::TensorList params, at::TensorList grads, at::TensorList exp_avg_sqs, at::TensorList exp_avgs,
    at::ArrayRef<double> beta2s, at::ArrayRef<double> lrs, double eps1, double eps2, double beta1,
    bool scale_parameter, double clip_threshold, double weight_decay) {
  detail::check_full_moment_step_args(params, grads, exp_avg_sqs, exp_avgs, beta2s, lrs);
  const size_t n = params.size();
  std::vector<at::Tensor> rms;
  rms.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    at::Tensor v = exp_avg_sqs[i];
    at::Tensor update = ops::second_moment_full_(grads[i], v, beta2s[i], eps1);
    if (!exp_avgs.empty()) {
      // (1 - b1) u + b1 m, rounded as flora-opt rounds it.
      at::Tensor m = exp_avgs[i];
      update.mul_(1.0 - beta1);
      m.mul_(beta1).add_(update);
      update.copy_(m);
    }
    at::Tensor p = params[i];
    rms.push_back(ops::apply_update_(p, update, lrs[i], eps2, scale_parameter, clip_threshold, weight_decay));
  }
  return rms;
}

} // namespace

TORCH_LIBRARY_IMPL(flora, CPU, m) {
  m.impl("full_moment_step_", &full_moment_step_cpu);
}

} // namespace flora::cpu
