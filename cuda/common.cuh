#pragma once

// Helpers shared by flora's CUDA kernels: launch sizes, dtype conversion and
// deterministic block reductions. Reductions never use atomics: partial sums
// go to fixed slots and are combined in a fixed order, so a result does not
// change from run to run.

#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace flora::cuda {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

/// A grid for a grid-stride loop over `work` items: enough blocks to fill the
/// device, no more than the work needs.
inline int elementwise_grid(int64_t work) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t needed = (work + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(needed, sms * 8)));
}

/// A grid for reductions: a function of the size only (never of the device),
/// so that partial sums are grouped alike on every GPU.
inline int reduction_grid(int64_t work) {
  const int64_t needed = (work + 4 * kThreads - 1) / (4 * kThreads);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(needed, 1024)));
}

template <typename T>
__device__ __forceinline__ float to_float(T v) {
  return static_cast<float>(v);
}

template <typename T>
__device__ __forceinline__ T from_float(float v) {
  return static_cast<T>(v);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  return v;
}

/// Sum over the block (kThreads threads); the result is valid in thread 0.
/// `scratch` holds kWarps floats.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  v = warp_sum(v);
  if (lane == 0) {
    scratch[warp] = v;
  }
  __syncthreads();
  float total = 0.f;
  if (warp == 0) {
    total = lane < kWarps ? scratch[lane] : 0.f;
    total = warp_sum(total);
  }
  __syncthreads(); // scratch may be reused by the caller
  return total;
}

inline void check_cuda_tensor(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got ", t.device());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

} // namespace flora::cuda
