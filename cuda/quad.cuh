#pragma once

// Four consecutive elements at a time: the unit of work of a thread in the
// fused kernels. A quad is read and written with one 16-byte (float32),
// 8-byte (fp16, bf16) or 4-byte (uint8 codes) access when the launch says
// that its quads are aligned, else element by element; the arithmetic on
// the four floats is the same either way, so alignment changes the speed,
// never a result. Lanes past `count` read as 0 and are never written.

#include "common.cuh"
#include "kernels/stochastic_rounding.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <type_traits>

namespace flora::cuda {

/// Whether quads of `t` that start at a multiple of 4 elements can be
/// accessed whole: its first element is aligned to a quad's size.
inline bool quad_aligned(const at::Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % (4 * t.element_size()) == 0;
}

// The 16 bits of an fp16 / bf16 value, and back.
template <typename T>
__device__ __forceinline__ uint32_t bits_of(T v) {
  return v.x;
}
template <typename T>
__device__ __forceinline__ T from_bits(uint32_t bits) {
  return T(static_cast<uint16_t>(bits), T::from_bits());
}

/// out[0..4) = p[0..count) as float, the rest 0.
template <typename T>
__device__ __forceinline__ void load_quad(const T* __restrict__ p, int count, bool aligned, float out[4]) {
  if (aligned && count == 4) {
    if constexpr (std::is_same_v<T, float>) {
      const float4 v = *reinterpret_cast<const float4*>(p);
      out[0] = v.x;
      out[1] = v.y;
      out[2] = v.z;
      out[3] = v.w;
    } else {
      const uint2 v = *reinterpret_cast<const uint2*>(p);
      out[0] = to_float(from_bits<T>(v.x & 0xffffu));
      out[1] = to_float(from_bits<T>(v.x >> 16));
      out[2] = to_float(from_bits<T>(v.y & 0xffffu));
      out[3] = to_float(from_bits<T>(v.y >> 16));
    }
    return;
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    out[j] = j < count ? to_float(p[j]) : 0.f;
  }
}

/// p[0..count) = in (rounded to nearest even for fp16 and bf16).
template <typename T>
__device__ __forceinline__ void store_quad(T* __restrict__ p, int count, bool aligned, const float in[4]) {
  if (aligned && count == 4) {
    if constexpr (std::is_same_v<T, float>) {
      *reinterpret_cast<float4*>(p) = make_float4(in[0], in[1], in[2], in[3]);
    } else {
      uint2 v;
      v.x = bits_of(from_float<T>(in[0])) | (bits_of(from_float<T>(in[1])) << 16);
      v.y = bits_of(from_float<T>(in[2])) | (bits_of(from_float<T>(in[3])) << 16);
      *reinterpret_cast<uint2*>(p) = v;
    }
    return;
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    if (j < count) {
      p[j] = from_float<T>(in[j]);
    }
  }
}

/// How a parameter is written (kernels/stochastic_rounding.h): rounded to
/// nearest, or, for bfloat16 with `stochastic`, up or down at random from the
/// stream of `key` at `step` (element e: lane e % 4 of Philox block e / 4).
struct Rounding {
  uint64_t key;
  int64_t step;
  bool stochastic;
};

/// A parameter's quad [e, e + count) from in, as store_quad but rounding as
/// `rounding` says (`p` points at element e).
template <typename T>
__device__ __forceinline__ void store_param_quad(
    T* __restrict__ p, int64_t e, int count, bool aligned, const float in[4], const Rounding& rounding) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    if (rounding.stochastic) {
      uint32_t bits[4];
      int64_t quad = -1;
      detail::PhiloxBlock draws{};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t index = e + j;
        if (index / 4 != quad) {
          quad = index / 4;
          draws = detail::rounding_draws(rounding.key, rounding.step, quad);
        }
        bits[j] = detail::bfloat16_bits_stochastic(in[j], detail::lane_of(draws, index % 4));
      }
      if (aligned && count == 4) {
        uint2 v;
        v.x = bits[0] | (bits[1] << 16);
        v.y = bits[2] | (bits[3] << 16);
        *reinterpret_cast<uint2*>(p) = v;
        return;
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if (j < count) {
          p[j] = from_bits<T>(bits[j]);
        }
      }
      return;
    }
  }
  store_quad(p, count, aligned, in);
}

/// Four 8-bit codes (lanes past count: 0).
__device__ __forceinline__ void load_code_quad(const uint8_t* __restrict__ p, int count, bool aligned, uint8_t out[4]) {
  if (aligned && count == 4) {
    const uint32_t bits = *reinterpret_cast<const uint32_t*>(p);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      out[j] = static_cast<uint8_t>(bits >> (8 * j));
    }
    return;
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    out[j] = j < count ? p[j] : 0;
  }
}

__device__ __forceinline__ void store_code_quad(uint8_t* __restrict__ p, int count, bool aligned, const uint8_t in[4]) {
  if (aligned && count == 4) {
    *reinterpret_cast<uint32_t*>(p) = static_cast<uint32_t>(in[0]) | (static_cast<uint32_t>(in[1]) << 8) |
        (static_cast<uint32_t>(in[2]) << 16) | (static_cast<uint32_t>(in[3]) << 24);
    return;
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    if (j < count) {
      p[j] = in[j];
    }
  }
}

/// Calls f(first element, count) for each quad of [begin, end) that this
/// thread owns: quads start at begin + 4k, and thread t owns quads t,
/// t + blockDim.x, ... (consecutive threads, consecutive memory).
template <typename F>
__device__ __forceinline__ void block_quads(int64_t begin, int64_t end, const F& f) {
  for (int64_t e = begin + 4 * static_cast<int64_t>(threadIdx.x); e < end; e += 4 * static_cast<int64_t>(blockDim.x)) {
    f(e, static_cast<int>(end - e < 4 ? end - e : 4));
  }
}

} // namespace flora::cuda
