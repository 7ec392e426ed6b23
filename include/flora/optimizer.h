#pragma once

// flora::Flora: a torch::optim::Optimizer that drops in for
// torch::optim::Adam. Adafactor's factored second moment plus a momentum
// kept as a rank-r random projection that is regenerated from a seed and
// resampled every kappa steps (Hao, Cao, Mou, ICML 2024). Semantics are those
// of flora-opt 0.0.3 (see docs in README.md).

#include <flora/export.h>
#include <flora/layout.h>
#include <flora/options.h>
#include <flora/statistics.h>

#include <torch/optim/optimizer.h>
#include <torch/optim/serialize.h>

#include <cstdint>
#include <map>
#include <unordered_map>
#include <vector>

namespace flora {

/// Per-parameter state. Tensors that a parameter does not use stay undefined:
/// exp_avg without momentum; exp_avg_sq_row/col unless factored; exp_avg_sq
/// when factored. A compressed exp_avg is (rank, n) when the parameter is
/// (m, n) with m < n, else (m, rank). With quantization, exp_avg and
/// exp_avg_sq hold uint8 codes and exp_avg_absmax / exp_avg_sq_absmax the
/// float32 absmax of each block (see quantization.h).
struct FLORA_API FloraParamState
    : public torch::optim::OptimizerCloneableParamState<FloraParamState> {
  /// Steps taken by this parameter.
  TORCH_ARG(int64_t, step) = 0;
  /// Seed of the current projection (64-bit pattern).
  TORCH_ARG(int64_t, seed) = 0;
  /// RMS of the parameter at the start of the last step (0-d float32).
  TORCH_ARG(torch::Tensor, rms);
  TORCH_ARG(torch::Tensor, exp_avg);
  TORCH_ARG(torch::Tensor, exp_avg_sq_row);
  TORCH_ARG(torch::Tensor, exp_avg_sq_col);
  TORCH_ARG(torch::Tensor, exp_avg_sq);
  TORCH_ARG(torch::Tensor, exp_avg_absmax);
  TORCH_ARG(torch::Tensor, exp_avg_sq_absmax);
  /// Capturable steps only: int64 (step, seed, seed before this step) on
  /// the parameter's device, advanced by the step on the device. Not a
  /// field of the checkpoint (it writes step and seed from it) and not
  /// compared by ==: it is how the two integers above live on a device.
  TORCH_ARG(torch::Tensor, counters);

 public:
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
  FLORA_API friend bool operator==(
      const FloraParamState& lhs,
      const FloraParamState& rhs);
  /// Bytes held by this state's tensors.
  int64_t nbytes() const;
};

class FLORA_API Flora : public torch::optim::Optimizer {
 public:
  explicit Flora(
      const std::vector<torch::optim::OptimizerParamGroup>& param_groups,
      FloraOptions defaults = {});
  explicit Flora(std::vector<torch::Tensor> params, FloraOptions defaults = {});

  /// One optimisation step over every parameter that has a gradient.
  /// All inputs are checked before anything is modified: on an error the
  /// parameters and the state are left as they were.
  torch::Tensor step(LossClosure closure = nullptr) override;

  /// Checkpoints in torch's optimizer archive layout (torch::save /
  /// torch::load). load() validates everything against this optimizer's
  /// parameters before changing anything; on an error it throws and leaves
  /// the optimizer as it was. State tensors move to their parameter's device.
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;

  /// Total bytes of all optimizer-state tensors (the number to compare with
  /// Adam's exp_avg + exp_avg_sq).
  int64_t state_bytes() const;

  /// Updates one parameter with `grad` exactly as step() would (checks
  /// included): the entry point of the update fused into backward
  /// (FusedBackward). The parameter's .grad is not used.
  void step_parameter(const torch::Tensor& param, const torch::Tensor& grad);

  /// Keep, from now on, each parameter's ParameterStatistics of its latest
  /// step (statistics.h): views of the step's own sums, no extra kernel,
  /// no synchronisation. Off by default; false drops what was kept.
  /// Parameters stepped in ProjectionMode::reference (flora-opt's
  /// sequence, which has no such sums) are not recorded.
  void record_statistics(bool on);
  bool recording_statistics() const {
    return record_statistics_;
  }
  /// The recorded statistics, one per parameter that has stepped since
  /// recording began, in parameter order (ParameterStatistics::index).
  std::vector<ParameterStatistics> statistics() const;

 private:
  bool record_statistics_ = false;
  std::map<int64_t, ParameterStatistics> statistics_;

  // Where each parameter sits, for step_parameter (called once per
  // parameter per step by FusedBackward): built on first use and rebuilt
  // when the groups change, so that a lookup is not a scan of every group.
  struct Location {
    size_t group;
    size_t position;
    int64_t index; // 1-based over all groups
  };
  std::unordered_map<const void*, Location> locations_;
  size_t located_ = 0; // parameters in all groups when locations_ was built
  const Location* locate(const torch::Tensor& param);
};

} // namespace flora
