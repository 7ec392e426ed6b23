// CUDA kernel of flora::full_moment_step_: the whole step for many small
// parameters (biases, norm weights: the full second-moment path) in two
// multi-tensor launches, however many parameters there are.
//
// Launch 1, per chunk of one tensor: v <- b2 v + (1 - b2)(g^2 + eps1),
//   u = rsqrt(v) g, m <- b1 m + (1 - b1) u (when there is momentum; the update
//   is then m), and the chunk's partial sums of p^2 and update^2 into a fixed
//   slot.
// Launch 2, per chunk: the tensor's sums (its partials added in a fixed
//   order), step size and clip factor, then the update recomputed from the new
//   v (or read from m) and the parameter written. No update tensor is ever
//   materialised.
// Tensors are described to the kernels by value (kernel parameters), in
// groups of at most kMaxTensors tensors and kMaxBlocks chunks; every launch 1
// group runs before any launch 2 group, since a tensor's chunks may span two
// groups.

#include "../src/kernel_checks.h"
#include "common.cuh"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <vector>

namespace flora::cuda {
namespace {

constexpr int64_t kChunk = 2048;
constexpr int kMaxTensors = 36;
constexpr int kMaxBlocks = 320;

struct TensorTable {
  void* param[kMaxTensors];
  const void* grad[kMaxTensors];
  float* exp_avg_sq[kMaxTensors];
  float* exp_avg[kMaxTensors];
  int64_t numel[kMaxTensors];
  float beta2[kMaxTensors];
  float lr[kMaxTensors];
  int32_t partial_base[kMaxTensors]; // first chunk slot of the tensor in `partial`
  int32_t rms_index[kMaxTensors]; // position of the tensor in the op's lists
  uint8_t block_tensor[kMaxBlocks];
  int32_t block_chunk[kMaxBlocks];
};
static_assert(sizeof(TensorTable) <= 4000, "kernel parameters are limited to 4 KB");

struct GroupScalars {
  float eps1;
  float eps2;
  float beta1;
  float one_minus_beta1;
  bool momentum;
  bool scale_parameter;
  float clip_threshold;
  float neg_weight_decay;
};

template <typename T>
__global__ void moments_kernel(TensorTable table, GroupScalars s, float* __restrict__ partial) {
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
  const float one_minus_b2 = 1.f - b2;
  float sp = 0.f, su = 0.f;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
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
  }
  sp = block_sum(sp, scratch);
  su = block_sum(su, scratch);
  if (threadIdx.x == 0) {
    const int64_t slot = table.partial_base[t] + chunk;
    partial[2 * slot] = sp;
    partial[2 * slot + 1] = su;
  }
}

template <typename T>
__global__ void write_kernel(TensorTable table, GroupScalars s, const float* __restrict__ partial,
                             float* __restrict__ rms_out) {
  const int t = table.block_tensor[blockIdx.x];
  const int64_t chunk = table.block_chunk[blockIdx.x];
  const int64_t n = table.numel[t];
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  const float* part = partial + 2 * static_cast<int64_t>(table.partial_base[t]);
  float sp = 0.f, su = 0.f;
  for (int64_t c = 0; c < chunks; ++c) { // the same order in every block
    sp += part[2 * c];
    su += part[2 * c + 1];
  }
  const float sqrt_n = sqrtf(static_cast<float>(n));
  const float rms_p = __fdiv_rn(sqrtf(sp), sqrt_n);
  const float rms_u = __fdiv_rn(sqrtf(su), sqrt_n);
  const float lr_t = s.scale_parameter ? __fmul_rn(fmaxf(rms_p, s.eps2), table.lr[t]) : table.lr[t];
  const float denom = fmaxf(__fdiv_rn(rms_u, s.clip_threshold), 1.f);
  const float decay = __fmul_rn(lr_t, s.neg_weight_decay);
  if (chunk == 0 && threadIdx.x == 0) {
    rms_out[table.rms_index[t]] = rms_p;
  }
  T* __restrict__ p = static_cast<T*>(table.param[t]);
  const T* __restrict__ g = static_cast<const T*>(table.grad[t]);
  const float* __restrict__ v = table.exp_avg_sq[t];
  const float* __restrict__ m = table.exp_avg[t];
  const int64_t begin = chunk * kChunk;
  const int64_t end = begin + kChunk < n ? begin + kChunk : n;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const float update = s.momentum ? m[i] : __fmul_rn(rsqrtf(v[i]), to_float(g[i]));
    const float u = __fmul_rn(__fdiv_rn(update, denom), lr_t);
    float pv = to_float(p[i]);
    if (s.neg_weight_decay != 0.f) {
      pv = fmaf(decay, pv, pv);
    }
    p[i] = from_float<T>(__fsub_rn(pv, u));
  }
}

// Splits the tensors into launch groups that fit a TensorTable.
struct Launch {
  TensorTable table;
  int blocks = 0;
  int tensors = 0;
};

