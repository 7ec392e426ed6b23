// CUDA kernels of Adafactor's second moment.
//
// Factored: one pass over the gradient writes partial sums of g^2 per row
// (per 32-column tile) and per column (per 64-row tile); the small partial
// arrays are summed by ATen (deterministically); the row/column EMAs and
// their normalisation are vector ops; a second pass writes the update
// g * rsqrt(row / mean(row)) * rsqrt(col). Two passes over the gradient is
// the least the reduction allows. Full: one elementwise pass.

#include "common.cuh"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

namespace flora::cuda {
namespace {

constexpr int kTileCols = 32; // = warp size: one warp reads 32 columns of a row
constexpr int kTileRows = 64;
constexpr int kRowsPerThread = kTileRows / kWarps;

template <typename T>
__global__ void square_sums_kernel(
    const T* __restrict__ g, int64_t rows, int64_t cols, int64_t col_tiles, float* __restrict__ row_part,
    float* __restrict__ col_part) {
  __shared__ float col_acc[kWarps][kTileCols + 1];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kTileCols + lane;
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kTileRows;
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
    col_part[static_cast<int64_t>(blockIdx.y) * cols + col] = s;
  }
}

// update = (r_i * c_j) * g_ij, the product order of the CPU kernel.
template <typename T>
__global__ void factored_update_kernel(
    const T* __restrict__ g, const float* __restrict__ r, const float* __restrict__ c, float* __restrict__ out,
    int64_t rows, int64_t cols) {
  const int64_t total = rows * cols;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = idx / cols;
    const int64_t col = idx - row * cols;
    out[idx] = __fmul_rn(__fmul_rn(r[row], c[col]), to_float(g[idx]));
  }
}

template <typename T>
__global__ void full_moment_kernel(
    const T* __restrict__ g, float* __restrict__ v, float* __restrict__ out, int64_t n, float beta2,
    float one_minus_beta2, float eps1) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float gv = to_float(g[idx]);
    const float u = __fadd_rn(__fmul_rn(gv, gv), eps1);
    const float nv = fmaf(u, one_minus_beta2, __fmul_rn(v[idx], beta2));
    v[idx] = nv;
    out[idx] = __fmul_rn(rsqrtf(nv), gv);
  }
}

void check_state(const at::Tensor& state, const at::Tensor& grad, at::IntArrayRef shape, const char* name) {
  TORCH_CHECK(
      state.sizes() == shape, name, " has shape ", state.sizes(), ", expected ", shape, " for a gradient of shape ",
      grad.sizes());
  TORCH_CHECK(state.scalar_type() == at::kFloat, name, " must be float32, got ", state.scalar_type());
  TORCH_CHECK(state.device() == grad.device(), name, " is on ", state.device(), ", the gradient on ", grad.device());
  TORCH_CHECK(state.is_contiguous(), name, " must be contiguous");
}

at::Tensor second_moment_factored_cuda(
    const at::Tensor& grad_in, at::Tensor& row, at::Tensor& col, double beta2, double eps1) {
  TORCH_CHECK(grad_in.dim() == 2, "second_moment_factored_: expected a 2-d gradient, got shape ", grad_in.sizes());
  check_state(row, grad_in, {grad_in.size(0)}, "exp_avg_sq_row");
  check_state(col, grad_in, {grad_in.size(1)}, "exp_avg_sq_col");
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const at::Tensor grad = grad_in.contiguous();
  const int64_t rows = grad.size(0), cols = grad.size(1);
  const int64_t col_tiles = (cols + kTileCols - 1) / kTileCols;
  const int64_t row_tiles = (rows + kTileRows - 1) / kTileRows;
  TORCH_CHECK(row_tiles <= 65535, "second_moment_factored_: too many rows (", rows, ")");
  const auto fp32 = grad.options().dtype(at::kFloat);
  at::Tensor row_part = at::empty({rows, col_tiles}, fp32);
  at::Tensor col_part = at::empty({row_tiles, cols}, fp32);
  at::Tensor update = at::empty({rows, cols}, fp32);
  if (grad.numel() == 0) {
    return update;
  }
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "second_moment_factored_cuda", [&] {
    square_sums_kernel<scalar_t><<<dim3(col_tiles, row_tiles), kThreads, 0, stream>>>(
        grad.data_ptr<scalar_t>(), rows, cols, col_tiles, row_part.data_ptr<float>(), col_part.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  // mean(g^2 + eps1) = mean(g^2) + eps1; the EMAs and normalisations are
  // vector-sized.
  const at::Tensor row_mean = row_part.sum(1).div_(static_cast<double>(cols)).add_(eps1);
  const at::Tensor col_mean = col_part.sum(0).div_(static_cast<double>(rows)).add_(eps1);
  row.mul_(beta2).add_(row_mean, 1.0 - beta2);
  col.mul_(beta2).add_(col_mean, 1.0 - beta2);
  const at::Tensor r = row.div(row.mean()).rsqrt_();
  const at::Tensor c = col.rsqrt();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "second_moment_factored_cuda", [&] {
    factored_update_kernel<scalar_t><<<elementwise_grid(rows * cols), kThreads, 0, stream>>>(
        grad.data_ptr<scalar_t>(), r.data_ptr<float>(), c.data_ptr<float>(), update.data_ptr<float>(), rows, cols);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return update;
}

at::Tensor second_moment_full_cuda(const at::Tensor& grad_in, at::Tensor& exp_avg_sq, double beta2, double eps1) {
  check_state(exp_avg_sq, grad_in, grad_in.sizes(), "exp_avg_sq");
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const at::Tensor grad = grad_in.contiguous();
  at::Tensor update = at::empty(grad.sizes(), grad.options().dtype(at::kFloat));
  const int64_t n = grad.numel();
  if (n == 0) {
    return update;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "second_moment_full_cuda", [&] {
    full_moment_kernel<scalar_t><<<elementwise_grid(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        grad.data_ptr<scalar_t>(), exp_avg_sq.data_ptr<float>(), update.data_ptr<float>(), n,
        static_cast<float>(beta2), static_cast<float>(1.0 - beta2), static_cast<float>(eps1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return update;
}

} // namespace

TORCH_LIBRARY_IMPL(flora, CUDA, m) {
  m.impl("second_moment_factored_", &second_moment_factored_cuda);
  m.impl("second_moment_full_", &second_moment_full_cuda);
}

} // namespace flora::cuda
