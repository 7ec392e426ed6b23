// CUDA kernels of flora::gradient_sums_ (src/fused_ops.h), phase 1 of the
// fused step: per parameter sum p^2 and whether its gradient has a
// non-finite element, and for factored parameters the row and column sums of
// g^2, into `flags` and `sums` (kernels/sums_layout.h). Nothing else is
// written, so the host can refuse a non-finite gradient before anything
// changes. Two multi-tensor launches (multi_tensor.cuh) for the whole list:
//
//   1. partial sums, one thread block per chunk: flat parameters in chunks
//      of kFlatChunk elements; factored ones in tiles of whole quads of
//      columns by a band of rows, whose block writes one partial row sum
//      per (row, warp) and one partial column sum per (row band, column).
//   2. the partials of each output added in a fixed order: sum p^2 and the
//      flag by one block per parameter, row and column sums one per thread.
//
// A tile's shape depends on the matrix's shape only: `tx` threads (a power
// of two, up to 256) cover tx quads of a row, the other 256 / tx thread rows
// take consecutive rows, kSweeps times. Narrow matrices (a few columns) get
// many rows per tile, wide ones many columns, so every thread has work.

#include "common.cuh"
#include "multi_tensor.cuh"
#include "quad.cuh"

#include "kernels/dtypes.h"
#include "kernels/fused_checks.h"
#include "kernels/sums_layout.h"

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cfloat>

namespace flora::cuda {
namespace {

constexpr int64_t kFlatChunk = 16384; // elements per block (16 quads per thread)
constexpr int kSweeps = 32; // rows per thread row in a factored tile

// Launch 1, flat: p^2 and |g| of kFlatChunk elements.
struct FlatTensor {
  const void* param;
  const void* grad;
  int64_t numel;
  bool aligned; // quads can be accessed whole
};

// Launch 1, factored: one tile.
struct TileTensor {
  const void* param;
  const void* grad;
  int64_t rows, cols;
  int64_t row_part; // offset in the scratch of the row partials (rows x col_bands x row_warps)
  int64_t col_part; // offset in the scratch of the column partials (row_bands x cols)
  int32_t tx; // threads along a row: a power of two
  int32_t col_bands; // tiles across the columns
  bool aligned;
};

// Launch 2: one parameter's outputs.
struct SumsTensor {
  int64_t first_slot, chunks; // its launch-1 partials of p^2 and the flag
  int64_t rows, cols; // 0 x 0 when flat
  int64_t row_part, col_part;
  int64_t row_bands;
  int32_t col_bands, row_warps;
  int64_t row_offset, col_offset; // where its row and column sums go in `sums`
};

constexpr int kFlatTensors = tensors_within<FlatTensor>(2 * sizeof(void*));
constexpr int kTileTensors = tensors_within<TileTensor>(3 * sizeof(void*));
constexpr int kSumsTensors = tensors_within<SumsTensor>(5 * sizeof(void*));
using FlatTable = TensorChunks<FlatTensor, kFlatTensors>;
using TileTable = TensorChunks<TileTensor, kTileTensors>;
using SumsTable = TensorChunks<SumsTensor, kSumsTensors>;
static_assert(within_param_limit<FlatTable>(2 * sizeof(void*)), "kernel parameters are limited to 4 KB");
static_assert(within_param_limit<TileTable>(3 * sizeof(void*)), "kernel parameters are limited to 4 KB");
static_assert(within_param_limit<SumsTable>(5 * sizeof(void*)), "kernel parameters are limited to 4 KB");

__device__ __forceinline__ float nonfinite(float g) {
  return fabsf(g) <= FLT_MAX ? 0.f : 1.f; // NaN compares false
}

// A chunk's partials of p^2 and of the flag, in its slot.
__device__ __forceinline__ void write_chunk_partials(
    float psq, float bad, int64_t slot, float* __restrict__ chunk_part, float* __restrict__ flag_part) {
  __shared__ float reduce[kWarps];
  psq = block_sum(psq, reduce);
  bad = block_max(bad, reduce);
  if (threadIdx.x == 0) {
    chunk_part[slot] = psq;
    flag_part[slot] = bad;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) gradient_flat_sums_kernel(
    const __grid_constant__ FlatTable table, float* __restrict__ chunk_part, float* __restrict__ flag_part) {
  const BlockChunk at = block_chunk(table);
  const FlatTensor& d = table.tensor[at.entry];
  const T* __restrict__ p = static_cast<const T*>(d.param);
  const T* __restrict__ g = static_cast<const T*>(d.grad);
  const int64_t begin = at.chunk * kFlatChunk;
  const int64_t end = begin + kFlatChunk < d.numel ? begin + kFlatChunk : d.numel;
  float psq = 0.f, bad = 0.f;
  block_quads(begin, end, [&](int64_t e, int count) {
    float pv[4], gv[4];
    load_quad(p + e, count, d.aligned, pv);
    load_quad(g + e, count, d.aligned, gv);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      psq = fmaf(pv[j], pv[j], psq);
      bad = fmaxf(bad, nonfinite(gv[j]));
    }
  });
  write_chunk_partials(psq, bad, at.slot, chunk_part, flag_part);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) gradient_tile_sums_kernel(
    const __grid_constant__ TileTable table, float* __restrict__ parts, float* __restrict__ chunk_part,
    float* __restrict__ flag_part) {
  __shared__ float col_acc[4 * kThreads];
  const BlockChunk at = block_chunk(table);
  const TileTensor& d = table.tensor[at.entry];
  const T* __restrict__ p = static_cast<const T*>(d.param);
  const T* __restrict__ g = static_cast<const T*>(d.grad);
  const int tx = d.tx;
  const int thread_rows = kThreads / tx;
  const int x = threadIdx.x & (tx - 1);
  const int y = threadIdx.x / tx;
  const int64_t band = at.chunk / d.col_bands;
  const int64_t col_band = at.chunk - band * d.col_bands;
  const int64_t col = (col_band * tx + x) * 4;
  const int count = col < d.cols ? static_cast<int>(d.cols - col < 4 ? d.cols - col : 4) : 0;
  // Threads of one row: a segment of `width` lanes of one warp, or whole
  // warps (then `row_warps` partials per row and column band).
  const int width = tx < 32 ? tx : 32;
  const int row_warps = tx > 32 ? tx / 32 : 1;
  float cols_acc[4] = {0.f, 0.f, 0.f, 0.f};
  float psq = 0.f, bad = 0.f;
  for (int k = 0; k < kSweeps; ++k) {
    const int64_t row = band * thread_rows * kSweeps + static_cast<int64_t>(k) * thread_rows + y;
    float row_acc = 0.f;
    if (row < d.rows && count > 0) {
      float pv[4], gv[4];
      load_quad(p + row * d.cols + col, count, d.aligned, pv);
      load_quad(g + row * d.cols + col, count, d.aligned, gv);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float sq = __fmul_rn(gv[j], gv[j]);
        row_acc = __fadd_rn(row_acc, sq);
        cols_acc[j] = __fadd_rn(cols_acc[j], sq);
        psq = fmaf(pv[j], pv[j], psq);
        bad = fmaxf(bad, nonfinite(gv[j]));
      }
    }
    // Every lane takes part (uniform control flow); the segment's first
    // lane ends with the sum of its segment.
    for (int offset = width / 2; offset > 0; offset >>= 1) {
      row_acc = __fadd_rn(row_acc, __shfl_down_sync(0xffffffffu, row_acc, offset, width));
    }
    if ((x & (width - 1)) == 0 && row < d.rows) {
      parts[d.row_part + (row * d.col_bands + col_band) * row_warps + x / 32] = row_acc;
    }
  }
  // Column partials of the band: the thread rows' sums in order.
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    col_acc[y * 4 * tx + 4 * x + j] = cols_acc[j];
  }
  __syncthreads();
  const int64_t band_rows = d.rows - band * thread_rows * kSweeps;
  const int used_rows = band_rows < thread_rows ? static_cast<int>(band_rows) : thread_rows;
  for (int c = threadIdx.x; c < 4 * tx; c += kThreads) {
    const int64_t column = col_band * 4 * tx + c;
    if (column < d.cols) {
      float s = 0.f;
      for (int r = 0; r < used_rows; ++r) {
        s = __fadd_rn(s, col_acc[r * 4 * tx + c]);
      }
      parts[d.col_part + band * d.cols + column] = s;
    }
  }
  write_chunk_partials(psq, bad, at.slot, chunk_part, flag_part);
}

