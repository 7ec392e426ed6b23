// CUDA kernels of the fused step's second phase (src/fused_ops.h):
// factored_step_, full_step_, factored_normalize_ and apply_updates_, with
// the CPU kernels' arithmetic (src/cpu/fused_step_kernel.cpp,
// fused_kernels_impl.h) element for element: every product and sum rounded
// on its own (__fmul_rn, __fadd_rn: no contraction into FMAs, which the CPU
// build forbids too), IEEE division and square root. Only the order in which
// reductions add their terms differs from the CPU's.
//
// Launches, each one per table of tensors for the whole list
// (multi_tensor.cuh), in this order:
//   factors   (factored_step_, factored_normalize_) one block per parameter:
//             the row and column EMAs from phase 1's sums of g^2, then the
//             factors rsqrt(row / mean(row)) and rsqrt(col) over those sums.
//   pass 1    (factored_step_, full_step_, apply_updates_) one block per
//             chunk: the update recomputed from the gradient and the old
//             moments (nothing written but a partial sum of update^2 per
//             chunk and, for 8-bit moments, the absmax of each block's new
//             values).
//   steps     one block per parameter: its partials added in order, then the
//             write's coefficients (kernels/step_math.h, in double), sum
//             update^2 into `sums` and RMS(p) into `rms`.
//   pass 2    one block per chunk: the update recomputed bit for bit, the
//             moments and the parameter written; 8-bit moments are
//             dequantized, updated and requantized block by block with the
//             absmax pass 1 found (a chunk is whole quantization blocks).
// No update tensor is materialised. The step count (beta2_t, the relative
// step size) and the learning rate come from the host's values or, in a
// capturable step, from the counters and the lr tensor (step_source.cuh).

#include "code_map.cuh"
#include "common.cuh"
#include "multi_tensor.cuh"
#include "quad.cuh"
#include "step_source.cuh"

#include "fused_ops.h"
#include "kernels/dtypes.h"
#include "kernels/fused_checks.h"
#include "kernels/step_math.h"
#include "kernels/sums_layout.h"

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>

