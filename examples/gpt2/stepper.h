#pragma once

// The optimizer step of the training loop, behind one small interface.
//
// A training step is
//     stepper.begin_step();
//     for each micro-batch i of N:  stepper.backward(loss_i / N, i == N - 1);
//     stepper.finish_step();
// and a TrainStepper decides what happens to gradients in between: the plain
// one (OptimizerStepper) lets autograd sum them in .grad and calls
// optimizer.step() at the end. Future Flora memory modes plug in here
// without touching the loop:
//   - compressed gradient accumulation (--accumulation-rank): backward()
//     folds each micro-batch's .grad into a low-rank accumulator and clears
//     it; finish_step() decompresses and steps;
//   - update fused into backward (--fused-backward): backward(..., last=true)
//     registers per-parameter hooks that apply the update as each gradient
//     is produced; finish_step() only advances the step count;
//   - 8-bit states (--quantization): a FloraOptions setting.
// Adding a mode: a new TrainStepper subclass (or option) and one case in
// make_stepper(); validate() then stops rejecting its flag.

#include <flora/options.h>

#include <torch/optim/optimizer.h>
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
  // Flora memory modes, not available yet (validate() rejects them).
  std::string quantization = "none";
  int64_t accumulation_rank = 0;
  bool fused_backward = false;

  /// A short description, e.g. "flora(lr=0.1,rank=32,kappa=1000,b1=0.9)".
  std::string label() const;
};

/// Throws c10::Error with a clear message for unknown names, bad values and
/// modes that are not available yet.
void validate(const OptimizerSpec& spec);

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

  const OptimizerSpec& spec() const {
    return spec_;
  }

 protected:
  explicit TrainStepper(OptimizerSpec spec) : spec_(std::move(spec)) {}

 private:
  OptimizerSpec spec_;
};

/// Validates `spec` and builds its stepper over `params`.
std::unique_ptr<TrainStepper> make_stepper(const OptimizerSpec& spec, const std::vector<torch::Tensor>& params);

/// Parses "philox" / "reference".
ProjectionMode parse_projection(const std::string& name);

} // namespace flora::gpt2
