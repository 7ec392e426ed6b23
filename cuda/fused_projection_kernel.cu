// CUDA kernels of the fused step's projections and seeds (src/fused_ops.h):
//   philox_normal_batch_     the projections of a shape group, G matrices in
//                            one multi-tensor launch, each the Philox stream
//                            of philox_normal_ (kernels/philox.h: cuRAND's
//                            Philox4_32_10, Box-Muller with precise logf,
//                            sinf, cosf) for its seed;
//   advance_counters_        a capturable step's counters, on the device;
//   keep_unless_resampled_   the carry transforms of the parameters that do
//                            not resample in this step set to the identity.
// Seeds come from the host's list (eager) or from the counters (capturable);
// either way the split into the left or right seed is kernels/
// projection_seed.h, so a captured launch draws each replay's projections.

#include "common.cuh"
#include "multi_tensor.cuh"
#include "quad.cuh"

#include "kernels/fused_checks.h"
#include "kernels/philox.h"
#include "kernels/projection_seed.h"

#include <torch/library.h>

#include <algorithm>

namespace flora::cuda {
namespace {

// ---------------------------------------------------------------- philox_normal_batch_

constexpr int64_t kPhiloxChunk = 8 * kThreads; // Philox blocks (4 values each) per thread block

struct ProjectionMatrix {
  float* out; // its (rows, cols) slice of the batch
  const int64_t* counters; // capturable: the parameter's counters
  int64_t seed; // eager: the seed of its stream (split already)
};

struct ProjectionRule {
  int64_t rows, cols;
  int64_t counter_slot; // the counter that holds the seed
  int64_t side; // ops::SeedSide
  float scale;
  bool aligned; // rows of whole quads, aligned
};

constexpr int kProjectionMatrices = tensors_within<ProjectionMatrix>(sizeof(ProjectionRule));
using ProjectionTable = TensorChunks<ProjectionMatrix, kProjectionMatrices>;
static_assert(within_param_limit<ProjectionTable>(sizeof(ProjectionRule)), "kernel parameters are limited to 4 KB");

__global__ void __launch_bounds__(kThreads) philox_normal_batch_kernel(
    const __grid_constant__ ProjectionTable table, const ProjectionRule rule) {
  const BlockChunk at = block_chunk(table);
  const ProjectionMatrix& d = table.tensor[at.entry];
  const uint64_t seed = d.counters != nullptr
      ? detail::projection_seed(d.counters[rule.counter_slot], rule.side)
      : static_cast<uint64_t>(d.seed);
  const int64_t per_row = ceil_div(rule.cols, 4);
  const int64_t begin = at.chunk * kPhiloxChunk;
  const int64_t end = std::min(begin + kPhiloxChunk, rule.rows * per_row);
  block_stride(begin, end, [&](int64_t w) {
    const int64_t row = w / per_row;
    const int64_t block = w - row * per_row;
    const int64_t col = 4 * block;
    float n[4];
    detail::philox_normal4(seed, static_cast<uint64_t>(row), static_cast<uint64_t>(block), n);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      n[j] = __fmul_rn(n[j], rule.scale);
    }
    store_quad(d.out + row * rule.cols + col, static_cast<int>(std::min<int64_t>(4, rule.cols - col)), rule.aligned, n);
  });
}

void philox_normal_batch_cuda(
    at::Tensor& out, c10::ArrayRef<int64_t> seeds, at::TensorList counters, int64_t counter_slot, int64_t side,
    double scale) {
  detail::check_philox_normal_batch_args(out, seeds, counters, counter_slot, side);
  const int64_t count = out.size(0);
  const int64_t rows = out.size(1), cols = out.size(2);
  if (count == 0 || rows * cols == 0) {
    return;
  }
  const c10::cuda::CUDAGuard guard(out.device());
  const ProjectionRule rule{rows, cols, counter_slot, side, static_cast<float>(scale), cols % 4 == 0 && quad_aligned(out)};
  ChunkPlan<ProjectionMatrix, kProjectionMatrices> plan;
  const int64_t chunks = ceil_div(rows * ceil_div(cols, 4), kPhiloxChunk);
  float* base = out.data_ptr<float>();
  for (int64_t g = 0; g < count; ++g) {
    ProjectionMatrix m{base + g * rows * cols, nullptr, 0};
    if (counters.empty()) {
      m.seed = static_cast<int64_t>(detail::projection_seed(seeds[g], side));
    } else {
      m.counters = counters[g].data_ptr<int64_t>();
    }
    plan.add(g, m, chunks);
  }
  const auto stream = at::cuda::getCurrentCUDAStream();
  plan.launch_each([&](const ProjectionTable& table, unsigned grid) {
    philox_normal_batch_kernel<<<grid, kThreads, 0, stream>>>(table, rule);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// ---------------------------------------------------------------- counters

constexpr int kCounterThreads = 32; // one thread per parameter does the work

struct CounterRef {
  int64_t* counters; // (step, seed, previous seed)
};

constexpr int kCounterTensors = tensors_within<CounterRef>(sizeof(int64_t));
using CounterTable = TensorChunks<CounterRef, kCounterTensors>;
static_assert(within_param_limit<CounterTable>(sizeof(int64_t)), "kernel parameters are limited to 4 KB");

__global__ void __launch_bounds__(kCounterThreads) advance_counters_kernel(
    const __grid_constant__ CounterTable table, const int64_t kappa) {
  if (threadIdx.x != 0) {
    return;
  }
  int64_t* c = table.tensor[block_chunk(table).entry].counters;
  const int64_t step = c[0] + 1;
  c[0] = step;
  c[2] = c[1];
  if (step % kappa == 0) {
    c[1] = detail::next_philox_seed(c[1]);
  }
}

void advance_counters_cuda(at::TensorList counters, int64_t kappa) {
  detail::check_advance_counters_args(counters, kappa);
  if (counters.empty()) {
    return;
  }
  const c10::cuda::CUDAGuard guard(counters[0].device());
  ChunkPlan<CounterRef, kCounterTensors> plan;
  for (size_t i = 0; i < counters.size(); ++i) {
    plan.add(static_cast<int64_t>(i), CounterRef{counters[i].data_ptr<int64_t>()}, 1);
  }
  const auto stream = at::cuda::getCurrentCUDAStream();
  plan.launch_each([&](const CounterTable& table, unsigned grid) {
    advance_counters_kernel<<<grid, kCounterThreads, 0, stream>>>(table, kappa);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// ---------------------------------------------------------------- keep_unless_resampled_

constexpr int64_t kTransformChunk = 4 * 4 * kThreads; // elements per thread block

struct TransformRef {
  float* transform; // its (r, r) slice
  const int64_t* counters;
};

struct TransformRule {
  int64_t r;
  int64_t kappa;
};

constexpr int kTransformTensors = tensors_within<TransformRef>(sizeof(TransformRule));
using TransformTable = TensorChunks<TransformRef, kTransformTensors>;
static_assert(within_param_limit<TransformTable>(sizeof(TransformRule)), "kernel parameters are limited to 4 KB");

__global__ void __launch_bounds__(kThreads) keep_unless_resampled_kernel(
    const __grid_constant__ TransformTable table, const TransformRule rule) {
  const BlockChunk at = block_chunk(table);
  const TransformRef& d = table.tensor[at.entry];
  if (d.counters[0] % rule.kappa == 0) {
    return; // resampled in this step: the carry transform stays
  }
  const int64_t begin = at.chunk * kTransformChunk;
  block_stride(begin, std::min(begin + kTransformChunk, rule.r * rule.r), [&](int64_t i) {
    d.transform[i] = i / rule.r == i % rule.r ? 1.0f : 0.0f;
  });
}

void keep_unless_resampled_cuda(at::Tensor& transforms, at::TensorList counters, int64_t kappa) {
  detail::check_keep_unless_resampled_args(transforms, counters, kappa);
  const int64_t r = transforms.size(1);
  if (counters.empty() || r == 0) {
    return;
  }
  const c10::cuda::CUDAGuard guard(transforms.device());
  ChunkPlan<TransformRef, kTransformTensors> plan;
  float* base = transforms.data_ptr<float>();
  for (size_t g = 0; g < counters.size(); ++g) {
    plan.add(
        static_cast<int64_t>(g), TransformRef{base + static_cast<int64_t>(g) * r * r, counters[g].data_ptr<int64_t>()},
        ceil_div(r * r, kTransformChunk));
  }
  const TransformRule rule{r, kappa};
  const auto stream = at::cuda::getCurrentCUDAStream();
  plan.launch_each([&](const TransformTable& table, unsigned grid) {
    keep_unless_resampled_kernel<<<grid, kThreads, 0, stream>>>(table, rule);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

} // namespace

TORCH_LIBRARY_IMPL(flora, CUDA, m) {
  m.impl("philox_normal_batch_", &philox_normal_batch_cuda);
  m.impl("advance_counters_", &advance_counters_cuda);
  m.impl("keep_unless_resampled_", &keep_unless_resampled_cuda);
}

} // namespace flora::cuda
