#pragma once

// Reads a fuzz input as a stream of choices (libFuzzer's FuzzedDataProvider
// in miniature, so that the ordinary gcc build of the replay program needs
// no clang header). Past the end every read gives 0: an input is never
// rejected for being short.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace flora::fuzz {

class ByteReader {
 public:
  ByteReader(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  bool empty() const {
    return pos_ >= size_;
  }
  size_t remaining() const {
    return empty() ? 0 : size_ - pos_;
  }
  uint8_t u8() {
    return empty() ? 0 : data_[pos_++];
  }
  bool flag() {
    return (u8() & 1) != 0;
  }
  uint64_t u64() {
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) {
      v |= static_cast<uint64_t>(u8()) << (8 * i);
    }
    return v;
  }
  /// A value in [0, n) (0 when n is 0).
  size_t below(size_t n) {
    if (n <= 1) {
      return 0;
    }
    const uint64_t v = n <= 256 ? u8() : (n <= 65536 ? (u8() | (uint64_t{u8()} << 8)) : u64());
    return static_cast<size_t>(v % n);
  }
  double f64() {
    const uint64_t bits = u64();
    double d;
    std::memcpy(&d, &bits, sizeof(d));
    return d;
  }
  /// Up to `max` bytes as a string (its length is read first).
  std::string bytes(size_t max) {
    const size_t n = below(max + 1);
    std::string s;
    for (size_t i = 0; i < n && !empty(); ++i) {
      s.push_back(static_cast<char>(u8()));
    }
    return s;
  }
  /// The rest of the input.
  std::string rest() {
    std::string s;
    if (!empty()) {
      s.assign(reinterpret_cast<const char*>(data_ + pos_), size_ - pos_);
      pos_ = size_;
    }
    return s;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

} // namespace flora::fuzz
