#pragma once

// A faster search for quantization_rule.h's nearest_code on the CPU, with the
// same result for every input: the 256-entry map is monotone, so the top 16
// bits of a float (sign, exponent, 7 mantissa bits) already say where its
// lower bound is, to within a code or two. A table of 65536 starting points
// (the lower bound of the smallest float with those top bits) is built once
// per map; a lookup then walks up over the few entries still below the value
// and picks the nearer neighbour as nearest_code does. The binary search
// costs eight hard-to-predict branches per element; this costs one table
// read and usually one comparison.

#include "kernels/quantization_rule.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>

namespace flora::detail {

class CodeLookup {
 public:
  explicit CodeLookup(const float* map) {
    std::memcpy(map_.data(), map, sizeof(float) * 256);
    padded_[0] = -std::numeric_limits<float>::infinity();
    std::memcpy(padded_.data() + 1, map, sizeof(float) * 256);
    padded_[257] = std::numeric_limits<float>::infinity();
    for (uint32_t top = 0; top < 65536; ++top) {
      // The smallest float with these top bits: low bits 0 for a positive
      // pattern, all ones for a negative one (larger magnitude).
      const bool negative = (top & 0x8000u) != 0;
      const int32_t start = lower_bound(from_bits((top << 16) | (negative ? 0xFFFFu : 0u)));
      start_[top] = start;
      // The longest walk from here is the largest value with these bits
      // (clamped to [-1, 1] as every lookup's value is).
      const float largest = from_bits((top << 16) | (negative ? 0u : 0xFFFFu));
      if (largest == largest) {
        const float v = largest < -1.0f ? -1.0f : (1.0f < largest ? 1.0f : largest);
        max_walk_ = std::max(max_walk_, lower_bound(v) - start);
      }
    }
  }

  /// nearest_code(map, normed), exactly.
  uint8_t nearest(float normed) const {
    const float v = normed < -1.0f ? -1.0f : (1.0f < normed ? 1.0f : normed);
    if (v != v) {
      return 0; // NaN, as nearest_code
    }
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    int lo = start_[bits >> 16];
    while (lo < 256 && map_[lo] < v) {
      ++lo;
    }
    if (lo == 0) {
      return 0;
    }
    if (lo == 256) {
      return 255;
    }
    const float dist_left = v - map_[lo - 1];
    const float dist_right = map_[lo] - v;
    return static_cast<uint8_t>(dist_right < dist_left ? lo : lo - 1);
  }

  /// For a vectorised lookup (the CPU kernels' gathers): the starting
  /// points, indexed by a float's top 16 bits; the map with -inf before and
  /// +inf after it (padded()[i + 1] == map[i]), so that a walk stops at the
  /// end and a neighbour past either end is never the nearer; and the most
  /// steps any walk takes.
  const int32_t* starts() const {
    return start_.data();
  }
  const float* padded() const {
    return padded_.data();
  }
  int max_walk() const {
    return max_walk_;
  }

  bool serves(const float* map) const {
    return std::memcmp(map_.data(), map, sizeof(float) * 256) == 0;
  }

  /// The lookup of `map`, built on first use and kept for the map last
  /// asked for (in practice there is one: the dynamic map).
  static std::shared_ptr<const CodeLookup> of(const float* map) {
    static std::mutex mutex;
    static std::shared_ptr<const CodeLookup> cached;
    std::lock_guard<std::mutex> lock(mutex);
    if (!cached || !cached->serves(map)) {
      cached = std::make_shared<const CodeLookup>(map);
    }
    return cached;
  }

 private:
  static float from_bits(uint32_t bits) {
    float v;
    std::memcpy(&v, &bits, sizeof v);
    return v;
  }

  int lower_bound(float v) const {
    int lo = 0, hi = 256;
    while (lo < hi) {
      const int mid = (lo + hi) >> 1;
      if (map_[mid] < v) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    return lo;
  }

  std::array<float, 256> map_{};
  std::array<float, 258> padded_{};
  std::array<int32_t, 65536> start_{}; // int32 rather than 16 bits: a vector gather reads 32
  int max_walk_ = 0;
};

} // namespace flora::detail
