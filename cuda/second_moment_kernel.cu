// CUDA kernels of Adafactor's second moment.
//
// Factored: one pass over the gradient writes partial sums of g^2 per row
// (per 32-column tile) and per column (per 64-row tile); the small partial
// arrays are summed by ATen (deterministically); the row/column EMAs and
// their normalisation are vector ops; a second pass writes the update
// g * rsqrt(row / mean(row)) * rsqrt(col). Two passes over the gradient is
// the least the reduction allows. Full: one elementwise pass.
//
// Gradients of any strides are read through a contiguous copy (a transposed
// view is copied once); the states go through ATen's strided operations or a
// contiguous working copy.

#include "common.cuh"

#include "kernels/checks.h"
#include "kernels/contiguous.h"
#include "kernels/dtypes.h"

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

namespace flora::cuda {
namespace {

constexpr int kTileCols = 32; // = warp size: one warp reads 32 columns of a row
constexpr int kTileRows = 64;
constexpr int kRowsPerThread = kTileRows / kWarps;
constexpr int64_t kMaxGridY = 65535; // CUDA's limit on gridDim.y

// Block (x, y) covers column tile x and row tiles y, y + gridDim.y, ...: the
// row tiles are looped over, so any number of rows fits the grid.
template <typename T>
__global__ void factored_square_sums_kernel(
    const T* __restrict__ g, int64_t rows, int64_t cols, int64_t col_tiles, int64_t row_tiles,
    float* __restrict__ row_part, float* __restrict__ col_part) {
  __shared__ float col_acc[kWarps][kTileCols + 1];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kTileCols + lane;
  for (int64_t tile = blockIdx.y; tile < row_tiles; tile += gridDim.y) {
    const int64_t row0 = tile * kTileRows;
    float col_sum = 0.f;
#pragma unroll
    for (int k = 0; k < kRowsPerThread; ++k) {
      const int64_t row = row0 + warp + static_cast<int64_t>(k) * kWarps;
      float sq = 0.f;
      if (row < rows && col < cols) {
        const float v = to_float(g[row * cols + col]);
        sq = v * v;
      }
      col_sum += sq;
      const float row_sum = warp_sum(sq);
      if (lane == 0 && row < rows) {
        row_part[row * col_tiles + blockIdx.x] = row_sum;
      }
    }
    col_acc[warp][lane] = col_sum;
    __syncthreads();
    if (warp == 0 && col < cols) {
      float s = 0.f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        s += col_acc[w][lane];
      }
      col_part[tile * cols + col] = s;
    }
    __syncthreads(); // col_acc is rewritten by the next tile
  }
}

// update = (r_i * c_j) * g_ij, the product order of the CPU kernel.
template <typename T>
__global__ void factored_update_kernel(
    const T* __restrict__ g, const float* __restrict__ r, const float* __restrict__ c, float* __restrict__ out,
    int64_t rows, int64_t cols) {
  grid_stride(rows * cols, [&](int64_t i) {
    const int64_t row = i / cols;
    const int64_t col = i - row * cols;
    out[i] = __fmul_rn(__fmul_rn(r[row], c[col]), to_float(g[i]));
  });
}

template <typename T>
__global__ void full_second_moment_kernel(
    const T* __restrict__ g, float* __restrict__ v, float* __restrict__ out, int64_t n, float beta2,
    float one_minus_beta2, float eps1) {
  grid_stride(n, [&](int64_t i) {
    const float gv = to_float(g[i]);
    const float u = __fadd_rn(__fmul_rn(gv, gv), eps1);
    const float nv = fmaf(u, one_minus_beta2, __fmul_rn(v[i], beta2));
    v[i] = nv;
    out[i] = __fmul_rn(rsqrtf(nv), gv);
  });
}

at::Tensor second_moment_factored_cuda(
    const at::Tensor& grad_in, at::Tensor& row, at::Tensor& col, double beta2, double eps1) {
  detail::check_second_moment_factored_args(grad_in, row, col);
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const at::Tensor grad = grad_in.contiguous();
  const int64_t rows = grad.size(0), cols = grad.size(1);
  const int64_t col_tiles = (cols + kTileCols - 1) / kTileCols;
  const int64_t row_tiles = (rows + kTileRows - 1) / kTileRows;
  TORCH_CHECK(
      col_tiles <= std::numeric_limits<int32_t>::max(), "second_moment_factored_: grad has ", cols,
      " columns, more than the grid allows");
  const auto fp32 = grad.options().dtype(at::kFloat);
  at::Tensor update = at::empty({rows, cols}, fp32);
  if (grad.numel() == 0) {
    return update;
  }
  at::Tensor row_part = at::empty({rows, col_tiles}, fp32);
  at::Tensor col_part = at::empty({row_tiles, cols}, fp32);
  const auto stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(col_tiles), static_cast<unsigned>(std::min(row_tiles, kMaxGridY)));
  FLORA_DISPATCH_PARAM_TYPES(grad.scalar_type(), "second_moment_factored_cuda", [&] {
    factored_square_sums_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        grad.data_ptr<scalar_t>(), rows, cols, col_tiles, row_tiles, row_part.data_ptr<float>(),
        col_part.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  // mean(g^2 + eps1) = mean(g^2) + eps1; the EMAs and normalisations are
  // vector-sized ATen operations, which take the states' strides as they are.
  const at::Tensor row_mean = row_part.sum(1).div_(static_cast<double>(cols)).add_(eps1);
  const at::Tensor col_mean = col_part.sum(0).div_(static_cast<double>(rows)).add_(eps1);
  row.mul_(beta2).add_(row_mean, 1.0 - beta2);
  col.mul_(beta2).add_(col_mean, 1.0 - beta2);
  const at::Tensor r = row.div(row.mean()).rsqrt_().contiguous();
  const at::Tensor c = col.rsqrt().contiguous();
  FLORA_DISPATCH_PARAM_TYPES(grad.scalar_type(), "second_moment_factored_cuda", [&] {
    factored_update_kernel<scalar_t><<<elementwise_grid(rows * cols), kThreads, 0, stream>>>(
        grad.data_ptr<scalar_t>(), r.data_ptr<float>(), c.data_ptr<float>(), update.data_ptr<float>(), rows, cols);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return update;
}

at::Tensor second_moment_full_cuda(const at::Tensor& grad_in, at::Tensor& exp_avg_sq_out, double beta2, double eps1) {
  detail::check_second_moment_full_args(grad_in, exp_avg_sq_out);
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const at::Tensor grad = grad_in.contiguous();
  at::Tensor update = at::empty(grad.sizes(), grad.options().dtype(at::kFloat));
  const int64_t n = grad.numel();
  if (n == 0) {
    return update;
  }
  const detail::ContiguousWorkingCopy exp_avg_sq(exp_avg_sq_out);
  FLORA_DISPATCH_PARAM_TYPES(grad.scalar_type(), "second_moment_full_cuda", [&] {
    full_second_moment_kernel<scalar_t><<<elementwise_grid(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        grad.data_ptr<scalar_t>(), exp_avg_sq.get().data_ptr<float>(), update.data_ptr<float>(), n,
        static_cast<float>(beta2), static_cast<float>(1.0 - beta2), static_cast<float>(eps1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  exp_avg_sq.write_back();
  return update;
}

} // namespace

TORCH_LIBRARY_IMPL(flora, CUDA, m) {
  m.impl("second_moment_factored_", &second_moment_factored_cuda);
  m.impl("second_moment_full_", &second_moment_full_cuda);
}

} // namespace flora::cuda
