// Our Philox (src/kernels/philox.h) against cuRAND's own device-API code, compiled
// here for the host: cuRAND's headers define every function with the
// QUALIFIERS macro, and with it set to __host__ __device__ they run on the
// CPU. This pins the CPU generator to cuRAND's stream without a GPU.

#define QUALIFIERS static inline __host__ __device__
#include <curand_kernel.h>

#include "kernels/philox.h"

#include <gtest/gtest.h>

#include <cmath>

namespace {

TEST(CurandOnHost, PhiloxDrawsAreCurandInitPlusCurand4) {
  for (unsigned long long seed : {0ull, 1ull, 0x123456789abcdefull, ~0ull, 0x8000000000000000ull}) {
    for (unsigned long long row : {0ull, 1ull, 77ull, (1ull << 32) + 5, ~0ull >> 1}) {
      for (unsigned long long block : {0ull, 1ull, 3ull, 1000ull, (1ull << 32) + 3, (1ull << 40)}) {
        curandStatePhilox4_32_10_t state;
        curand_init(seed, row, 4 * block, &state);
        const uint4 expected = curand4(&state);
        const auto ours = flora::detail::philox_draws(seed, row, block);
        EXPECT_EQ(ours.x, expected.x);
        EXPECT_EQ(ours.y, expected.y);
        EXPECT_EQ(ours.z, expected.z);
        EXPECT_EQ(ours.w, expected.w);
      }
    }
  }
}

// cuRAND's host path of the Box-Muller transform uses sinf/cosf like ours;
// its device path uses the approximate __sincosf, which is why the CUDA
// kernel calls our transform on curand4()'s bits instead of curand_normal4.
TEST(CurandOnHost, BoxMullerIsCurandsTransform) {
  int checked = 0;
  for (unsigned long long seed : {3ull, 0xdeadbeefull}) {
    for (unsigned long long row = 0; row < 64; ++row) {
      curandStatePhilox4_32_10_t state;
      curand_init(seed, row, 0, &state);
      const float4 expected = curand_normal4(&state);
      float ours[4];
      flora::detail::philox_normal4(seed, row, 0, ours);
      EXPECT_EQ(ours[0], expected.x);
      EXPECT_EQ(ours[1], expected.y);
      EXPECT_EQ(ours[2], expected.z);
      EXPECT_EQ(ours[3], expected.w);
      ++checked;
    }
  }
  EXPECT_EQ(checked, 128);
}

} // namespace
