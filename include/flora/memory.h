#pragma once

// Measuring memory: the peak bytes of tensor storage on a device, for tests,
// benchmarks and training logs.
//
// CUDA (and other accelerators with a caching allocator): the allocator's own
// statistics (bytes allocated to tensors, not the cache it reserves).
// CPU: c10's CPU allocator keeps no statistics, so the first MemoryMeter for
// the CPU installs a counting wrapper around it (for the rest of the
// process); it counts the tensor storage that passes through c10's CPU
// allocator, not memory that libraries allocate on their own (BLAS
// workspaces, the Python interpreter).

#include <flora/export.h>

#include <torch/types.h>

#include <cstdint>

namespace flora {

/// A view of the device's allocation statistics, which are process-wide: two
/// meters of one device read the same numbers, and reset_peak() on either
/// starts a new measurement for both.
class FLORA_API MemoryMeter {
 public:
  explicit MemoryMeter(torch::Device device = torch::kCPU);

  /// Starts a new measurement: the peak becomes the current usage.
  void reset_peak();
  /// Bytes of tensor storage allocated now (on the CPU: allocated since the
  /// first meter was made, the counting starting then).
  int64_t current_bytes() const;
  /// The most allocated at once since the last reset_peak().
  int64_t peak_bytes() const;

  const torch::Device& device() const {
    return device_;
  }

 private:
  torch::Device device_;
};

} // namespace flora