std::vector<at::Tensor> full_moment_step_cuda(
    at::TensorList params, at::TensorList grads, at::TensorList exp_avg_sqs, at::TensorList exp_avgs,
    at::ArrayRef<double> beta2s, at::ArrayRef<double> lrs, double eps1, double eps2, double beta1,
    bool scale_parameter, double clip_threshold, double weight_decay) {
  detail::check_full_moment_lists(params, grads, exp_avg_sqs, exp_avgs, beta2s, lrs);
  const size_t n = params.size();
  if (n == 0) {
    return {};
  }
  const bool momentum = !exp_avgs.empty();
  const auto dtype = params[0].scalar_type();
  const auto device = params[0].device();
  for (size_t i = 0; i < n; ++i) {
    check_cuda_tensor(params[i], "full_moment_step_", "params[i]");
    check_cuda_tensor(grads[i], "full_moment_step_", "grads[i]");
    check_cuda_tensor(exp_avg_sqs[i], "full_moment_step_", "exp_avg_sqs[i]");
    TORCH_CHECK(
        params[i].scalar_type() == dtype && grads[i].scalar_type() == dtype && params[i].device() == device &&
            grads[i].device() == device,
        "full_moment_step_: params and grads must share one dtype and device; entry ", i, " has ",
        params[i].scalar_type(), "/", grads[i].scalar_type(), " on ", params[i].device());
    TORCH_CHECK(
        grads[i].sizes() == params[i].sizes() && exp_avg_sqs[i].sizes() == params[i].sizes() &&
            exp_avg_sqs[i].scalar_type() == at::kFloat && exp_avg_sqs[i].device() == device,
        "full_moment_step_: entry ", i, " has mismatched grad or exp_avg_sq (shape ", params[i].sizes(), ")");
    if (momentum) {
      check_cuda_tensor(exp_avgs[i], "full_moment_step_", "exp_avgs[i]");
      TORCH_CHECK(
          exp_avgs[i].sizes() == params[i].sizes() && exp_avgs[i].scalar_type() == at::kFloat &&
              exp_avgs[i].device() == device,
          "full_moment_step_: entry ", i, " has a mismatched exp_avg");
    }
  }
  const c10::cuda::CUDAGuard guard(device);
  const auto fp32 = params[0].options().dtype(at::kFloat);

  // Lay the chunks out: tensor i owns partial slots [base_i, base_i + chunks_i).
  std::vector<Launch> launches(1);
  int64_t slots = 0;
  for (size_t i = 0; i < n; ++i) {
    const int64_t numel = params[i].numel();
    const int64_t chunks = (numel + kChunk - 1) / kChunk;
    for (int64_t c = 0; c < chunks; ++c) {
      Launch* launch = &launches.back();
      const bool tensor_listed = launch->tensors > 0 && launch->table.rms_index[launch->tensors - 1] == static_cast<int32_t>(i);
      if (launch->blocks == kMaxBlocks || (!tensor_listed && launch->tensors == kMaxTensors)) {
        launches.emplace_back();
        launch = &launches.back();
      }
      if (launch->tensors == 0 || launch->table.rms_index[launch->tensors - 1] != static_cast<int32_t>(i)) {
        const int t = launch->tensors++;
        launch->table.param[t] = params[i].data_ptr();
        launch->table.grad[t] = grads[i].data_ptr();
        launch->table.exp_avg_sq[t] = exp_avg_sqs[i].data_ptr<float>();
        launch->table.exp_avg[t] = momentum ? exp_avgs[i].data_ptr<float>() : nullptr;
        launch->table.numel[t] = numel;
        launch->table.beta2[t] = static_cast<float>(beta2s[i]);
        launch->table.lr[t] = static_cast<float>(lrs[i]);
        launch->table.partial_base[t] = static_cast<int32_t>(slots);
        launch->table.rms_index[t] = static_cast<int32_t>(i);
      }
      launch->table.block_tensor[launch->blocks] = static_cast<uint8_t>(launch->tensors - 1);
      launch->table.block_chunk[launch->blocks] = static_cast<int32_t>(c);
      ++launch->blocks;
    }
    slots += chunks;
  }
  TORCH_CHECK(slots < (int64_t{1} << 31), "full_moment_step_: too many chunks");

  at::Tensor partial = at::empty({std::max<int64_t>(slots, 1), 2}, fp32);
  at::Tensor rms = at::zeros({static_cast<int64_t>(n)}, fp32); // empty parameters report 0
  const GroupScalars scalars{
      static_cast<float>(eps1),
      static_cast<float>(eps2),
      static_cast<float>(beta1),
      static_cast<float>(1.0 - beta1),
      momentum,
      scale_parameter,
      static_cast<float>(clip_threshold),
      static_cast<float>(-weight_decay)};
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "full_moment_step_cuda", [&] {
    for (const auto& launch : launches) {
      if (launch.blocks > 0) {
        moments_kernel<scalar_t><<<launch.blocks, kThreads, 0, stream>>>(launch.table, scalars, partial.data_ptr<float>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
    for (const auto& launch : launches) {
      if (launch.blocks > 0) {
        write_kernel<scalar_t><<<launch.blocks, kThreads, 0, stream>>>(
            launch.table, scalars, partial.data_ptr<float>(), rms.data_ptr<float>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
  });
  return rms.unbind(0);
}

} // namespace

TORCH_LIBRARY_IMPL(flora, CUDA, m) {
  m.impl("full_moment_step_", &full_moment_step_cuda);
}

} // namespace flora::cuda