// Chunk 0 of a parameter: its sum p^2 and flag; chunk c > 0: row and column
// sums (kThreads outputs per chunk), each adding its partials in order, in
// double (a column of a tall matrix has thousands of band partials).
__global__ void __launch_bounds__(kThreads) gradient_sums_reduce_kernel(
    const __grid_constant__ SumsTable table, const float* __restrict__ parts, const float* __restrict__ chunk_part,
    const float* __restrict__ flag_part, float* __restrict__ sums, float* __restrict__ flags) {
  __shared__ double reduce[kWarps];
  __shared__ float reduce_flag[kWarps];
  const BlockChunk at = block_chunk(table);
  const SumsTensor& d = table.tensor[at.entry];
  if (at.chunk == 0) {
    double psq = 0.0;
    float bad = 0.f;
    block_stride(0, d.chunks, [&](int64_t c) {
      psq += chunk_part[d.first_slot + c];
      bad = fmaxf(bad, flag_part[d.first_slot + c]);
    });
    psq = block_sum(psq, reduce);
    bad = block_max(bad, reduce_flag);
    if (threadIdx.x == 0) {
      sums[at.index] = static_cast<float>(psq);
      flags[at.index] = bad > 0.f ? 1.f : 0.f;
    }
    return;
  }
  const int64_t o = (at.chunk - 1) * kThreads + threadIdx.x;
  if (o < d.rows) {
    const float* part = parts + d.row_part + o * d.col_bands * d.row_warps;
    double s = 0.0;
    for (int64_t k = 0; k < static_cast<int64_t>(d.col_bands) * d.row_warps; ++k) {
      s += part[k];
    }
    sums[d.row_offset + o] = static_cast<float>(s);
  } else if (o < d.rows + d.cols) {
    const int64_t c = o - d.rows;
    double s = 0.0;
    for (int64_t band = 0; band < d.row_bands; ++band) {
      s += parts[d.col_part + band * d.cols + c];
    }
    sums[d.col_offset + c] = static_cast<float>(s);
  }
}

