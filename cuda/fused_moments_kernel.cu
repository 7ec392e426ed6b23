// CUDA kernels of flora::gather_moments_ and flora::scatter_moments_
// (src/fused_ops.h): the compressed momenta of a shape group between their
// per-parameter state tensors (float32, or 8-bit codes with one absmax per
// block) and one (G, ...) float32 batch for the batched GEMMs. One
// multi-tensor launch each (multi_tensor.cuh). Quantizing keeps the CPU's
// rule (code_map.cuh): a chunk is whole quantization blocks, each block's
// absmax a max over its values (NaN never wins), then the nearest codes.

#include "code_map.cuh"
#include "common.cuh"
#include "multi_tensor.cuh"
#include "quad.cuh"

#include "kernels/fused_checks.h"

#include <torch/library.h>

#include <algorithm>

namespace flora::cuda {
namespace {

constexpr int64_t kChunk = 16384; // elements per block

// One parameter's moment and its slice of the batch.
struct MomentSlice {
  void* moment; // float32 values or uint8 codes
  float* absmax; // codes: one per block
  float* batch; // its numel floats of the (G, ...) batch
  const float* mix; // scatter with a mix: its slice of the mixed-in batch
};

struct MomentRule {
  int64_t numel; // per moment (all alike)
  int64_t chunk; // elements per thread block
  int64_t block; // elements per quantization block
  bool codes;
  bool aligned; // every quad can be accessed whole
  bool mixing; // scatter: store beta * batch + (1 - beta) * mix
  float beta, one_minus_beta;
};

// What scatter stores at [e, e + count): the batch, or its mix (the CPU's
// product order: batch * beta + mix * (1 - beta)).
__device__ __forceinline__ void scattered_quad(
    const MomentSlice& d, const MomentRule& rule, int64_t e, int count, float v[4]) {
  load_quad(d.batch + e, count, rule.aligned, v);
  if (rule.mixing) {
    float x[4];
    load_quad(d.mix + e, count, rule.aligned, x);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      v[j] = __fadd_rn(__fmul_rn(v[j], rule.beta), __fmul_rn(x[j], rule.one_minus_beta));
    }
  }
}

constexpr size_t kMomentOther = sizeof(MomentRule) + sizeof(CodeMap);
constexpr int kMomentTensors = tensors_within<MomentSlice>(kMomentOther);
using MomentTable = TensorChunks<MomentSlice, kMomentTensors>;
static_assert(within_param_limit<MomentTable>(kMomentOther), "kernel parameters are limited to 4 KB");

__global__ void __launch_bounds__(kThreads) gather_moments_kernel(
    const __grid_constant__ MomentTable table, const __grid_constant__ MomentRule rule,
    const __grid_constant__ CodeMap code) {
  __shared__ float map[256];
  if (rule.codes) {
    stage_code_map(code, map);
  }
  const BlockChunk at = block_chunk(table);
  const MomentSlice& d = table.tensor[at.entry];
  const int64_t begin = at.chunk * rule.chunk;
  block_quads(begin, std::min(begin + rule.chunk, rule.numel), [&](int64_t e, int count) {
    float v[4];
    if (rule.codes) {
      uint8_t q[4];
      load_code_quad(static_cast<const uint8_t*>(d.moment) + e, count, rule.aligned, q);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        v[j] = j < count ? dequantized(map, q[j], d.absmax[(e + j) / rule.block]) : 0.f;
      }
    } else {
      load_quad(static_cast<const float*>(d.moment) + e, count, rule.aligned, v);
    }
    store_quad(d.batch + e, count, rule.aligned, v);
  });
}

