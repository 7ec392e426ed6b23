#pragma once

// a / b rounded up, shared by the host code, the CPU kernels and the CUDA
// kernels for counts of chunks, tiles and quantization blocks.

#include "kernels/host_device.h"

#include <cstdint>

namespace flora::detail {

/// a / b rounded up (a >= 0, b > 0). Never forms a + b - 1, which
/// overflows int64 for a block size near 2^63 (a fuzzed checkpoint's
/// INT64_MAX).
FLORA_HOST_DEVICE int64_t ceil_div(int64_t a, int64_t b) {
  return a <= 0 ? 0 : 1 + (a - 1) / b;
}

} // namespace flora::detail
