// CUDA kernels of flora::quantize_blockwise_ and flora::dequantize_blockwise:
// the same arithmetic as the CPU kernels (kernels/quantization_rule.h), so
// codes agree bit for bit. One thread block per quantization block: a max
// reduction (NaN never wins), then the code search in shared memory.
//
// The code map travels as a launch argument (code_map.cuh).

#include "code_map.cuh"
#include "common.cuh"

#include "kernels/checks.h"
#include "kernels/contiguous.h"

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <limits>

namespace flora::cuda {
namespace {

__global__ void quantize_blockwise_kernel(
    const float* __restrict__ x, int64_t n, int64_t block_size, const __grid_constant__ CodeMap code,
    uint8_t* __restrict__ q, float* __restrict__ absmax) {
  __shared__ float map[256];
  __shared__ float scratch[kWarps];
  __shared__ float block_absmax;
  stage_code_map(code, map);
  const int64_t first = static_cast<int64_t>(blockIdx.x) * block_size;
  const int64_t last = first + block_size < n ? first + block_size : n;
  float m = 0.0f;
  block_stride(first, last, [&](int64_t i) { m = fmaxf(m, fabsf(x[i])); });
  m = block_max(m, scratch);
  if (threadIdx.x == 0) {
    block_absmax = m;
    absmax[blockIdx.x] = m;
  }
  __syncthreads();
  const float total = block_absmax;
  const float inverse = inverse_absmax(total);
  block_stride(first, last, [&](int64_t i) { q[i] = quantized(map, x[i], total, inverse); });
}

__global__ void dequantize_blockwise_kernel(
    const uint8_t* __restrict__ q, const float* __restrict__ absmax, const __grid_constant__ CodeMap code, int64_t n,
    int64_t block_size, float* __restrict__ out) {
  __shared__ float map[256];
  stage_code_map(code, map);
  grid_stride(n, [&](int64_t i) { out[i] = dequantized(map, q[i], absmax[i / block_size]); });
}

void quantize_blockwise_cuda(
    const at::Tensor& x_in, at::Tensor& codes_out, at::Tensor& absmax_out, const at::Tensor& code,
    int64_t block_size) {
  const int64_t blocks = detail::check_quantize_blockwise_args(x_in, codes_out, absmax_out, code, block_size);
  const int64_t n = x_in.numel();
  if (n == 0) {
    return;
  }
  TORCH_CHECK(
      blocks <= std::numeric_limits<int32_t>::max(), "quantize_blockwise_: x has ", blocks,
      " blocks of block_size ", block_size, ", more than the grid allows");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.to(at::kFloat).contiguous();
  const detail::ContiguousWorkingCopy codes(codes_out);
  const detail::ContiguousWorkingCopy absmax(absmax_out);
  quantize_blockwise_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      x.data_ptr<float>(), n, block_size, code_map_of(code), codes.get().data_ptr<uint8_t>(),
      absmax.get().data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  codes.write_back();
  absmax.write_back();
}

at::Tensor dequantize_blockwise_cuda(
    const at::Tensor& codes_in, const at::Tensor& absmax_in, const at::Tensor& code, int64_t block_size) {
  detail::check_dequantize_blockwise_args(codes_in, absmax_in, code, block_size);
  const int64_t n = codes_in.numel();
  const c10::cuda::CUDAGuard guard(codes_in.device());
  const at::Tensor codes = codes_in.contiguous();
  const at::Tensor absmax = absmax_in.contiguous();
  at::Tensor out = at::empty(codes.sizes(), codes.options().dtype(at::kFloat));
  if (n > 0) {
    dequantize_blockwise_kernel<<<elementwise_grid(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        codes.data_ptr<uint8_t>(), absmax.data_ptr<float>(), code_map_of(code), n, block_size,
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
