// CUDA kernels of flora::philox_normal_ and flora::philox_bits_: cuRAND's
// Philox4_32_10 device API (curand_init(seed, subsequence = row,
// offset = 4 * block), curand4) and the Box-Muller transform shared with the
// CPU kernels (kernels/philox.h). A value depends only on (seed, row, block),
// never on the launch configuration, so every GPU model gives the same matrix.

#include "common.cuh"

#include "kernels/checks.h"
#include "kernels/contiguous.h"
#include "kernels/dtypes.h"
#include "kernels/philox.h"

#include <torch/library.h>

#include <curand_kernel.h>

namespace flora::cuda {
namespace {

__device__ __forceinline__ uint4 draws(uint64_t seed, int64_t row, int64_t block) {
  curandStatePhilox4_32_10_t state;
  curand_init(seed, static_cast<unsigned long long>(row), 4ull * static_cast<unsigned long long>(block), &state);
  return curand4(&state);
}

// Calls fill(row, block, first element, lanes in the block) for every
// 4-wide block of a contiguous (rows, cols) matrix, across the grid.
template <typename Fill>
__device__ __forceinline__ void for_each_block(int64_t rows, int64_t cols, const Fill& fill) {
  const int64_t blocks = (cols + 3) / 4;
  grid_stride(rows * blocks, [&](int64_t t) {
    const int64_t row = t / blocks;
    const int64_t block = t - row * blocks;
    const int64_t col = block * 4;
    fill(row, block, row * cols + col, static_cast<int>(cols - col < 4 ? cols - col : 4));
  });
}

template <typename scalar_t>
__global__ void philox_normal_kernel(scalar_t* out, int64_t rows, int64_t cols, uint64_t seed, float scale) {
  for_each_block(rows, cols, [&](int64_t row, int64_t block, int64_t offset, int count) {
    const uint4 d = draws(seed, row, block);
    float n[4];
    flora::detail::box_muller(d.x, d.y, n[0], n[1]);
    flora::detail::box_muller(d.z, d.w, n[2], n[3]);
#pragma unroll
    for (int lane = 0; lane < 4; ++lane) {
      if (lane < count) {
        out[offset + lane] = static_cast<scalar_t>(n[lane] * scale);
      }
    }
  });
}

__global__ void philox_bits_kernel(int32_t* out, int64_t rows, int64_t cols, uint64_t seed) {
  for_each_block(rows, cols, [&](int64_t row, int64_t block, int64_t offset, int count) {
    const uint4 d = draws(seed, row, block);
    const uint32_t lanes[4] = {d.x, d.y, d.z, d.w};
    for (int lane = 0; lane < count; ++lane) {
      out[offset + lane] = static_cast<int32_t>(lanes[lane]);
    }
  });
}

int64_t block_count(const at::Tensor& out) {
  return out.size(0) * ((out.size(1) + 3) / 4);
}

at::Tensor& philox_normal_cuda(at::Tensor& out, int64_t seed, double scale) {
  detail::check_philox_normal_args(out);
  const int64_t work = block_count(out);
  if (work == 0) {
    return out;
  }
  const c10::cuda::CUDAGuard guard(out.device());
  const detail::ContiguousWorkingCopy target(out);
  FLORA_DISPATCH_PARAM_TYPES(out.scalar_type(), "philox_normal_cuda", [&] {
    philox_normal_kernel<scalar_t><<<elementwise_grid(work), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        target.get().data_ptr<scalar_t>(), out.size(0), out.size(1), static_cast<uint64_t>(seed),
        static_cast<float>(scale));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  target.write_back();
  return out;
}

at::Tensor& philox_bits_cuda(at::Tensor& out, int64_t seed) {
  detail::check_philox_bits_args(out);
  const int64_t work = block_count(out);
  if (work == 0) {
    return out;
  }
  const c10::cuda::CUDAGuard guard(out.device());
  const detail::ContiguousWorkingCopy target(out);
  philox_bits_kernel<<<elementwise_grid(work), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      target.get().data_ptr<int32_t>(), out.size(0), out.size(1), static_cast<uint64_t>(seed));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  target.write_back();
  return out;
}

} // namespace

TORCH_LIBRARY_IMPL(flora, CUDA, m) {
  m.impl("philox_normal_", &philox_normal_cuda);
  m.impl("philox_bits_", &philox_bits_cuda);
}

} // namespace flora::cuda
