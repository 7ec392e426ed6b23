#pragma once

// The optimizer step fused into backward (LOMO-style, as flora-opt does with
// post-accumulate-grad hooks): each parameter is updated as soon as its
// gradient is complete during backward(), and its gradient is released right
// after, so the full gradients of a model never all exist at once.
//
//   flora::Flora optimizer(model->parameters(), flora::FloraOptions(1e-3).rank(64).beta1(0.9));
//   flora::FusedBackward fused(optimizer);      // installs the hooks
//   for (auto& batch : data) {
//     loss_fn(model, batch).backward();         // updates happen in here
//   }                                           // no optimizer.step()
//
// With accumulation_steps(k) the update happens in every k-th backward pass;
// in the others the gradients are accumulated, compressed to
// accumulation_rank when it is set (CompressedAccumulator), and released.
// The end of a backward pass is detected with an autograd-engine callback,
// so every backward() counts as one micro-batch.
//
// Gradient clipping: only what needs a parameter's own gradient can be done
// inside backward: clip_value (elementwise) and max_parameter_norm (each
// parameter's gradient norm). Clipping by the global norm of all gradients
// needs every gradient before the first update, which is exactly what the
// fused mode avoids: asking for it (max_global_norm) is an error.
//
// The hooks are removed when the FusedBackward is destroyed or remove() is
// called. A parameter may carry only one post-accumulate-grad hook: if it has
// one already, the constructor throws.

#include <flora/accumulation.h>
#include <flora/export.h>
#include <flora/optimizer.h>

#include <torch/arg.h>
#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>

namespace flora {

struct FLORA_API FusedBackwardOptions {
  /// Micro-batches (backward passes) per update.
  TORCH_ARG(int64_t, accumulation_steps) = 1;
  /// Compress the accumulation across micro-batches to this rank (unset:
  /// accumulate uncompressed). Only with accumulation_steps > 1.
  TORCH_ARG(std::optional<int64_t>, accumulation_rank);
  /// Generator and base seed of the accumulation's projections.
  TORCH_ARG(ProjectionMode, projection) = ProjectionMode::philox;
  TORCH_ARG(int64_t, accumulation_seed) = 0;
  /// Clamp every gradient element to [-clip_value, clip_value].
  TORCH_ARG(std::optional<double>, clip_value);
  /// Scale each parameter's gradient to at most this L2 norm.
  TORCH_ARG(std::optional<double>, max_parameter_norm);
  /// Clip by the global norm of all gradients: impossible in fused mode (an
  /// error, with the reason, if set).
  TORCH_ARG(std::optional<double>, max_global_norm);
};

/// A step that FusedBackward runs between a parameter's gradient being
/// complete and its update, inside backward: the place where data-parallel
/// training reduces each gradient across ranks layer by layer
/// (flora::distributed::GradientSynchronizer installs one), so that no full
/// set of gradients ever exists on a rank.
class FLORA_API FusedReduction {
 public:
  virtual ~FusedReduction() = default;
  /// Without accumulation: returns the gradient to update `param` with,
  /// given its local gradient (which it may modify).
  virtual torch::Tensor reduce_gradient(const torch::Tensor& param, torch::Tensor grad) = 0;
  /// With accumulation, in the backward pass that updates: reduces the
  /// accumulator's buffer of `param` (accumulator.buffer(param), a sketch
  /// when accumulator.compressed(param)) in place, after this pass's
  /// gradient was added to it and before it is taken for the update.
  virtual void reduce_accumulated(const torch::Tensor& param, CompressedAccumulator& accumulator) = 0;
};

class FLORA_API FusedBackward {
 public:
  explicit FusedBackward(Flora& optimizer, FusedBackwardOptions options = {});
  ~FusedBackward();
  FusedBackward(const FusedBackward&) = delete;
  FusedBackward& operator=(const FusedBackward&) = delete;

  /// Removes the hooks now (idempotent).
  void remove();
  /// Backward passes completed so far.
  int64_t micro_steps() const;
  /// Optimizer updates made so far.
  int64_t updates() const;
  /// The accumulator (null when accumulation_steps is 1).
  const CompressedAccumulator* accumulator() const {
    return accumulator_.get();
  }
  const FusedBackwardOptions& options() const {
    return options_;
  }
  /// The parameters whose updates are fused (those that require a
  /// gradient), in the optimizer's order.
  const std::vector<torch::Tensor>& parameters() const {
    return params_;
  }
  /// Installs the step run before every update (null removes it; installing
  /// over another is an error). FusedBackward shares its ownership, so it
  /// stays valid as long as the hooks are.
  void set_reduction(std::shared_ptr<FusedReduction> reduction);

 private:
  struct Hook;
  void on_gradient(const torch::Tensor& param);

  Flora& optimizer_;
  FusedBackwardOptions options_;
  std::unique_ptr<CompressedAccumulator> accumulator_;
  std::shared_ptr<FusedReduction> reduction_;
  std::vector<torch::Tensor> params_;
  mutable std::mutex mutex_;
  int64_t micro_steps_ = 0;
  int64_t updates_ = 0;
  /// The autograd graph task (torch::autograd::get_current_graph_task_id)
  /// whose end-of-backward callback is queued, -1 when none: a backward that
  /// fails never runs its callbacks, and the next one (another task) must
  /// queue its own.
  int64_t queued_task_ = -1;
  bool installed_ = false;
};

} // namespace flora