namespace flora::cuda {
namespace {

using detail::StepHyper;
using detail::SumsLayout;
using OptTensor = const std::optional<at::Tensor>&;

constexpr int64_t kChunk = 16384; // elements per block (16 quads per thread)

// ---------------------------------------------------------------- factors

struct FactorTensor {
  float* row; // the EMAs (state)
  float* col;
  float* row_factor; // in: the row sums of g^2 (in `sums`); out: the factors
  float* col_factor;
  int64_t rows, cols;
  StepSource step;
};

struct FactorRule {
  double decay_rate;
  float eps1;
};

constexpr int kFactorTensors = tensors_within<FactorTensor>(sizeof(FactorRule));
using FactorTable = TensorChunks<FactorTensor, kFactorTensors>;
static_assert(within_param_limit<FactorTable>(sizeof(FactorRule)), "kernel parameters are limited to 4 KB");

// state * b2 + (sum * inv + eps1) * (1 - b2): Adafactor's EMA of mean(g^2 + eps1).
__device__ __forceinline__ float square_mean_ema(float state, float sum, float inv, float eps1, float b2, float omb2) {
  return __fadd_rn(__fmul_rn(state, b2), __fmul_rn(__fadd_rn(__fmul_rn(sum, inv), eps1), omb2));
}

__device__ __forceinline__ float inverse_sqrt(float x) {
  return __fdiv_rn(1.0f, __fsqrt_rn(x));
}

__global__ void __launch_bounds__(kThreads) factored_factors_kernel(
    const __grid_constant__ FactorTable table, const FactorRule rule) {
  __shared__ double reduce[kWarps];
  __shared__ float row_mean;
  const BlockChunk at = block_chunk(table);
  const FactorTensor& d = table.tensor[at.entry];
  const double beta2 = detail::beta2_at(d.step.get(), rule.decay_rate);
  const float b2 = static_cast<float>(beta2);
  const float omb2 = static_cast<float>(1.0 - beta2);
  const float inv_cols = __fdiv_rn(1.0f, static_cast<float>(d.cols));
  const float inv_rows = __fdiv_rn(1.0f, static_cast<float>(d.rows));
  double total = 0.0; // the CPU adds the rows in double too
  block_stride(0, d.rows, [&](int64_t r) {
    const float v = square_mean_ema(d.row[r], d.row_factor[r], inv_cols, rule.eps1, b2, omb2);
    d.row[r] = v;
    total += v;
  });
  block_stride(0, d.cols, [&](int64_t c) {
    const float v = square_mean_ema(d.col[c], d.col_factor[c], inv_rows, rule.eps1, b2, omb2);
    d.col[c] = v;
    d.col_factor[c] = inverse_sqrt(v);
  });
  total = block_sum(total, reduce);
  if (threadIdx.x == 0) {
    row_mean = static_cast<float>(total / static_cast<double>(d.rows));
  }
  __syncthreads();
  const float mean = row_mean;
  // The same rows as above: each thread reads back what it wrote.
  block_stride(0, d.rows, [&](int64_t r) { d.row_factor[r] = inverse_sqrt(__fdiv_rn(d.row[r], mean)); });
}

/// The factors of every parameter (factored_step_, factored_normalize_);
/// `shapes` gives their (rows, cols).
void launch_factors(
    at::TensorList shapes, at::TensorList rows, at::TensorList cols, float* sums, const SumsLayout& layout,
    c10::ArrayRef<int64_t> steps, at::TensorList counters, double eps1, double decay_rate, cudaStream_t stream) {
  ChunkPlan<FactorTensor, kFactorTensors> plan;
  for (size_t i = 0; i < shapes.size(); ++i) {
    plan.add(
        static_cast<int64_t>(i),
        FactorTensor{
            rows[i].data_ptr<float>(), cols[i].data_ptr<float>(), sums + layout.row_offset[i],
            sums + layout.col_offset[i], shapes[i].size(0), shapes[i].size(1), step_source(steps, counters, i)},
        1);
  }
  const FactorRule rule{decay_rate, static_cast<float>(eps1)};
  plan.launch_each([&](const FactorTable& table, unsigned blocks) {
    factored_factors_kernel<<<blocks, kThreads, 0, stream>>>(table, rule);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// ---------------------------------------------------------------- coefficients

/// The parameter write p <- p * keep - update * scale.
struct Coefficients {
  float keep;
  float scale;
};

struct CoefficientTensor {
  int64_t first_slot, chunks; // its pass-1 partials of sum update^2
  int64_t numel;
  StepSource step;
  float* rms;
};

struct CoefficientArgs {
  StepHyper hyper;
  const double* lr_tensor; // null: hyper.lr
  const float* partial;
  float* sums;
  int64_t count; // parameters (sums' layout)
  Coefficients* out;
};

constexpr int kCoefficientTensors = tensors_within<CoefficientTensor>(sizeof(CoefficientArgs));
using CoefficientTable = TensorChunks<CoefficientTensor, kCoefficientTensors>;
static_assert(within_param_limit<CoefficientTable>(sizeof(CoefficientArgs)), "kernel parameters are limited to 4 KB");

__global__ void __launch_bounds__(kThreads) fused_step_coefficients_kernel(
    const __grid_constant__ CoefficientTable table, const __grid_constant__ CoefficientArgs args) {
  __shared__ double reduce[kWarps];
  const BlockChunk at = block_chunk(table);
  const CoefficientTensor& d = table.tensor[at.entry];
  double s = 0.0; // the CPU adds its chunk partials in double too
  block_stride(0, d.chunks, [&](int64_t c) { s += args.partial[d.first_slot + c]; });
  s = block_sum(s, reduce);
  if (threadIdx.x == 0) {
    const double base =
        detail::base_step_size(d.step.get(), learning_rate(args.lr_tensor, args.hyper.lr), args.hyper);
    const auto c = detail::write_coefficients(args.sums[at.index], s, d.numel, base, args.hyper);
    args.sums[args.count + at.index] = static_cast<float>(s);
    args.out[at.index] = Coefficients{static_cast<float>(c.keep), static_cast<float>(c.scale)};
    *d.rms = static_cast<float>(c.param_rms);
  }
}

/// The coefficients of every parameter from the partials of pass 1.
void launch_coefficients(
    const ChunkPlan<CoefficientTensor, kCoefficientTensors>& plan, const CoefficientArgs& args, cudaStream_t stream) {
  plan.launch_each([&](const CoefficientTable& table, unsigned blocks) {
    fused_step_coefficients_kernel<<<blocks, kThreads, 0, stream>>>(table, args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// ---------------------------------------------------------------- factored_step_ and full_step_

/// A parameter's moment: float32 values or 8-bit codes.
struct Moment {
  void* values; // null: no such moment
  float* absmax; // codes: one per block
  float* next_absmax; // codes: the new values' absmax, from pass 1 to pass 2 (scratch)
};

struct UpdateTensor {
  void* param;
  const void* grad;
  Moment second; // full_step_: v
  Moment momentum; // m, when beta1 > 0
  const float* row_factor; // factored_step_: the factors (in `sums`)
  const float* col_factor;
  StepSource step;
  int64_t numel, cols;
  uint64_t rounding_key; // with rule.stochastic
};

struct UpdateRule {
  double decay_rate;
  int64_t chunk; // elements per thread block
  int64_t block; // elements per quantization block, or `chunk`
  float beta1, one_minus_beta1, eps1;
  bool factored, momentum, second_codes, momentum_codes;
  bool aligned; // every quad can be accessed whole
  bool stochastic; // bfloat16 parameters rounded stochastically
};

constexpr size_t kUpdateOther = sizeof(UpdateRule) + sizeof(CodeMap) + 2 * sizeof(void*);
constexpr int kUpdateTensors = tensors_within<UpdateTensor>(kUpdateOther);
using UpdateTable = TensorChunks<UpdateTensor, kUpdateTensors>;
static_assert(within_param_limit<UpdateTable>(kUpdateOther), "kernel parameters are limited to 4 KB");

__device__ __forceinline__ void load_moment(
    const Moment& m, bool codes, int64_t e, int count, bool aligned, const float* map, float absmax, float out[4]) {
  if (codes) {
    uint8_t q[4];
    load_code_quad(static_cast<const uint8_t*>(m.values) + e, count, aligned, q);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      out[j] = j < count ? dequantized(map, q[j], absmax) : 0.f;
    }
  } else {
    load_quad(static_cast<const float*>(m.values) + e, count, aligned, out);
  }
}

__device__ __forceinline__ void store_moment(
    const Moment& m, bool codes, int64_t e, int count, bool aligned, const float* map, float absmax, float inverse,
    const float in[4]) {
  if (codes) {
    uint8_t q[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      q[j] = quantized(map, in[j], absmax, inverse);
    }
    store_code_quad(static_cast<uint8_t*>(m.values) + e, count, aligned, q);
  } else {
    store_quad(static_cast<float*>(m.values) + e, count, aligned, in);
  }
}

/// A moment's block: its absmax before the step, and (pass 2) after it.
struct BlockScale {
  float old_absmax = 0.f, new_absmax = 0.f, inverse = 0.f;
};

template <bool kWrite>
__device__ __forceinline__ BlockScale block_scale(const Moment& m, bool codes, int64_t block) {
  BlockScale s;
  if (codes) {
    s.old_absmax = m.absmax[block];
    if (kWrite) {
      s.new_absmax = m.next_absmax[block];
      s.inverse = inverse_absmax(s.new_absmax);
    }
  }
  return s;
}

// One pass over a chunk: pass 1 (kWrite false) returns this thread's sum of
// update^2 and writes the new absmax of 8-bit blocks to next_absmax; pass 2
// writes the moments and the parameter.
template <typename T, bool kWrite>
__device__ __forceinline__ void update_pass(
    const UpdateTable& table, const UpdateRule& rule, const CodeMap& code, float* __restrict__ partial,
    const Coefficients* __restrict__ coefficients) {
  __shared__ float map[256];
  __shared__ float reduce[kWarps];
  const BlockChunk at = block_chunk(table);
  const UpdateTensor& d = table.tensor[at.entry];
  const bool codes = rule.second_codes || rule.momentum_codes;
  if (codes) {
    stage_code_map(code, map);
  }
  float b2 = 0.f, omb2 = 0.f;
  if (!rule.factored) {
    const double beta2 = detail::beta2_at(d.step.get(), rule.decay_rate);
    b2 = static_cast<float>(beta2);
    omb2 = static_cast<float>(1.0 - beta2);
  }
  Coefficients apply{1.f, 0.f};
  if (kWrite) {
    apply = coefficients[at.index];
  }
  const T* __restrict__ g = static_cast<const T*>(d.grad);
  T* __restrict__ p = static_cast<T*>(d.param);
  const Rounding rounding{d.rounding_key, rule.stochastic ? d.step.get() : 0, rule.stochastic};
  const int64_t begin = at.chunk * rule.chunk;
  const int64_t end = std::min(begin + rule.chunk, d.numel);
  float sum = 0.f;
  // Segments: the quantization blocks of the chunk (or the whole chunk).
  for (int64_t segment = begin; segment < end; segment += rule.block) {
    const int64_t segment_end = std::min(segment + rule.block, end);
    const int64_t qblock = segment / rule.block;
    const BlockScale vs = block_scale<kWrite>(d.second, rule.second_codes, qblock);
    const BlockScale ms = block_scale<kWrite>(d.momentum, rule.momentum_codes, qblock);
    float v_max = 0.f, m_max = 0.f;
    block_quads(segment, segment_end, [&](int64_t e, int count) {
      float gv[4], u[4];
      load_quad(g + e, count, rule.aligned, gv);
      if (rule.factored) {
        // u = (r_i c_j) g_ij, the CPU's product order.
        int64_t r = e / d.cols;
        int64_t c = e - r * d.cols;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          u[j] = 0.f;
          if (j < count) {
            u[j] = __fmul_rn(__fmul_rn(d.row_factor[r], d.col_factor[c]), gv[j]);
            if (++c == d.cols) {
              c = 0;
              ++r;
            }
          }
        }
      } else {
        // v <- v b2 + (g^2 + eps1)(1 - b2), u = g (1 / sqrt(v)).
        float v[4];
        load_moment(d.second, rule.second_codes, e, count, rule.aligned, map, vs.old_absmax, v);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          v[j] = __fadd_rn(__fmul_rn(v[j], b2), __fmul_rn(__fadd_rn(__fmul_rn(gv[j], gv[j]), rule.eps1), omb2));
          u[j] = __fmul_rn(gv[j], inverse_sqrt(v[j]));
          if (j < count) {
            v_max = fmaxf(v_max, fabsf(v[j]));
          }
        }
        if (kWrite) {
          store_moment(d.second, rule.second_codes, e, count, rule.aligned, map, vs.new_absmax, vs.inverse, v);
        }
      }
      if (rule.momentum) {
        // m <- m b1 + u (1 - b1); the update is m.
        float m[4];
        load_moment(d.momentum, rule.momentum_codes, e, count, rule.aligned, map, ms.old_absmax, m);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          m[j] = __fadd_rn(__fmul_rn(m[j], rule.beta1), __fmul_rn(u[j], rule.one_minus_beta1));
          u[j] = m[j];
          if (j < count) {
            m_max = fmaxf(m_max, fabsf(m[j]));
          }
        }
        if (kWrite) {
          store_moment(d.momentum, rule.momentum_codes, e, count, rule.aligned, map, ms.new_absmax, ms.inverse, m);
        }
      }
      if (kWrite) {
        float pv[4];
        load_quad(p + e, count, rule.aligned, pv);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          pv[j] = __fsub_rn(__fmul_rn(pv[j], apply.keep), __fmul_rn(u[j], apply.scale));
        }
        store_param_quad(p + e, e, count, rule.aligned, pv, rounding);
      } else {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          if (j < count) {
            sum = fmaf(u[j], u[j], sum);
          }
        }
      }
    });
    if (!kWrite) {
      // Uniform over the block: every thread takes every segment.
      if (rule.second_codes) {
        v_max = block_max(v_max, reduce);
        if (threadIdx.x == 0) {
          d.second.next_absmax[qblock] = v_max;
        }
      }
      if (rule.momentum_codes) {
        m_max = block_max(m_max, reduce);
        if (threadIdx.x == 0) {
          d.momentum.next_absmax[qblock] = m_max;
        }
      }
    }
  }
  if (!kWrite) {
    sum = block_sum(sum, reduce);
    if (threadIdx.x == 0) {
      partial[at.slot] = sum;
    }
  } else if (codes) {
    // Every thread has dequantized with the old absmax of its blocks (which
    // belong to this chunk alone): now they can be replaced.
    __syncthreads();
    block_stride(begin / rule.block, ceil_div(end, rule.block), [&](int64_t b) {
      if (rule.second_codes) {
        d.second.absmax[b] = d.second.next_absmax[b];
      }
      if (rule.momentum_codes) {
        d.momentum.absmax[b] = d.momentum.next_absmax[b];
      }
    });
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) fused_update_square_kernel(
    const __grid_constant__ UpdateTable table, const __grid_constant__ UpdateRule rule,
    const __grid_constant__ CodeMap code,
    float* __restrict__ partial, const Coefficients* __restrict__ coefficients) {
  update_pass<T, false>(table, rule, code, partial, coefficients);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) fused_update_write_kernel(
    const __grid_constant__ UpdateTable table, const __grid_constant__ UpdateRule rule,
    const __grid_constant__ CodeMap code,
    float* __restrict__ partial, const Coefficients* __restrict__ coefficients) {
  update_pass<T, true>(table, rule, code, partial, coefficients);
}

bool moment_quantized(at::TensorList moments) {
  return !moments.empty() && moments[0].scalar_type() == at::kByte;
}

bool moments_aligned(at::TensorList moments, size_t i) {
  return moments.empty() || quad_aligned(moments[i]);
}

// Passes 1 and 2 and the coefficients between them, for factored_step_
// (`factors` given, exp_avg_sqs empty) and full_step_.
void run_update(
    at::TensorList params, at::TensorList grads, at::TensorList exp_avg_sqs, at::TensorList exp_avg_sq_absmaxs,
    at::TensorList exp_avgs, at::TensorList exp_avg_absmaxs, at::TensorList rms, at::Tensor& sums,
    const SumsLayout* factors, c10::ArrayRef<int64_t> steps, at::TensorList counters, OptTensor lr_tensor,
    const StepHyper& h, int64_t block_size, OptTensor code_map, c10::ArrayRef<int64_t> rounding_keys) {
  const size_t n = params.size();
  UpdateRule rule{};
  rule.stochastic = !rounding_keys.empty();
  rule.decay_rate = h.decay_rate;
  rule.beta1 = static_cast<float>(h.beta1);
  rule.one_minus_beta1 = static_cast<float>(1.0 - h.beta1);
  rule.eps1 = static_cast<float>(h.eps1);
  rule.factored = factors != nullptr;
  rule.momentum = !exp_avgs.empty();
  rule.second_codes = moment_quantized(exp_avg_sqs);
  rule.momentum_codes = moment_quantized(exp_avgs);
  const bool codes = rule.second_codes || rule.momentum_codes;
  // A chunk is whole quantization blocks, so that each requantizes on its own.
  rule.chunk = codes ? block_size * std::max<int64_t>(1, kChunk / block_size) : kChunk;
  rule.block = codes ? block_size : rule.chunk;
  rule.aligned = rule.chunk % 4 == 0 && (!codes || block_size % 4 == 0);
  for (size_t i = 0; i < n && rule.aligned; ++i) {
    rule.aligned = quad_aligned(params[i]) && quad_aligned(grads[i]) && moments_aligned(exp_avg_sqs, i) &&
        moments_aligned(exp_avgs, i);
  }

  // The scratch: coefficients (2 floats per parameter), the partials of
  // pass 1 (one per chunk), the new absmax of each 8-bit block.
  int64_t slots = 0, blocks = 0;
  for (size_t i = 0; i < n; ++i) {
    slots += ceil_div(params[i].numel(), rule.chunk);
    const int64_t q = codes ? ceil_div(params[i].numel(), block_size) : 0;
    blocks += (rule.second_codes ? q : 0) + (rule.momentum_codes ? q : 0);
  }
  at::Tensor scratch = at::empty({2 * static_cast<int64_t>(n) + slots + blocks}, params[0].options().dtype(at::kFloat));
  auto* coefficients = reinterpret_cast<Coefficients*>(scratch.data_ptr<float>());
  float* partial = scratch.data_ptr<float>() + 2 * static_cast<int64_t>(n);
  float* next_absmax = partial + slots;

  float* s = sums.data_ptr<float>();
  ChunkPlan<UpdateTensor, kUpdateTensors> passes;
  ChunkPlan<CoefficientTensor, kCoefficientTensors> steps_plan;
  const auto moment = [&](at::TensorList values, at::TensorList absmaxes, bool quantized, size_t i) {
    Moment m{nullptr, nullptr, nullptr};
    if (values.empty()) {
      return m;
    }
    m.values = values[i].data_ptr();
    if (quantized) {
      m.absmax = absmaxes[i].data_ptr<float>();
      m.next_absmax = next_absmax;
      next_absmax += absmaxes[i].numel();
    }
    return m;
  };
  for (size_t i = 0; i < n; ++i) {
    const auto index = static_cast<int64_t>(i);
    const int64_t numel = params[i].numel();
    UpdateTensor t{};
    t.param = params[i].data_ptr();
    t.grad = grads[i].data_ptr();
    t.second = moment(exp_avg_sqs, exp_avg_sq_absmaxs, rule.second_codes, i);
    t.momentum = moment(exp_avgs, exp_avg_absmaxs, rule.momentum_codes, i);
    if (factors != nullptr) {
      t.row_factor = s + factors->row_offset[i];
      t.col_factor = s + factors->col_offset[i];
    }
    t.step = step_source(steps, counters, i);
    t.numel = numel;
    t.cols = params[i].dim() == 2 ? params[i].size(1) : numel;
    t.rounding_key = rounding_keys.empty() ? 0 : static_cast<uint64_t>(rounding_keys[i]);
    const int64_t chunks = ceil_div(numel, rule.chunk);
    const int64_t first = passes.add(index, t, chunks);
    steps_plan.add(index, CoefficientTensor{first, chunks, numel, t.step, rms[i].data_ptr<float>()}, 1);
  }

  const auto map = code_map.has_value() && codes ? code_map_of(*code_map) : CodeMap{};
  const CoefficientArgs args{h, lr_address(lr_tensor), partial, s, static_cast<int64_t>(n), coefficients};
  const auto stream = at::cuda::getCurrentCUDAStream();
  FLORA_DISPATCH_PARAM_TYPES(params[0].scalar_type(), "fused_update_cuda", [&] {
    passes.launch_each([&](const UpdateTable& table, unsigned grid) {
      fused_update_square_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(table, rule, map, partial, coefficients);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    launch_coefficients(steps_plan, args, stream);
    passes.launch_each([&](const UpdateTable& table, unsigned grid) {
      fused_update_write_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(table, rule, map, partial, coefficients);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

void factored_step_cuda(
    at::TensorList params, at::TensorList grads, at::TensorList rows, at::TensorList cols, at::TensorList exp_avgs,
    at::TensorList exp_avg_absmaxs, at::TensorList rms, at::Tensor& sums, c10::ArrayRef<int64_t> steps,
    at::TensorList counters, OptTensor lr_tensor, c10::ArrayRef<double> hyper, int64_t block_size,
    OptTensor code_map, c10::ArrayRef<int64_t> rounding_keys) {
  detail::check_factored_step_args(
      params, grads, rows, cols, exp_avgs, exp_avg_absmaxs, rms, sums, steps, counters, lr_tensor, hyper, block_size,
      code_map, rounding_keys);
  if (params.empty()) {
    return;
  }
  const c10::cuda::CUDAGuard guard(params[0].device());
  const auto h = ops::hyper_from(hyper);
  const auto layout = SumsLayout::of(params, true);
  launch_factors(
      params, rows, cols, sums.data_ptr<float>(), layout, steps, counters, h.eps1, h.decay_rate,
      at::cuda::getCurrentCUDAStream());
  run_update(
      params, grads, {}, {}, exp_avgs, exp_avg_absmaxs, rms, sums, &layout, steps, counters, lr_tensor, h, block_size,
      code_map, rounding_keys);
}

void full_step_cuda(
    at::TensorList params, at::TensorList grads, at::TensorList exp_avg_sqs, at::TensorList exp_avg_sq_absmaxs,
    at::TensorList exp_avgs, at::TensorList exp_avg_absmaxs, at::TensorList rms, at::Tensor& sums,
    c10::ArrayRef<int64_t> steps, at::TensorList counters, OptTensor lr_tensor, c10::ArrayRef<double> hyper,
    int64_t block_size, OptTensor code_map, c10::ArrayRef<int64_t> rounding_keys) {
  detail::check_full_step_args(
      params, grads, exp_avg_sqs, exp_avg_sq_absmaxs, exp_avgs, exp_avg_absmaxs, rms, sums, steps, counters,
      lr_tensor, hyper, block_size, code_map, rounding_keys);
  if (params.empty()) {
    return;
  }
  const c10::cuda::CUDAGuard guard(params[0].device());
  run_update(
      params, grads, exp_avg_sqs, exp_avg_sq_absmaxs, exp_avgs, exp_avg_absmaxs, rms, sums, nullptr, steps, counters,
      lr_tensor, ops::hyper_from(hyper), block_size, code_map, rounding_keys);
}

// ---------------------------------------------------------------- factored_normalize_

struct NormalizeTensor {
  const void* grad;
  const float* row_factor;
  const float* col_factor;
  float* out;
  int64_t numel, cols;
};

constexpr int kNormalizeTensors = tensors_within<NormalizeTensor>(sizeof(bool));
using NormalizeTable = TensorChunks<NormalizeTensor, kNormalizeTensors>;
static_assert(within_param_limit<NormalizeTable>(sizeof(bool)), "kernel parameters are limited to 4 KB");

template <typename T>
__global__ void __launch_bounds__(kThreads) factored_normalize_kernel(
    const __grid_constant__ NormalizeTable table, const bool aligned) {
  const BlockChunk at = block_chunk(table);
  const NormalizeTensor& d = table.tensor[at.entry];
  const T* __restrict__ g = static_cast<const T*>(d.grad);
  const int64_t begin = at.chunk * kChunk;
  block_quads(begin, std::min(begin + kChunk, d.numel), [&](int64_t e, int count) {
    float v[4];
    load_quad(g + e, count, aligned, v);
    int64_t r = e / d.cols;
    int64_t c = e - r * d.cols;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (j < count) {
        v[j] = __fmul_rn(__fmul_rn(d.row_factor[r], d.col_factor[c]), v[j]);
        if (++c == d.cols) {
          c = 0;
          ++r;
        }
      }
    }
    store_quad(d.out + e, count, aligned, v);
  });
}

void factored_normalize_cuda(
    at::TensorList grads, at::TensorList rows, at::TensorList cols, at::Tensor& sums, c10::ArrayRef<int64_t> steps,
    at::TensorList counters, double eps1, double decay_rate, at::Tensor& out) {
  detail::check_factored_normalize_args(grads, rows, cols, sums, steps, counters, out);
  if (grads.empty()) {
    return;
  }
  const c10::cuda::CUDAGuard guard(grads[0].device());
  const auto layout = SumsLayout::of(grads, true);
  const auto stream = at::cuda::getCurrentCUDAStream();
  float* s = sums.data_ptr<float>();
  launch_factors(grads, rows, cols, s, layout, steps, counters, eps1, decay_rate, stream);

  const int64_t numel = grads[0].numel();
  bool aligned = numel % 4 == 0 && quad_aligned(out);
  ChunkPlan<NormalizeTensor, kNormalizeTensors> plan;
  for (size_t i = 0; i < grads.size(); ++i) {
    aligned = aligned && quad_aligned(grads[i]);
    plan.add(
        static_cast<int64_t>(i),
        NormalizeTensor{
            grads[i].data_ptr(), s + layout.row_offset[i], s + layout.col_offset[i],
            out.data_ptr<float>() + static_cast<int64_t>(i) * numel, numel, grads[i].size(1)},
        ceil_div(numel, kChunk));
  }
  FLORA_DISPATCH_PARAM_TYPES(grads[0].scalar_type(), "factored_normalize_cuda", [&] {
    plan.launch_each([&](const NormalizeTable& table, unsigned grid) {
      factored_normalize_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(table, aligned);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

// ---------------------------------------------------------------- apply_updates_

struct AppliedTensor {
  void* param;
  const float* update; // its (rows, cols) slice of the batch
  int64_t numel;
  StepSource step; // with args.stochastic
  uint64_t rounding_key;
};

struct AppliedArgs {
  float* partial;
  const Coefficients* coefficients;
  bool aligned;
  bool stochastic; // bfloat16 parameters rounded stochastically
};

constexpr int kAppliedTensors = tensors_within<AppliedTensor>(sizeof(AppliedArgs));
using AppliedTable = TensorChunks<AppliedTensor, kAppliedTensors>;
static_assert(within_param_limit<AppliedTable>(sizeof(AppliedArgs)), "kernel parameters are limited to 4 KB");

// Pass 1: a chunk's sum of update^2.
__global__ void __launch_bounds__(kThreads) applied_update_square_kernel(
    const __grid_constant__ AppliedTable table, const AppliedArgs args) {
  __shared__ float reduce[kWarps];
  const BlockChunk at = block_chunk(table);
  const AppliedTensor& d = table.tensor[at.entry];
  const int64_t begin = at.chunk * kChunk;
  float sum = 0.f;
  block_quads(begin, std::min(begin + kChunk, d.numel), [&](int64_t e, int count) {
    float u[4];
    load_quad(d.update + e, count, args.aligned, u);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      sum = fmaf(u[j], u[j], sum); // lanes past count are 0
    }
  });
  sum = block_sum(sum, reduce);
  if (threadIdx.x == 0) {
    args.partial[at.slot] = sum;
  }
}

// Pass 2: p <- p * keep - update * scale.
template <typename T>
__global__ void __launch_bounds__(kThreads) applied_update_write_kernel(
    const __grid_constant__ AppliedTable table, const AppliedArgs args) {
  const BlockChunk at = block_chunk(table);
  const AppliedTensor& d = table.tensor[at.entry];
  const Coefficients apply = args.coefficients[at.index];
  T* __restrict__ p = static_cast<T*>(d.param);
  const Rounding rounding{d.rounding_key, args.stochastic ? d.step.get() : 0, args.stochastic};
  const int64_t begin = at.chunk * kChunk;
  block_quads(begin, std::min(begin + kChunk, d.numel), [&](int64_t e, int count) {
    float pv[4], u[4];
    load_quad(p + e, count, args.aligned, pv);
    load_quad(d.update + e, count, args.aligned, u);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      pv[j] = __fsub_rn(__fmul_rn(pv[j], apply.keep), __fmul_rn(u[j], apply.scale));
    }
    store_param_quad(p + e, e, count, args.aligned, pv, rounding);
  });
}

void apply_updates_cuda(
    at::TensorList params, const at::Tensor& updates, at::TensorList rms, at::Tensor& sums,
    c10::ArrayRef<int64_t> steps, at::TensorList counters, OptTensor lr_tensor, c10::ArrayRef<double> hyper,
    c10::ArrayRef<int64_t> rounding_keys) {
  detail::check_apply_updates_args(params, updates, rms, sums, steps, counters, lr_tensor, hyper, rounding_keys);
  if (params.empty()) {
    return;
  }
  const c10::cuda::CUDAGuard guard(params[0].device());
  const auto h = ops::hyper_from(hyper);
  const size_t n = params.size();
  const int64_t numel = params[0].numel();
  const int64_t chunks = ceil_div(numel, kChunk);
  at::Tensor scratch =
      at::empty({2 * static_cast<int64_t>(n) + chunks * static_cast<int64_t>(n)}, params[0].options().dtype(at::kFloat));
  auto* coefficients = reinterpret_cast<Coefficients*>(scratch.data_ptr<float>());
  float* partial = scratch.data_ptr<float>() + 2 * static_cast<int64_t>(n);

  bool aligned = numel % 4 == 0 && quad_aligned(updates);
  ChunkPlan<AppliedTensor, kAppliedTensors> passes;
  ChunkPlan<CoefficientTensor, kCoefficientTensors> steps_plan;
  for (size_t i = 0; i < n; ++i) {
    const auto index = static_cast<int64_t>(i);
    aligned = aligned && quad_aligned(params[i]);
    const int64_t first = passes.add(
        index,
        AppliedTensor{
            params[i].data_ptr(), updates.data_ptr<float>() + index * numel, numel, step_source(steps, counters, i),
            rounding_keys.empty() ? 0 : static_cast<uint64_t>(rounding_keys[i])},
        chunks);
    steps_plan.add(
        index,
        CoefficientTensor{first, chunks, numel, step_source(steps, counters, i), rms[i].data_ptr<float>()}, 1);
  }
  const AppliedArgs pass_args{partial, coefficients, aligned, !rounding_keys.empty()};
  const CoefficientArgs args{
      h, lr_address(lr_tensor), partial, sums.data_ptr<float>(), static_cast<int64_t>(n), coefficients};
  const auto stream = at::cuda::getCurrentCUDAStream();
  passes.launch_each([&](const AppliedTable& table, unsigned grid) {
    applied_update_square_kernel<<<grid, kThreads, 0, stream>>>(table, pass_args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  launch_coefficients(steps_plan, args, stream);
  FLORA_DISPATCH_PARAM_TYPES(params[0].scalar_type(), "apply_updates_cuda", [&] {
    passes.launch_each([&](const AppliedTable& table, unsigned grid) {
      applied_update_write_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(table, pass_args);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

} // namespace

TORCH_LIBRARY_IMPL(flora, CUDA, m) {
  m.impl("factored_step_", &factored_step_cuda);
  m.impl("full_step_", &full_step_cuda);
  m.impl("factored_normalize_", &factored_normalize_cuda);
  m.impl("apply_updates_", &apply_updates_cuda);
}

} // namespace flora::cuda
