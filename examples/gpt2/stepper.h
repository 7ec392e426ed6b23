#pragma once

// The optimizer step of the training loop, behind one small interface.
//
// A training step is
//     stepper.begin_step();
//     for each micro-batch i of N:  stepper.backward(loss_i / N, i == N - 1);
//     stepper.finish_step();
// and a TrainStepper decides what happens to gradients in between:
//   - plain: autograd sums them in .grad, then optimizer.step();
//   - compressed gradient accumulation (--accumulation-rank r, any optimizer):
//     after each micro-batch's backward the gradients are folded into a
//     rank-r flora::CompressedAccumulator and released; finish_step()
//     restores them and steps;
//   - update fused into backward (--fused-backward, flora): a
//     flora::FusedBackward updates each parameter inside the last
//     micro-batch's backward (accumulating, compressed with
//     --accumulation-rank, in the others); finish_step() has nothing left to
//     do;
//   - 8-bit states (--quantization 8bit, flora): a FloraOptions setting.
//
// Data-parallel training (data_parallel.h): given a DataParallel, the
// stepper also owns the flora::distributed::GradientSynchronizer that
// averages the gradients across ranks, in the place the library prescribes
// for each mode: plain, synchronize() between the last backward and the
// step (with overlap, the exchange starts from hooks during the last
// micro-batch's backward; the others run under no_sync()); compressed
// accumulation, synchronize() of the accumulator's buffers before restore();
// fused backward, inside backward's hooks. The synchroniser broadcasts rank
// 0's parameters when it is made.

#include <flora/options.h>

#include <torch/optim/optimizer.h>
#include <torch/serialize/archive.h>
#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace flora::gpt2 {

struct OptimizerSpec {
  /// "adam", "adamw" or "flora".
  std::string name = "adam";
  double lr = 3e-3;
  double weight_decay = 0.0;
  // Adam / AdamW.
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double adam_eps = 1e-8;
  // Flora (flora::FloraOptions).
  std::optional<int64_t> rank = 32;
  int64_t kappa = 1000;
  std::optional<double> beta1 = 0.9;
  int64_t seed = 0;
  ProjectionMode projection = ProjectionMode::philox;
  /// FloraOptions::max_aspect_ratio: compress the momentum of matrices up to
  /// this aspect ratio (infinity: all).
  double max_aspect_ratio = 4.0;
  /// FloraOptions::stochastic_rounding (bfloat16 parameters).
  bool stochastic_rounding = false;
  MomentumProjection momentum_projection = MomentumProjection::gaussian;
  bool momentum_rescale = false;
  // Flora memory modes.
  /// "none" or "8bit" (flora only).
  std::string quantization = "none";
  /// FloraOptions::quantization_min_size (with "8bit").
  int64_t quantization_min_size = FloraOptions().quantization_min_size();
  /// FloraOptions::projection_precision.
  ProjectionPrecision projection_precision = ProjectionPrecision::float32;
  /// Compress the gradient accumulation across micro-batches to this rank
  /// (0: plain accumulation). Needs micro_batches > 1.
  int64_t accumulation_rank = 0;
  /// Update each parameter inside backward (flora only).
  bool fused_backward = false;
  /// Micro-batches per step (the training loop's --grad-accum).
  int64_t micro_batches = 1;
  // Data-parallel gradient exchange (used when make_stepper is given a
  // DataParallel).
  /// Exchange compressible matrices as rank-r sketches (SynchronizerOptions::
  /// compression_rank); unset: plain. Not with an accumulator, whose rank
  /// decides.
  std::optional<int64_t> compression_rank;
  /// Start the exchange from hooks during backward (plain steppers only).
  bool overlap = false;

  /// A short description, e.g. "flora(lr=0.1,rank=32,kappa=1000,b1=0.9)".
  std::string label() const;
};

/// Throws c10::Error with a clear message for unknown names, bad values and
/// modes that do not apply. Flora's options are checked by flora::validate.
void validate(const OptimizerSpec& spec);

/// The flora::FloraOptions of a flora spec.
FloraOptions flora_options(const OptimizerSpec& spec);

class TrainStepper {
 public:
  virtual ~TrainStepper() = default;
  /// Starts an optimisation step: clears gradients (and accumulators).
  virtual void begin_step() = 0;
  /// Backpropagates one micro-batch's loss, already divided by the number of
  /// micro-batches; `last` marks the step's final micro-batch.
  virtual void backward(const torch::Tensor& loss, bool last) = 0;
  /// Applies the update.
  virtual void finish_step() = 0;
  /// Sets the learning rate of every parameter group (the scheduler calls
  /// it before each step).
  virtual void set_lr(double lr) = 0;
  /// Bytes of optimizer state (flora::optimizer_state_bytes).
  virtual int64_t state_bytes() const = 0;
  /// The underlying optimizer (e.g. for torch::save checkpoints).
  virtual torch::optim::Optimizer& optimizer() = 0;
  /// Bytes handed to the process group so far (0 when not data-parallel).
  virtual int64_t bytes_communicated() const = 0;

  /// Checkpoints: the optimizer's state, the accumulator's seeds and the
  /// data-parallel exchange's seeds (between steps). load() checks what it
  /// reads against this stepper; in a data-parallel run every rank loads
  /// (the exchange's load is a collective that checks the ranks agree),
  /// and then calls broadcast_parameters().
  virtual void save(torch::serialize::OutputArchive& archive) const = 0;
  virtual void load(torch::serialize::InputArchive& archive) = 0;
  /// Data-parallel: copies rank 0's parameters to every rank (a collective);
  /// nothing otherwise.
  virtual void broadcast_parameters() = 0;

  const OptimizerSpec& spec() const {
    return spec_;
  }

 protected:
  explicit TrainStepper(OptimizerSpec spec) : spec_(std::move(spec)) {}

 private:
  OptimizerSpec spec_;
};

class DataParallel;

/// Validates `spec` and builds its stepper over `params`. Optimizer states
/// are float32 (or 8-bit) whatever the parameters' dtype: Flora keeps them
/// so, and for Adam/AdamW over bfloat16 parameters they are created in
/// float32 before the first step. With `parallel` (a collective then: every
/// rank calls it with the same spec), the gradients are averaged across its
/// ranks and rank 0's parameter values are copied to every rank.
std::unique_ptr<TrainStepper> make_stepper(
    const OptimizerSpec& spec,
    const std::vector<torch::Tensor>& params,
    const DataParallel* parallel = nullptr);

/// Parses "philox" / "reference".
ProjectionMode parse_projection(const std::string& name);
/// Parses "gaussian" / "orthonormal" / "subspace".
MomentumProjection parse_momentum_projection(const std::string& name);
/// Parses "float32" / "bfloat16" / "tf32".
ProjectionPrecision parse_projection_precision(const std::string& name);

} // namespace flora::gpt2
