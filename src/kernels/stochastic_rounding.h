#pragma once

// Stochastic rounding of float32 to bfloat16, shared by the CPU and CUDA
// kernels: x is written as the bfloat16 just below or just above it, the
// upper one with probability (x - below) / (above - below), so that the
// stored value equals x in expectation and updates far smaller than a
// bfloat16 ulp still move the parameter on average (round-to-nearest drops
// them every time).
//
// The random bits come from the Philox stream of the parameter and step:
// key = rounding_key(options seed, parameter index), counter (step, element
// index / 4), lane element index % 4 (philox.h's philox_draws). A run is
// reproducible, and a resumed run continues bit for bit, since the seed,
// the index and the step are all in the optimizer and its checkpoint; the
// CPU and the GPU draw the same bits.
//
// The rule: add the low 16 bits of the draw to the float's bit pattern and
// drop the low 16 bits. The float's low half h (0 <= h < 2^16) carries into
// the kept half exactly when draw + h >= 2^16, which has probability
// h / 2^16: the distance to the lower bfloat16 over the gap. A finite value
// never rounds to infinity (it stays at the largest finite bfloat16, as
// rounding down would); NaN and infinities round to nearest.

#include "kernels/host_device.h"
#include "kernels/philox.h"

#include <cstdint>
#include <cstring>

namespace flora::detail {

constexpr uint64_t kRoundingDomain = 0xA54FF53A5F1D36F1ull; // sqrt(7), SHA-512's fourth

/// The key of a parameter's rounding stream (`seed`: its group's seed
/// option, `index`: its 1-based position over all groups, as projection
/// seeds count).
FLORA_HOST_DEVICE uint64_t rounding_key(int64_t seed, int64_t index) {
  return mix64(mix64(static_cast<uint64_t>(seed) ^ kRoundingDomain) + static_cast<uint64_t>(index));
}

FLORA_HOST_DEVICE uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t b;
  memcpy(&b, &x, sizeof b);
  return b;
#endif
}

/// The bfloat16 bit pattern of x rounded with the random 16 bits of `draw`.
FLORA_HOST_DEVICE uint16_t bfloat16_bits_stochastic(float x, uint32_t draw) {
  const uint32_t b = float_bits(x);
  if ((b & 0x7F800000u) == 0x7F800000u) { // NaN or infinity: round to nearest even
    if ((b & 0x007FFFFFu) != 0) {
      return static_cast<uint16_t>((b >> 16) | 0x0040u); // a quiet NaN
    }
    return static_cast<uint16_t>(b >> 16);
  }
  uint32_t r = (b + (draw & 0xFFFFu)) & 0xFFFF0000u;
  if ((r & 0x7F800000u) == 0x7F800000u) { // carried into infinity: the largest finite instead
    r = (b & 0x80000000u) | 0x7F7F0000u;
  }
  return static_cast<uint16_t>(r >> 16);
}

/// The four draws of the quad of elements [4 q, 4 q + 4) at `step`.
FLORA_HOST_DEVICE PhiloxBlock rounding_draws(uint64_t key, int64_t step, int64_t quad) {
  return philox_draws(key, static_cast<uint64_t>(step), static_cast<uint64_t>(quad));
}

FLORA_HOST_DEVICE uint32_t lane_of(const PhiloxBlock& d, int64_t lane) {
  return lane == 0 ? d.x : (lane == 1 ? d.y : (lane == 2 ? d.z : d.w));
}

} // namespace flora::detail
