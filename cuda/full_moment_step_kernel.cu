// CUDA kernel of flora::full_moment_step_: the whole step for many small
// parameters (biases, norm weights: the full second-moment path) in three
// multi-tensor launches, however many parameters there are.
//
// Launch 1, per chunk of one tensor: v <- b2 v + (1 - b2)(g^2 + eps1),
//   u = rsqrt(v) g, m <- b1 m + (1 - b1) u (when there is momentum; the update
//   is then m), and the chunk's partial sums of p^2 and update^2 into a fixed
//   slot.
// Launch 2, one block per tensor: its partials added in a fixed order, then
//   its step size, clip factor and decay (cuda/param_step.cuh). Each partial
//   is read once, whatever the size of the tensor.
// Launch 3, per chunk: the update recomputed from the new v (or read from m)
//   and the parameter written. No update tensor is ever materialised.
// Tensors are described to the kernels by value (kernel parameters, at most
// 4 KB), in groups; every launch 1 group runs before any launch 2 group, and
// those before any launch 3 group, since a tensor's chunks may span groups.

#include "common.cuh"
#include "param_step.cuh"

#include "kernels/checks.h"
#include "kernels/contiguous.h"
#include "kernels/dtypes.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <vector>

namespace flora::cuda {
namespace {

constexpr int64_t kChunk = 2048;
constexpr int kMaxTensors = 36;
constexpr int kMaxBlocks = 320;
constexpr int kMaxReduceTensors = 128;

// Launches 1 and 3: one thread block per chunk.
struct ChunkTable {
  void* param[kMaxTensors];
  const void* grad[kMaxTensors];
  float* exp_avg_sq[kMaxTensors];
  float* exp_avg[kMaxTensors];
  int64_t numel[kMaxTensors];
  float beta2[kMaxTensors];
  float one_minus_beta2[kMaxTensors]; // rounded from double, as the CPU computes it
  int32_t partial_base[kMaxTensors]; // first chunk slot of the tensor in `partial`
  int32_t index[kMaxTensors]; // position of the tensor in the op's lists
  uint8_t block_tensor[kMaxBlocks];
  int32_t block_chunk[kMaxBlocks];
};
static_assert(sizeof(ChunkTable) <= 4000, "kernel parameters are limited to 4 KB");

// Launch 2: one thread block per tensor.
struct TensorTable {
  StepSizes sizes[kMaxReduceTensors];
  int32_t partial_base[kMaxReduceTensors];
  int32_t chunks[kMaxReduceTensors];
  int32_t index[kMaxReduceTensors];
};
static_assert(sizeof(TensorTable) <= 4000, "kernel parameters are limited to 4 KB");

struct MomentScalars {
  float eps1;
  float beta1;
  float one_minus_beta1;
  bool momentum;
};

template <typename T>
__global__ void full_moment_moments_kernel(ChunkTable table, MomentScalars s, float* __restrict__ partial) {
  __shared__ float scratch[kWarps];
  const int t = table.block_tensor[blockIdx.x];
  const int64_t chunk = table.block_chunk[blockIdx.x];
  const int64_t n = table.numel[t];
  const int64_t begin = chunk * kChunk;
  const int64_t end = begin + kChunk < n ? begin + kChunk : n;
  const T* __restrict__ p = static_cast<const T*>(table.param[t]);
  const T* __restrict__ g = static_cast<const T*>(table.grad[t]);
  float* __restrict__ v = table.exp_avg_sq[t];
  float* __restrict__ m = table.exp_avg[t];
  const float b2 = table.beta2[t];
  const float one_minus_b2 = table.one_minus_beta2[t];
  float sp = 0.f, su = 0.f;
  block_stride(begin, end, [&](int64_t i) {
    const float gv = to_float(g[i]);
    const float nv = fmaf(__fadd_rn(__fmul_rn(gv, gv), s.eps1), one_minus_b2, __fmul_rn(v[i], b2));
    v[i] = nv;
    float u = __fmul_rn(rsqrtf(nv), gv);
    if (s.momentum) {
      u = __fadd_rn(__fmul_rn(m[i], s.beta1), __fmul_rn(u, s.one_minus_beta1));
      m[i] = u;
    }
    const float pv = to_float(p[i]);
    sp = fmaf(pv, pv, sp);
    su = fmaf(u, u, su);
  });
  sp = block_sum(sp, scratch);
  su = block_sum(su, scratch);
  if (threadIdx.x == 0) {
    const int64_t slot = table.partial_base[t] + chunk;
    partial[2 * slot] = sp;
    partial[2 * slot + 1] = su;
  }
}

__global__ void full_moment_step_size_kernel(
    TensorTable table, StepRule rule, const float* __restrict__ partial, ParamStep* __restrict__ steps,
    float* __restrict__ rms_out) {
  const int t = blockIdx.x;
  const StepSizes sizes = table.sizes[t];
  const ParamStep s = reduce_param_step(partial + 2 * static_cast<int64_t>(table.partial_base[t]), table.chunks[t], sizes, rule);
  if (threadIdx.x == 0) {
    steps[table.index[t]] = s;
    rms_out[table.index[t]] = s.rms;
  }
}

template <typename T>
__global__ void full_moment_write_kernel(
    ChunkTable table, StepRule rule, bool momentum, const ParamStep* __restrict__ steps) {
  const int t = table.block_tensor[blockIdx.x];
  const int64_t chunk = table.block_chunk[blockIdx.x];
  const int64_t n = table.numel[t];
  const ParamStep s = steps[table.index[t]];
  T* __restrict__ p = static_cast<T*>(table.param[t]);
  const T* __restrict__ g = static_cast<const T*>(table.grad[t]);
  const float* __restrict__ v = table.exp_avg_sq[t];
  const float* __restrict__ m = table.exp_avg[t];
  const int64_t begin = chunk * kChunk;
  const int64_t end = begin + kChunk < n ? begin + kChunk : n;
  block_stride(begin, end, [&](int64_t i) {
    const float update = momentum ? m[i] : __fmul_rn(rsqrtf(v[i]), to_float(g[i]));
    p[i] = from_float<T>(updated_param(to_float(p[i]), applied_update(update, s), s, rule));
  });
}

// The contiguous memory the kernels work on, for each tensor of the lists.
struct WorkingSet {
  std::vector<detail::ContiguousWorkingCopy> written; // params, exp_avg_sqs, exp_avgs
  std::vector<at::Tensor> grads;

