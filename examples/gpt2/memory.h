#pragma once

// Peak memory of a training run: the peak bytes of tensor storage on the
// run's device (parameters, gradients, activations, optimizer state), from
// flora::MemoryMeter (the CUDA caching allocator's statistics; on the CPU a
// counting wrapper around c10's allocator), reset at the start of each run.
// The process's resident set size (LibTorch's code, the data, allocator
// caches) is reported separately, for reference.

#include <torch/types.h>

#include <cstdint>
#include <string>

namespace flora::gpt2 {

struct PeakMemory {
  int64_t bytes = -1; // -1: not available
  /// What `bytes` measures.
  std::string kind;
};

/// Starts a new measurement for `device`.
void reset_peak_memory(const torch::Device& device);
/// The peak since the last reset_peak_memory(device).
PeakMemory peak_memory(const torch::Device& device);
/// The current resident set size of the process (VmRSS), -1 if unknown.
int64_t current_rss_bytes();

/// "123.4 MiB".
std::string format_bytes(int64_t bytes);

} // namespace flora::gpt2
