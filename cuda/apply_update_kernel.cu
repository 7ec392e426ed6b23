// CUDA kernel of flora::apply_update_: one pass reduces RMS(param) and
// RMS(update) together into per-block partials, ATen adds the partials, and
// one elementwise pass clips, scales, decays and writes the parameter. The
// step size and clip factor are computed from the two sums on the device, so
// nothing waits for the host.

#include "common.cuh"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

namespace flora::cuda {
namespace {

template <typename T>
__global__ void square_sums_kernel(
    const T* __restrict__ param, const float* __restrict__ update, int64_t n, float* __restrict__ partial) {
  __shared__ float scratch[kWarps];
  float sp = 0.f, su = 0.f;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float p = to_float(param[idx]);
    const float u = update[idx];
    sp = fmaf(p, p, sp);
    su = fmaf(u, u, su);
  }
  sp = block_sum(sp, scratch);
  su = block_sum(su, scratch);
  if (threadIdx.x == 0) {
    partial[2 * blockIdx.x] = sp;
    partial[2 * blockIdx.x + 1] = su;
  }
}

struct StepScalars {
  float lr;
  float eps2;
  bool scale_parameter;
  float clip_threshold;
  float neg_weight_decay;
  float sqrt_n;
};

// The order of operations is the CPU kernel's: update / max(1, RMS(u)/clip),
// times lr_t; p + (-wd lr_t) p; minus the update.
template <typename T>
__global__ void write_kernel(
    T* __restrict__ param, const float* __restrict__ update, int64_t n, const float* __restrict__ sums,
    StepScalars s, float* __restrict__ rms_out) {
  const float rms_p = __fdiv_rn(sqrtf(sums[0]), s.sqrt_n);
  const float rms_u = __fdiv_rn(sqrtf(sums[1]), s.sqrt_n);
  const float lr_t = s.scale_parameter ? __fmul_rn(fmaxf(rms_p, s.eps2), s.lr) : s.lr;
  const float denom = fmaxf(__fdiv_rn(rms_u, s.clip_threshold), 1.f);
  const float decay = __fmul_rn(lr_t, s.neg_weight_decay);
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    *rms_out = rms_p;
  }
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float u = __fmul_rn(__fdiv_rn(update[idx], denom), lr_t);
    float p = to_float(param[idx]);
    if (s.neg_weight_decay != 0.f) {
      p = fmaf(decay, p, p);
    }
    param[idx] = from_float<T>(__fsub_rn(p, u));
  }
}

at::Tensor apply_update_cuda(
    at::Tensor& param, at::Tensor& update, double lr, double eps2, bool scale_parameter, double clip_threshold,
    double weight_decay) {
  TORCH_CHECK(
      update.sizes() == param.sizes(), "apply_update_: update has shape ", update.sizes(), ", the parameter ",
      param.sizes());
  TORCH_CHECK(update.scalar_type() == at::kFloat, "apply_update_: update must be float32, got ", update.scalar_type());
  check_cuda_tensor(param, "apply_update_", "param");
  check_cuda_tensor(update, "apply_update_", "update");
  const c10::cuda::CUDAGuard guard(param.device());
  const int64_t n = param.numel();
  const auto fp32 = param.options().dtype(at::kFloat);
  at::Tensor rms = at::empty({}, fp32);
  if (n == 0) {
    return rms.fill_(0);
  }
  const int blocks = reduction_grid(n);
  at::Tensor partial = at::empty({blocks, 2}, fp32);
  const auto stream = at::cuda::getCurrentCUDAStream();
  const StepScalars scalars{
      static_cast<float>(lr),
      static_cast<float>(eps2),
      scale_parameter,
      static_cast<float>(clip_threshold),
      static_cast<float>(-weight_decay),
      static_cast<float>(std::sqrt(static_cast<double>(n)))};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, param.scalar_type(), "apply_update_cuda", [&] {
    square_sums_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        param.data_ptr<scalar_t>(), update.data_ptr<float>(), n, partial.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const at::Tensor sums = partial.sum(0);
    write_kernel<scalar_t><<<elementwise_grid(n), kThreads, 0, stream>>>(
        param.data_ptr<scalar_t>(), update.data_ptr<float>(), n, sums.data_ptr<float>(), scalars,
        rms.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return rms;
}

} // namespace

TORCH_LIBRARY_IMPL(flora, CUDA, m) {
  m.impl("apply_update_", &apply_update_cuda);
}

} // namespace flora::cuda
