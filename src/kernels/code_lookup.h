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

#include <array>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>

namespace flora::detail {

class CodeLookup {
 public:
  explicit CodeLookup(const float* map) {
    std::memcpy(map_.data(), map, sizeof(float) * 256);
    for (uint32_t top = 0; top < 65536; ++top) {
      // The smallest float with these top bits: low bits 0 for a positive
      // pattern, all ones for a negative one (larger magnitude).
      const uint32_t bits = (top << 16) | ((top & 0x8000u) != 0 ? 0xFFFFu : 0u);
      float v;
      std::memcpy(&v, &bits, sizeof v);
      start_[top] = static_cast<uint16_t>(lower_bound(v));
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
  std::array<uint16_t, 65536> start_{};
};

} // namespace flora::detail
