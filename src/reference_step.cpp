// The reference step: flora-opt 0.0.3's sequence of ATen operations (its
// rounding, its temporaries), for bit-parity with the Python package in
// ProjectionMode::reference. Device-agnostic: the kernels behind the
// operators know the devices.

#include "step.h"

#include "param_state.h"

#include <flora/ops.h>
#include <flora/projection.h>
#include <flora/quantization.h>

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

namespace flora::detail {
namespace {

// A moment to work on in float32 during a step: the state tensor itself, or
// its dequantized copy, written back (requantized) by store(). 8-bit states
// hold codes (ParamLayout::quantized, which every load checks).
class WorkingMoment {
 public:
  WorkingMoment(torch::Tensor& value, torch::Tensor& absmax, const FloraOptions& options)
      : value_(value), absmax_(absmax), block_(options.quantization_block_size()), quantized_(value.scalar_type() == torch::kByte) {
    work_ = quantized_ ? dequantize_blockwise(QuantizedTensor{value_, absmax_}, block_) : value_;
  }
  torch::Tensor& get() {
    return work_;
  }
  void store() {
    if (quantized_) {
      QuantizedTensor target{value_, absmax_};
      quantize_blockwise_into(work_, target, block_);
    }
  }

 private:
  torch::Tensor& value_;
  torch::Tensor& absmax_;
  torch::Tensor work_;
  int64_t block_;
  bool quantized_;
};

// beta2_t = 1 - t^decay_rate.
double beta2_at(int64_t step, const FloraOptions& options) {
  return 1.0 - std::pow(static_cast<double>(step), options.decay_rate());
}

// lr, or the relative step min(warmup_init ? 1e-6 t : 1e-2, 1 / sqrt(t)); the
// parameter-RMS scale is applied on the device by apply_update_.
double step_size_at(int64_t step, const FloraOptions& options) {
  if (!options.relative_step()) {
    return *options.lr();
  }
  const double ceiling = options.warmup_init() ? 1e-6 * static_cast<double>(step) : 1e-2;
  return std::min(ceiling, 1.0 / std::sqrt(static_cast<double>(step)));
}

// The parameters of one full_moment_step_ call.
struct FullMomentBatch {
  explicit FullMomentBatch(const FloraOptions* group_options) : options(group_options) {}

  const FloraOptions* options;
  std::vector<torch::Tensor> params, grads, exp_avg_sqs, exp_avgs;
  std::vector<double> beta2s, lrs;
  std::vector<FloraParamState*> states;
  std::vector<WorkingMoment> moments; // requantized after the step
  bool momentum = false;

  void add(const torch::Tensor& param, const torch::Tensor& grad, FloraParamState& state, bool with_momentum) {
    momentum = with_momentum; // the same for the whole batch: beta1 is per group
    params.push_back(param);
    grads.push_back(grad);
    moments.emplace_back(state.exp_avg_sq(), state.exp_avg_sq_absmax(), *options);
    exp_avg_sqs.push_back(moments.back().get());
    if (with_momentum) {
      moments.emplace_back(state.exp_avg(), state.exp_avg_absmax(), *options);
      exp_avgs.push_back(moments.back().get());
    }
    beta2s.push_back(beta2_at(state.step(), *options));
    lrs.push_back(step_size_at(state.step(), *options));
    states.push_back(&state);
  }