// Threads along a row (a power of two, so that they tile the block): for
// narrow rows the fewest that cover a row's quads; for rows of 32 quads or
// more, whole warps, as many as leave the fewest threads past the row's end
// (768 columns: 64 threads, 3 tiles across, none idle).
int32_t threads_per_row(int64_t cols) {
  const int64_t quads = ceil_div(cols, 4);
  if (quads < 32) {
    int32_t tx = 1;
    while (tx < quads) {
      tx *= 2;
    }
    return tx;
  }
  int32_t best = kThreads;
  for (int32_t tx = kThreads; tx >= 32; tx /= 2) {
    if (ceil_div(quads, tx) * tx - quads < ceil_div(quads, best) * best - quads) {
      best = tx;
    }
  }
  return best;
}

void gradient_sums_cuda(at::TensorList params, at::TensorList grads, bool factored, at::Tensor& flags, at::Tensor& sums) {
  detail::check_gradient_sums_args(params, grads, factored, flags, sums);
  if (params.empty()) {
    return;
  }
  const c10::cuda::CUDAGuard guard(params[0].device());
  const auto layout = detail::SumsLayout::of(params, factored);

  // The scratch: the factored tiles' row and column partials first (their
  // offsets are known as the tiles are laid out), then one p^2 partial per
  // chunk, then one flag partial per chunk.
  ChunkPlan<FlatTensor, kFlatTensors> flat;
  ChunkPlan<TileTensor, kTileTensors> tiles;
  std::vector<SumsTensor> outputs(params.size());
  int64_t tile_parts = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const auto index = static_cast<int64_t>(i);
    const bool aligned = quad_aligned(params[i]) && quad_aligned(grads[i]);
    SumsTensor& out = outputs[i];
    if (!factored) {
      out.chunks = ceil_div(params[i].numel(), kFlatChunk);
      out.first_slot = flat.add(
          index, FlatTensor{params[i].data_ptr(), grads[i].data_ptr(), params[i].numel(), aligned}, out.chunks);
      continue;
    }
    const int64_t rows = params[i].size(0), cols = params[i].size(1);
    const int32_t tx = threads_per_row(cols);
    out.rows = rows;
    out.cols = cols;
    out.col_bands = static_cast<int32_t>(ceil_div(ceil_div(cols, 4), tx));
    out.row_warps = tx > 32 ? tx / 32 : 1;
    out.row_bands = ceil_div(rows, static_cast<int64_t>(kThreads / tx) * kSweeps);
    out.row_offset = layout.row_offset[i];
    out.col_offset = layout.col_offset[i];
    out.chunks = rows * cols == 0 ? 0 : out.row_bands * out.col_bands;
    out.row_part = tile_parts;
    tile_parts += rows * out.col_bands * out.row_warps;
    out.col_part = tile_parts;
    tile_parts += out.row_bands * cols;
    const TileTensor tile{
        params[i].data_ptr(), grads[i].data_ptr(), rows, cols, out.row_part, out.col_part, tx, out.col_bands,
        aligned && cols % 4 == 0};
    out.first_slot = tiles.add(index, tile, out.chunks);
  }
  const int64_t slots = factored ? tiles.slots() : flat.slots();
  ChunkPlan<SumsTensor, kSumsTensors> reduce;
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& out = outputs[i];
    reduce.add(static_cast<int64_t>(i), out, 1 + ceil_div(out.rows + out.cols, kThreads));
  }

  at::Tensor scratch = at::empty({tile_parts + 2 * slots}, params[0].options().dtype(at::kFloat));
  float* parts = scratch.data_ptr<float>();
  float* chunk_part = parts + tile_parts;
  float* flag_part = chunk_part + slots;
  const auto stream = at::cuda::getCurrentCUDAStream();
  FLORA_DISPATCH_PARAM_TYPES(params[0].scalar_type(), "gradient_sums_cuda", [&] {
    flat.launch_each([&](const FlatTable& table, unsigned blocks) {
      gradient_flat_sums_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(table, chunk_part, flag_part);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    tiles.launch_each([&](const TileTable& table, unsigned blocks) {
      gradient_tile_sums_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(table, parts, chunk_part, flag_part);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  reduce.launch_each([&](const SumsTable& table, unsigned blocks) {
    gradient_sums_reduce_kernel<<<blocks, kThreads, 0, stream>>>(
        table, parts, chunk_part, flag_part, sums.data_ptr<float>(), flags.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

} // namespace

TORCH_LIBRARY_IMPL(flora, CUDA, m) {
  m.impl("gradient_sums_", &gradient_sums_cuda);
}

} // namespace flora::cuda
