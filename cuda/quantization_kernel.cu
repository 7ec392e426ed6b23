// CUDA kernels of flora::quantize_blockwise_ and flora::dequantize_blockwise:
// the same arithmetic as the CPU kernels (src/quantization_rule.h), so codes
// agree bit for bit. One thread block per quantization block: a max
// reduction (NaN never wins), then the code search in shared memory.

#include "../src/kernel_checks.h"
#include "../src/quantization_rule.h"
#include "common.cuh"

#include <ATen/ops/empty.h>
#include <torch/library.h>

namespace flora::cuda {
namespace {

__global__ void quantize_kernel(
    const float* __restrict__ x, int64_t n, int64_t block_size, const float* __restrict__ code,
    uint8_t* __restrict__ q, float* __restrict__ absmax) {
  __shared__ float map[256];
  __shared__ float scratch[kWarps];
  __shared__ float block_max;
  for (int i = threadIdx.x; i < 256; i += blockDim.x) {
    map[i] = code[i];
  }
  const int64_t first = static_cast<int64_t>(blockIdx.x) * block_size;
  const int64_t last = first + block_size < n ? first + block_size : n;
  float m = 0.0f;
  for (int64_t i = first + threadIdx.x; i < last; i += blockDim.x) {
    m = fmaxf(m, fabsf(x[i])); // fmaxf returns the non-NaN operand
  }
  // Block max through the warps.
  for (int offset = 16; offset > 0; offset >>= 1) {
    m = fmaxf(m, __shfl_down_sync(0xffffffffu, m, offset));
  }
  if ((threadIdx.x & 31) == 0) {
    scratch[threadIdx.x >> 5] = m;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
    for (int w = 0; w < kWarps; ++w) {
      total = fmaxf(total, scratch[w]);
    }
    block_max = total;
    absmax[blockIdx.x] = total;
  }
  __syncthreads();
  const float total = block_max;
  if (total == 0.0f) {
    for (int64_t i = first + threadIdx.x; i < last; i += blockDim.x) {
      q[i] = 0;
    }
    return;
  }
  const float inverse = __fdiv_rn(1.0f, total);
  for (int64_t i = first + threadIdx.x; i < last; i += blockDim.x) {
    q[i] = flora::detail::nearest_code(map, __fmul_rn(x[i], inverse));
  }
}

__global__ void dequantize_kernel(
    const uint8_t* __restrict__ q, const float* __restrict__ absmax, const float* __restrict__ code, int64_t n,
    int64_t block_size, float* __restrict__ out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = __fmul_rn(code[q[i]], absmax[i / block_size]);
  }
}

void quantize_blockwise_cuda(
    const at::Tensor& x_in, at::Tensor& codes, at::Tensor& absmax, const at::Tensor& code, int64_t block_size) {
  const int64_t blocks = detail::check_quantize_args(x_in, codes, absmax, code, block_size);
  const int64_t n = x_in.numel();
  if (n == 0) {
    return;
  }
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.to(at::kFloat).contiguous();
  quantize_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      x.data_ptr<float>(), n, block_size, code.data_ptr<float>(), codes.data_ptr<uint8_t>(), absmax.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor dequantize_blockwise_cuda(
    const at::Tensor& codes_in, const at::Tensor& absmax_in, const at::Tensor& code, int64_t block_size) {
  detail::check_dequantize_args(codes_in, absmax_in, code, block_size);
  const int64_t n = codes_in.numel();
  const c10::cuda::CUDAGuard guard(codes_in.device());
  const at::Tensor codes = codes_in.contiguous();
  const at::Tensor absmax = absmax_in.contiguous();
  at::Tensor out = at::empty(codes.sizes(), codes.options().dtype(at::kFloat));
  if (n > 0) {
    dequantize_kernel<<<elementwise_grid(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        codes.data_ptr<uint8_t>(), absmax.data_ptr<float>(), code.data_ptr<float>(), n, block_size,
        out.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out;
}

} // namespace

TORCH_LIBRARY_IMPL(flora, CUDA, m) {
  m.impl("quantize_blockwise_", &quantize_blockwise_cuda);
  m.impl("dequantize_blockwise", &dequantize_blockwise_cuda);
}

} // namespace flora::cuda
