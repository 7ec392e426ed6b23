#pragma once

// What the last step did to each parameter, recorded on request
// (Flora::record_statistics(true)): the two sums the fused step computes
// anyway to scale and clip an update, kept as device tensors. Recording
// costs no kernel and no host synchronisation; reading a value does (on a
// GPU, one per call), so read them only when logging.

#include <flora/export.h>

#include <torch/types.h>

#include <cstdint>

namespace flora {

/// One parameter's last recorded step.
struct FLORA_API ParameterStatistics {
  /// 1-based position of the parameter over all groups (its seed offset).
  int64_t index = 0;
  /// The parameter's step count at that step.
  int64_t step = 0;
  int64_t numel = 0;
  /// The group's clip_threshold at that step.
  double clip_threshold = 1.0;
  /// float32 (2,) on the parameter's device: sum p^2 before the step, and
  /// sum u^2 of the update u before clipping (momentum mixed in), after
  /// which u is divided by max(1, RMS(u) / clip_threshold). A view of the
  /// step's own reduction buffer.
  torch::Tensor sums;

  /// RMS of the parameter before the step (reads `sums`).
  double param_rms() const;
  /// RMS of the update before clipping (reads `sums`).
  double update_rms() const;
  /// What clipping multiplied the update by: 1 / max(1, update_rms() /
  /// clip_threshold), in (0, 1] (reads `sums`).
  double clip_factor() const;
};

} // namespace flora
