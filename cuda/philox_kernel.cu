// CUDA kernels of flora::philox_normal_ and flora::philox_bits_: cuRAND's
// Philox4_32_10 device API (curand_init(seed, subsequence = row,
// offset = 4 * block), curand4) and the Box-Muller transform shared with the
// CPU kernels (src/philox.h). A value depends only on (seed, row, block), never
// on the launch configuration, so every GPU model gives the same matrix.

#include "../src/philox.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <curand_kernel.h>

namespace flora::cuda {
namespace {

constexpr int kThreads = 256;

int grid_for(int64_t work) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((work + kThreads - 1) / kThreads, sms * 16)));
}

__device__ __forceinline__ uint4 draws(uint64_t seed, int64_t row, int64_t block) {
  curandStatePhilox4_32_10_t state;
  curand_init(seed, static_cast<unsigned long long>(row), 4ull * static_cast<unsigned long long>(block), &state);
  return curand4(&state);
}

// Calls fill(row, block, first element, lanes in the block) for every
// 4-wide block of a (rows, cols) matrix, grid-stride: a value depends only on
// (row, block), never on the launch configuration.
template <typename Fill>
__device__ __forceinline__ void for_each_block(int64_t rows, int64_t cols, const Fill& fill) {
  const int64_t blocks = (cols + 3) / 4;
  const int64_t total = rows * blocks;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = t / blocks;
    const int64_t block = t - row * blocks;
    const int64_t col = block * 4;
    fill(row, block, row * cols + col, static_cast<int>(cols - col < 4 ? cols - col : 4));
  }
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

at::Tensor& philox_normal_cuda(at::Tensor& out, int64_t seed, double scale) {
  TORCH_CHECK(out.dim() == 2, "philox_normal_: expected a 2-d tensor, got ", out.dim(), " dimensions");
  TORCH_CHECK(
      at::isFloatingType(out.scalar_type()), "philox_normal_: expected a floating tensor, got ", out.scalar_type());
  const c10::cuda::CUDAGuard guard(out.device());
  at::Tensor target = out.is_contiguous() ? out : at::empty(out.sizes(), out.options());
  const int64_t rows = target.size(0), cols = target.size(1);
  const int64_t work = rows * ((cols + 3) / 4);
  if (work > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, target.scalar_type(), "philox_normal_cuda", [&] {
      philox_normal_kernel<scalar_t><<<grid_for(work), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          target.data_ptr<scalar_t>(), rows, cols, static_cast<uint64_t>(seed), static_cast<float>(scale));
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (!target.is_same(out)) {
    out.copy_(target);
  }
  return out;
}

at::Tensor& philox_bits_cuda(at::Tensor& out, int64_t seed) {
  TORCH_CHECK(out.dim() == 2, "philox_bits_: expected a 2-d tensor, got ", out.dim(), " dimensions");
  TORCH_CHECK(out.scalar_type() == at::kInt, "philox_bits_: expected an int32 tensor, got ", out.scalar_type());
  const c10::cuda::CUDAGuard guard(out.device());
  at::Tensor target = out.is_contiguous() ? out : at::empty(out.sizes(), out.options());
  const int64_t rows = target.size(0), cols = target.size(1);
  const int64_t work = rows * ((cols + 3) / 4);
  if (work > 0) {
    philox_bits_kernel<<<grid_for(work), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        target.data_ptr<int32_t>(), rows, cols, static_cast<uint64_t>(seed));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (!target.is_same(out)) {
    out.copy_(target);
  }
  return out;
}

} // namespace

TORCH_LIBRARY_IMPL(flora, CUDA, m) {
  m.impl("philox_normal_", &philox_normal_cuda);
  m.impl("philox_bits_", &philox_bits_cuda);
}

} // namespace flora::cuda
