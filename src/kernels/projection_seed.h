#pragma once

// The seed of a projection's Philox stream from a parameter's seed
// (projection.h: the left or right half of split_seed in philox mode, or the
// seed as it is), for kernels that compute it on the device from the
// counters of a capturable step, and for the host. `side` takes the values
// of ops::SeedSide: 0 direct, 1 left, 2 right.

#include "kernels/host_device.h"
#include "kernels/philox.h"

#include <cstdint>

namespace flora::detail {

FLORA_HOST_DEVICE uint64_t projection_seed(int64_t seed, int64_t side) {
  const auto s = static_cast<uint64_t>(seed);
  switch (side) {
    case 1:
      return mix64(s ^ kLeftSeedDomain);
    case 2:
      return mix64(s ^ kRightSeedDomain);
    default:
      return s;
  }
}

/// The seed after a resample (next_seed in philox mode).
FLORA_HOST_DEVICE int64_t next_philox_seed(int64_t seed) {
  return static_cast<int64_t>(mix64(static_cast<uint64_t>(seed) ^ kNextSeedDomain));
}

} // namespace flora::detail
