// CUDA kernel of flora::apply_update_: one pass reduces RMS(param) and
// RMS(update) together into per-block partials, one block adds the partials
// in a fixed order and derives the step size and clip factor, and one
// elementwise pass clips, scales, decays and writes the parameter (and the
// applied step into `update`, as ops.h promises). Everything stays on the
// device: nothing waits for the host.

#include "common.cuh"
#include "param_step.cuh"

#include "kernels/checks.h"
#include "kernels/contiguous.h"
#include "kernels/dtypes.h"

#include <ATen/ops/empty.h>
#include <torch/library.h>

namespace flora::cuda {
namespace {

template <typename T>
__global__ void update_square_sums_kernel(
    const T* __restrict__ param, const float* __restrict__ update, int64_t n, float* __restrict__ partial) {
  __shared__ float scratch[kWarps];
  float sp = 0.f, su = 0.f;
  grid_stride(n, [&](int64_t i) {
    const float p = to_float(param[i]);
    const float u = update[i];
    sp = fmaf(p, p, sp);
    su = fmaf(u, u, su);
  });
  sp = block_sum(sp, scratch);
  su = block_sum(su, scratch);
  if (threadIdx.x == 0) {
    partial[2 * blockIdx.x] = sp;
    partial[2 * blockIdx.x + 1] = su;
  }
}

__global__ void update_step_size_kernel(
    const float* __restrict__ partial, int64_t count, StepSizes sizes, StepRule rule, ParamStep* __restrict__ step,
    float* __restrict__ rms_out) {
  const ParamStep s = reduce_param_step(partial, count, sizes, rule);
  if (threadIdx.x == 0) {
    *step = s;
    *rms_out = s.rms;
  }
}

template <typename T>
__global__ void update_write_kernel(
    T* __restrict__ param, float* __restrict__ update, int64_t n, const ParamStep* __restrict__ step, StepRule rule) {
  const ParamStep s = *step;
  grid_stride(n, [&](int64_t i) {
    const float applied = applied_update(update[i], s);
    update[i] = applied;
    param[i] = from_float<T>(updated_param(to_float(param[i]), applied, s, rule));
  });
}

at::Tensor apply_update_cuda(
    at::Tensor& param_out, at::Tensor& update_out, double lr, double eps2, bool scale_parameter,
    double clip_threshold, double weight_decay) {
  detail::check_apply_update_args(param_out, update_out);
  const c10::cuda::CUDAGuard guard(param_out.device());
  const int64_t n = param_out.numel();
  const auto fp32 = param_out.options().dtype(at::kFloat);
  at::Tensor rms = at::empty({}, fp32);
  if (n == 0) {
    return rms.fill_(0);
  }
  const detail::ContiguousWorkingCopy param(param_out);
  const detail::ContiguousWorkingCopy update(update_out);
  const int blocks = reduction_grid(n);
  at::Tensor partial = at::empty({blocks, 2}, fp32);
  // A ParamStep's worth of floats.
  at::Tensor step = at::empty({static_cast<int64_t>(sizeof(ParamStep) / sizeof(float))}, fp32);
  const auto stream = at::cuda::getCurrentCUDAStream();
  const StepSizes sizes = step_sizes(n, lr, eps2, scale_parameter, weight_decay);
  const StepRule rule = step_rule(eps2, scale_parameter, clip_threshold, weight_decay);
  auto* step_ptr = reinterpret_cast<ParamStep*>(step.data_ptr<float>());
  FLORA_DISPATCH_PARAM_TYPES(param_out.scalar_type(), "apply_update_cuda", [&] {
    update_square_sums_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        param.get().data_ptr<scalar_t>(), update.get().data_ptr<float>(), n, partial.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    update_step_size_kernel<<<1, kThreads, 0, stream>>>(
        partial.data_ptr<float>(), blocks, sizes, rule, step_ptr, rms.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    update_write_kernel<scalar_t><<<elementwise_grid(n), kThreads, 0, stream>>>(
        param.get().data_ptr<scalar_t>(), update.get().data_ptr<float>(), n, step_ptr, rule);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  param.write_back();
  update.write_back();
  return rms;
}

} // namespace

TORCH_LIBRARY_IMPL(flora, CUDA, m) {
  m.impl("apply_update_", &apply_update_cuda);
}

} // namespace flora::cuda
