#pragma once

// --stats-every N: Flora's per-parameter update statistics
// (flora::Flora::record_statistics), sampled every N steps and written to
// statistics.csv: the RMS of each parameter's update before clipping and
// the factor clipping multiplied it by, to see whether a compressed
// momentum inflates the update until clipping shrinks every step.

#include <flora/optimizer.h>

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace flora::gpt2 {

/// One parameter at one sampled step.
struct UpdateStatistics {
  int64_t step = 0;
  std::string parameter; // its name in the model
  std::vector<int64_t> shape;
  /// "compressed" (rank-r momentum), "momentum" (full), "none" (no first moment).
  std::string momentum;
  double param_rms = 0;
  double update_rms = 0; // before clipping
  double clip_factor = 1; // 1 / max(1, update_rms / clip_threshold)
};

/// The statistics of the optimizer's last step (all parameters, in the
/// model's order; `names` are the model's parameter names, `params` its
/// parameters, as given to the optimizer). One host read of all sums.
std::vector<UpdateStatistics> sample_statistics(
    const flora::Flora& optimizer,
    int64_t step,
    const std::vector<std::string>& names,
    const std::vector<torch::Tensor>& params);

} // namespace flora::gpt2