  const at::Tensor& add(const at::Tensor& t) {
    written.emplace_back(t);
    return written.back().get();
  }
  void write_back() const {
    for (const auto& w : written) {
      w.write_back();
    }
  }
};

std::vector<at::Tensor> full_moment_step_cuda(
    at::TensorList params, at::TensorList grads, at::TensorList exp_avg_sqs, at::TensorList exp_avgs,
    at::ArrayRef<double> beta2s, at::ArrayRef<double> lrs, double eps1, double eps2, double beta1,
    bool scale_parameter, double clip_threshold, double weight_decay) {
  detail::check_full_moment_step_args(params, grads, exp_avg_sqs, exp_avgs, beta2s, lrs);
  const size_t n = params.size();
  if (n == 0) {
    return {};
  }
  const bool momentum = !exp_avgs.empty();
  const c10::cuda::CUDAGuard guard(params[0].device());
  const auto fp32 = params[0].options().dtype(at::kFloat);

  WorkingSet work;
  work.written.reserve(n * (momentum ? 3 : 2));
  work.grads.reserve(n);

  // Lay the chunks out: tensor i owns partial slots [base_i, base_i + chunks_i).
  std::vector<ChunkTable> chunk_tables(1);
  std::vector<int> chunk_blocks(1, 0), chunk_tensors(1, 0);
  std::vector<TensorTable> tensor_tables;
  std::vector<int> tensor_counts;
  int64_t slots = 0;
  for (size_t i = 0; i < n; ++i) {
    const int64_t numel = params[i].numel();
    const int64_t chunks = (numel + kChunk - 1) / kChunk;
    if (chunks == 0) {
      continue; // an empty parameter: nothing to do, RMS 0
    }
    void* param = work.add(params[i]).data_ptr();
    float* exp_avg_sq = work.add(exp_avg_sqs[i]).data_ptr<float>();
    float* exp_avg = momentum ? work.add(exp_avgs[i]).data_ptr<float>() : nullptr;
    work.grads.push_back(grads[i].contiguous());
    const void* grad = work.grads.back().data_ptr();
    TORCH_CHECK(slots + chunks < (int64_t{1} << 31), "full_moment_step_: too many elements (", slots + chunks,
                " chunks of ", kChunk, ")");

    if (tensor_tables.empty() || tensor_counts.back() == kMaxReduceTensors) {
      tensor_tables.emplace_back();
      tensor_counts.push_back(0);
    }
    const int r = tensor_counts.back()++;
    TensorTable& reduce = tensor_tables.back();
    reduce.sizes[r] = step_sizes(numel, lrs[i], eps2, scale_parameter, weight_decay);
    reduce.partial_base[r] = static_cast<int32_t>(slots);
    reduce.chunks[r] = static_cast<int32_t>(chunks);
    reduce.index[r] = static_cast<int32_t>(i);

    int t = -1; // the tensor's entry in the current chunk table
    for (int64_t c = 0; c < chunks; ++c) {
      if (chunk_blocks.back() == kMaxBlocks || (t < 0 && chunk_tensors.back() == kMaxTensors)) {
        chunk_tables.emplace_back();
        chunk_blocks.push_back(0);
        chunk_tensors.push_back(0);
        t = -1;
      }
      ChunkTable& table = chunk_tables.back();
      if (t < 0) {
        t = chunk_tensors.back()++;
        table.param[t] = param;
        table.grad[t] = grad;
        table.exp_avg_sq[t] = exp_avg_sq;
        table.exp_avg[t] = exp_avg;
        table.numel[t] = numel;
        table.beta2[t] = static_cast<float>(beta2s[i]);
        table.one_minus_beta2[t] = static_cast<float>(1.0 - beta2s[i]);
        table.partial_base[t] = static_cast<int32_t>(slots);
        table.index[t] = static_cast<int32_t>(i);
      }
      table.block_tensor[chunk_blocks.back()] = static_cast<uint8_t>(t);
      table.block_chunk[chunk_blocks.back()] = static_cast<int32_t>(c);
      ++chunk_blocks.back();
    }
    slots += chunks;
  }

  at::Tensor rms = at::zeros({static_cast<int64_t>(n)}, fp32); // empty parameters report 0
  if (slots == 0) {
    return rms.unbind(0);
  }
  at::Tensor partial = at::empty({slots, 2}, fp32);
  at::Tensor steps = at::empty({static_cast<int64_t>(n), static_cast<int64_t>(sizeof(ParamStep) / sizeof(float))}, fp32);
  auto* steps_ptr = reinterpret_cast<ParamStep*>(steps.data_ptr<float>());
  const MomentScalars scalars{
      static_cast<float>(eps1), static_cast<float>(beta1), static_cast<float>(1.0 - beta1), momentum};
  const StepRule rule = step_rule(eps2, scale_parameter, clip_threshold, weight_decay);
  const auto stream = at::cuda::getCurrentCUDAStream();
  FLORA_DISPATCH_PARAM_TYPES(params[0].scalar_type(), "full_moment_step_cuda", [&] {
    for (size_t g = 0; g < chunk_tables.size(); ++g) {
      if (chunk_blocks[g] > 0) {
        full_moment_moments_kernel<scalar_t>
            <<<chunk_blocks[g], kThreads, 0, stream>>>(chunk_tables[g], scalars, partial.data_ptr<float>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
    for (size_t g = 0; g < tensor_tables.size(); ++g) {
      full_moment_step_size_kernel<<<tensor_counts[g], kThreads, 0, stream>>>(
          tensor_tables[g], rule, partial.data_ptr<float>(), steps_ptr, rms.data_ptr<float>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    for (size_t g = 0; g < chunk_tables.size(); ++g) {
      if (chunk_blocks[g] > 0) {
        full_moment_write_kernel<scalar_t>
            <<<chunk_blocks[g], kThreads, 0, stream>>>(chunk_tables[g], rule, momentum, steps_ptr);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
  });
  work.write_back();
  return rms.unbind(0);
}

} // namespace

TORCH_LIBRARY_IMPL(flora, CUDA, m) {
  m.impl("full_moment_step_", &full_moment_step_cuda);
}

} // namespace flora::cuda
