#pragma once

// The counter-based generator behind ProjectionMode::philox, shared by the
// CPU kernels (compiled by the host compiler) and the CUDA kernels (nvcc), so
// that the two cannot drift apart. The stream is cuRAND's Philox4_32_10
// device API: key = seed, counter = (offset / 4, subsequence) as 64-bit
// halves; this file is our own implementation of the published algorithm
// (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11),
// checked against Random123's known-answer vectors (tests/projection_test.cpp)
// and against cuRAND's own code compiled for the host
// (tests/cuda/curand_host_test.cu).

#include "kernels/host_device.h"

#include <cmath>
#include <cstdint>

namespace flora::detail {

struct PhiloxBlock {
  uint32_t x, y, z, w;
};

// Philox-4x32's round multipliers and key increments (the Weyl sequence).
constexpr uint32_t kPhiloxMul0 = 0xD2511F53u;
constexpr uint32_t kPhiloxMul1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxWeyl0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxWeyl1 = 0xBB67AE85u;

FLORA_HOST_DEVICE PhiloxBlock philox4x32_10(PhiloxBlock c, uint32_t k0, uint32_t k1) {
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kPhiloxMul0) * c.x;
    const uint64_t p1 = static_cast<uint64_t>(kPhiloxMul1) * c.z;
    c = PhiloxBlock{
        static_cast<uint32_t>(p1 >> 32) ^ c.y ^ k0,
        static_cast<uint32_t>(p1),
        static_cast<uint32_t>(p0 >> 32) ^ c.w ^ k1,
        static_cast<uint32_t>(p0)};
    k0 += kPhiloxWeyl0;
    k1 += kPhiloxWeyl1;
  }
  return c;
}

/// The four 32-bit draws for element block `block` (= column / 4) of row
/// `row` of the matrix of `seed`: curand_init(seed, row, 4 * block), curand4.
FLORA_HOST_DEVICE PhiloxBlock philox_draws(uint64_t seed, uint64_t row, uint64_t block) {
  return philox4x32_10(
      PhiloxBlock{
          static_cast<uint32_t>(block),
          static_cast<uint32_t>(block >> 32),
          static_cast<uint32_t>(row),
          static_cast<uint32_t>(row >> 32)},
      static_cast<uint32_t>(seed),
      static_cast<uint32_t>(seed >> 32));
}

// Separate multiply and add: nvcc would otherwise contract them into an FMA
// that the host does not do, and u, v would differ in the last bit.
FLORA_HOST_DEVICE float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
FLORA_HOST_DEVICE float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

/// cuRAND's Box-Muller transform of two 32-bit draws, with precise logf,
/// sinf and cosf (cuRAND's device path uses the approximate __sincosf):
/// u in (0, 1], so the result is always finite (|n| <= 6.7).
FLORA_HOST_DEVICE void box_muller(uint32_t a, uint32_t b, float& n0, float& n1) {
  constexpr float kInv2Pow32 = 2.3283064e-10f;
  constexpr float kInv2Pow32TwoPi = 2.3283064e-10f * 6.2831855f;
  const float u = add_rn(mul_rn(static_cast<float>(a), kInv2Pow32), kInv2Pow32 / 2.0f);
  const float v = add_rn(mul_rn(static_cast<float>(b), kInv2Pow32TwoPi), kInv2Pow32TwoPi / 2.0f);
#if defined(__CUDA_ARCH__)
  const float s = sqrtf(-2.0f * logf(u));
  n0 = sinf(v) * s;
  n1 = cosf(v) * s;
#else
  const float s = std::sqrt(-2.0f * std::log(u));
  n0 = std::sin(v) * s;
  n1 = std::cos(v) * s;
#endif
}

/// Four standard normals for block `block` of row `row`.
FLORA_HOST_DEVICE void philox_normal4(uint64_t seed, uint64_t row, uint64_t block, float out[4]) {
  const PhiloxBlock d = philox_draws(seed, row, block);
  box_muller(d.x, d.y, out[0], out[1]);
  box_muller(d.z, d.w, out[2], out[3]);
}

/// SplitMix64's finaliser: the integer hash behind next_seed / split_seed.
FLORA_HOST_DEVICE uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

constexpr uint64_t kNextSeedDomain = 0x6A09E667F3BCC908ull;
constexpr uint64_t kLeftSeedDomain = 0xBB67AE8584CAA73Bull;
constexpr uint64_t kRightSeedDomain = 0x3C6EF372FE94F82Bull;

} // namespace flora::detail