  void run() {
    const auto [eps1, eps2] = options->eps();
    const auto rms = ops::full_moment_step_(
        params, grads, exp_avg_sqs, exp_avgs, beta2s, lrs, eps1, eps2, momentum ? *options->beta1() : 0.0,
        options->scale_parameter(), options->clip_threshold(), options->weight_decay());
    for (size_t i = 0; i < states.size(); ++i) {
      states[i]->rms(rms[i]);
    }
    for (auto& m : moments) {
      m.store();
    }
  }
};

void update_factored(
    torch::Tensor& param, const torch::Tensor& grad, FloraParamState& state, const FloraOptions& options,
    const ParamLayout& layout) {
  const auto shape = grad.sizes();
  const auto fp32 = param.options().dtype(torch::kFloat);
  const int64_t step = state.step();
  const double eps1 = std::get<0>(options.eps());

  auto& row = state.exp_avg_sq_row();
  auto& col = state.exp_avg_sq_col();
  torch::Tensor update = ops::second_moment_factored_(grad, row, col, beta2_at(step, options), eps1);

  if (layout.momentum) {
    const double b1 = *options.beta1();
    WorkingMoment moment(state.exp_avg(), state.exp_avg_absmax(), options);
    auto& m = moment.get();
    if (!layout.compressed) {
      // (1 - b1) u + b1 m, rounded as flora-opt rounds it.
      update.mul_(1.0 - b1);
      m.mul_(b1).add_(update);
      update.copy_(m);
    } else {
      const int64_t rank = *options.rank();
      auto projection = [&](int64_t seed) {
        return Projection(seed, shape[0], shape[1], rank, options.projection(), Projection::Seeding::split, fp32);
      };
      // Reference mode rounds as flora-opt does (separate products and
      // sums): a momentum re-projected every few steps is ill-conditioned
      // enough that GEMM-folded rounding drifts ~1e-6 from it. Otherwise the
      // mixing is folded into the GEMMs (alpha/beta), saving passes and
      // temporaries.
      const bool reference_rounding = options.projection() == ProjectionMode::reference;
      const bool resample = step % options.kappa() == 0;
      Projection current = projection(state.seed());
      torch::Tensor carried; // up(m) in the current basis
      torch::Tensor mixed; // (1 - b1) u + b1 up(m)
      if (resample || reference_rounding) {
        carried = current.up(m);
      }
      if (reference_rounding) {
        mixed = (carried * b1).add_(update * (1.0 - b1));
      } else if (!resample) {
        mixed = current.up_add(update, m, 1.0 - b1, b1);
      }
      if (resample) {
        // Carry the momentum into the new basis: m <- down'(up(m)).
        state.seed(next_seed(state.seed(), options.projection()));
        current = projection(state.seed());
        m.copy_(current.down(carried));
        if (!reference_rounding) {
          mixed = carried.mul_(b1).add_(update, 1.0 - b1);
        }
      }
      if (reference_rounding) {
        m.mul_(b1).add_(current.down(update).mul_(1.0 - b1));
      } else {
        current.down_add_(m, update, b1, 1.0 - b1);
      }
      update = std::move(mixed);
    }
    moment.store();
  }

  state.rms(ops::apply_update_(
      param, update, step_size_at(step, options), std::get<1>(options.eps()), options.scale_parameter(),
      options.clip_threshold(), options.weight_decay()));
}

} // namespace

void reference_step(StateMap& states, std::vector<PendingUpdate>& pending) {
  // Parameters on the full-second-moment path (biases, norms, embeddings
  // when not factored, higher-rank tensors) are updated together, one call per
  // (options, device, dtype): on CUDA that is three launches for all of them.
  std::vector<FullMomentBatch> batches;
  for (auto& p : pending) {
    auto& slot = states[p.param.unsafeGetTensorImpl()];
    if (!slot) {
      auto fresh = std::make_unique<FloraParamState>();
      fresh->seed(parameter_seed(p.options->seed(), p.index));
      slot = std::move(fresh);
    }
    auto& state = static_cast<FloraParamState&>(*slot);
    const auto layout = ParamLayout::of(p.grad.sizes(), *p.options);
    if (state.step() == 0) {
      auto fresh = initial_state(p.grad.sizes(), *p.options, p.param.options());
      fresh.seed(state.seed());
      state = std::move(fresh);
    }
    state.step(state.step() + 1);
    if (layout.factored) {
      update_factored(p.param, p.grad, state, *p.options, layout);
      continue;
    }
    auto batch = std::find_if(batches.begin(), batches.end(), [&](const FullMomentBatch& b) {
      return b.options == p.options && b.params.front().device() == p.param.device() &&
          b.params.front().scalar_type() == p.param.scalar_type();
    });
    if (batch == batches.end()) {
      batches.push_back(FullMomentBatch{p.options});
      batch = std::prev(batches.end());
    }
    batch->add(p.param, p.grad, state, layout.momentum);
  }
  for (auto& batch : batches) {
    batch.run();
  }
}

} // namespace flora::detail
