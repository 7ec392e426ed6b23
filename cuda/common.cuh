#pragma once

// Building blocks of flora's CUDA kernels: launch sizes, index loops, dtype
// conversion and deterministic block reductions. Reductions never use
// atomics: partial results go to fixed slots and are combined in a fixed
// order, so a result does not change from run to run.

#include "kernels/ceil_div.h"

#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>

namespace flora::cuda {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

/// A grid for a grid-stride loop over `work` items: enough blocks to fill the
/// device, no more than the work needs. (Only for work whose results do not
/// depend on the grid: never for reductions.)
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

using detail::ceil_div;

/// Calls f(i) for every i in [0, n) across the whole grid.
template <typename F>
__device__ __forceinline__ void grid_stride(int64_t n, const F& f) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    f(i);
  }
}

/// Calls f(i) for every i in [begin, end) across the threads of one block.
template <typename F>
__device__ __forceinline__ void block_stride(int64_t begin, int64_t end, const F& f) {
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    f(i);
  }
}

template <typename T>
__device__ __forceinline__ float to_float(T v) {
  return static_cast<float>(v);
}

template <typename T>
__device__ __forceinline__ T from_float(float v) {
  return static_cast<T>(v);
}

struct SumOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const {
    return a + b;
  }
};

/// fmaxf returns the non-NaN operand: NaN never wins a max.
struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const {
    return fmaxf(a, b);
  }
};

template <typename T, typename Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    v = op(v, __shfl_down_sync(0xffffffffu, v, offset));
  }
  return v;
}

/// Reduces over the block (kThreads threads) in a fixed order; the result is
/// valid in thread 0. `scratch` holds kWarps values; `identity` is op's.
template <typename T, typename Op>
__device__ __forceinline__ T block_reduce(T v, T* scratch, Op op, T identity) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  v = warp_reduce(v, op);
  if (lane == 0) {
    scratch[warp] = v;
  }
  __syncthreads();
  T total = identity;
  if (warp == 0) {
    total = lane < kWarps ? scratch[lane] : identity;
    total = warp_reduce(total, op);
  }
  __syncthreads(); // scratch may be reused by the caller
  return total;
}

__device__ __forceinline__ float warp_sum(float v) {
  return warp_reduce(v, SumOp{});
}

__device__ __forceinline__ float block_sum(float v, float* scratch) {
  return block_reduce(v, scratch, SumOp{}, 0.f);
}

/// The same in double (sums whose terms the CPU adds in double).
__device__ __forceinline__ double block_sum(double v, double* scratch) {
  return block_reduce(v, scratch, SumOp{}, 0.0);
}

/// Max over the block of non-negative values (0 for none); NaN never wins.
__device__ __forceinline__ float block_max(float v, float* scratch) {
  return block_reduce(v, scratch, MaxOp{}, 0.f);
}

} // namespace flora::cuda
