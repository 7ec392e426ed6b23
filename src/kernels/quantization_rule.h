#pragma once

// The element rule of blockwise 8-bit quantization, shared by the CPU and
// CUDA kernels (see include/flora/quantization.h for the whole scheme).

#include "kernels/host_device.h"

#include <cstdint>

namespace flora::detail {

/// Index of the entry of the ascending 256-entry `code` nearest to
/// `normed` (already x * (1 / absmax)): clamped to [-1, 1], a tie going to
/// the lower index, NaN to 0.
FLORA_HOST_DEVICE uint8_t nearest_code(const float* code, float normed) {
  // std::clamp semantics: NaN stays NaN.
  const float v = normed < -1.0f ? -1.0f : (1.0f < normed ? 1.0f : normed);
  // lower_bound: the first entry not less than v (NaN: none is less, so 0).
  int lo = 0, hi = 256;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (code[mid] < v) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  if (lo == 0) {
    return 0;
  }
  if (lo == 256) {
    return 255;
  }
  const float dist_left = v - code[lo - 1];
  const float dist_right = code[lo] - v;
  return static_cast<uint8_t>(dist_right < dist_left ? lo : lo - 1);
}

} // namespace flora::detail