__global__ void __launch_bounds__(kThreads) scatter_moments_kernel(
    const __grid_constant__ MomentTable table, const __grid_constant__ MomentRule rule,
    const __grid_constant__ CodeMap code) {
  __shared__ float map[256];
  __shared__ float reduce[kWarps];
  __shared__ float block_absmax;
  if (rule.codes) {
    stage_code_map(code, map);
  }
  const BlockChunk at = block_chunk(table);
  const MomentSlice& d = table.tensor[at.entry];
  const int64_t begin = at.chunk * rule.chunk;
  const int64_t end = std::min(begin + rule.chunk, rule.numel);
  if (!rule.codes) {
    block_quads(begin, end, [&](int64_t e, int count) {
      float v[4];
      scattered_quad(d, rule, e, count, v);
      store_quad(static_cast<float*>(d.moment) + e, count, rule.aligned, v);
    });
    return;
  }
  uint8_t* codes = static_cast<uint8_t*>(d.moment);
  for (int64_t first = begin; first < end; first += rule.block) {
    const int64_t last = std::min(first + rule.block, end);
    float m = 0.f;
    block_quads(first, last, [&](int64_t e, int count) {
      float v[4];
      scattered_quad(d, rule, e, count, v);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        m = fmaxf(m, fabsf(v[j])); // lanes past count are 0
      }
    });
    m = block_max(m, reduce);
    if (threadIdx.x == 0) {
      block_absmax = m;
      d.absmax[first / rule.block] = m;
    }
    __syncthreads();
    const float absmax = block_absmax;
    const float inverse = inverse_absmax(absmax);
    block_quads(first, last, [&](int64_t e, int count) {
      float v[4];
      uint8_t q[4];
      scattered_quad(d, rule, e, count, v);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        q[j] = quantized(map, v[j], absmax, inverse);
      }
      store_code_quad(codes + e, count, rule.aligned, q);
    });
    __syncthreads(); // block_absmax is rewritten by the next block
  }
}

// The launch of either kernel over the moments and the batch.
template <typename Kernel>
void launch_moments(
    const Kernel& kernel, const at::Tensor& batch, at::TensorList moments, at::TensorList absmaxes, bool codes,
    int64_t block_size, const std::optional<at::Tensor>& code_map, const std::optional<at::Tensor>& mix = std::nullopt,
    double beta = 1.0) {
  const c10::cuda::CUDAGuard guard(moments[0].device());
  MomentRule rule{};
  rule.numel = moments[0].numel();
  rule.codes = codes;
  rule.chunk = codes ? block_size * std::max<int64_t>(1, kChunk / block_size) : kChunk;
  rule.block = codes ? block_size : rule.chunk;
  rule.aligned = rule.numel % 4 == 0 && rule.chunk % 4 == 0 && (!codes || block_size % 4 == 0) && quad_aligned(batch) &&
      (!mix.has_value() || quad_aligned(*mix));
  rule.mixing = mix.has_value();
  rule.beta = static_cast<float>(beta);
  rule.one_minus_beta = static_cast<float>(1.0 - beta);
  ChunkPlan<MomentSlice, kMomentTensors> plan;
  float* base = batch.data_ptr<float>();
  const float* mix_base = mix.has_value() ? mix->data_ptr<float>() : nullptr;
  for (size_t i = 0; i < moments.size(); ++i) {
    rule.aligned = rule.aligned && quad_aligned(moments[i]);
    plan.add(
        static_cast<int64_t>(i),
        MomentSlice{
            moments[i].data_ptr(), codes ? absmaxes[i].data_ptr<float>() : nullptr,
            base + static_cast<int64_t>(i) * rule.numel,
            mix_base != nullptr ? mix_base + static_cast<int64_t>(i) * rule.numel : nullptr},
        ceil_div(rule.numel, rule.chunk));
  }
  const auto map = codes ? code_map_of(*code_map) : CodeMap{};
  const auto stream = at::cuda::getCurrentCUDAStream();
  plan.launch_each([&](const MomentTable& table, unsigned grid) {
    kernel<<<grid, kThreads, 0, stream>>>(table, rule, map);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void gather_moments_cuda(
    at::TensorList moments, at::TensorList absmaxes, int64_t block_size, const std::optional<at::Tensor>& code_map,
    at::Tensor& out) {
  const bool codes = detail::check_gather_moments_args(moments, absmaxes, block_size, code_map, out);
  if (moments.empty()) {
    return;
  }
  launch_moments(gather_moments_kernel, out, moments, absmaxes, codes, block_size, code_map);
}

void scatter_moments_cuda(
    const at::Tensor& src, const std::optional<at::Tensor>& mix, double beta, at::TensorList moments,
    at::TensorList absmaxes, int64_t block_size, const std::optional<at::Tensor>& code_map) {
  const bool codes = detail::check_scatter_moments_args(src, moments, absmaxes, block_size, code_map, mix);
  if (moments.empty()) {
    return;
  }
  launch_moments(scatter_moments_kernel, src, moments, absmaxes, codes, block_size, code_map, mix, beta);
}

} // namespace

TORCH_LIBRARY_IMPL(flora, CUDA, m) {
  m.impl("gather_moments_", &gather_moments_cuda);
  m.impl("scatter_moments_", &scatter_moments_cuda);
}

} // namespace flora::cuda
