#pragma once

// Peak memory of a training run.
//
//  CUDA: the caching allocator's peak allocated bytes on the device
//        (c10::cuda::CUDACachingAllocator device stats), reset at the start
//        of each run.
//  CPU:  the process's peak resident set size (VmHWM in /proc/self/status).
//        It is reset between runs by writing "5" to /proc/self/clear_refs
//        (Linux >= 4.0). This is the whole process (LibTorch, the data, the
//        other run's freed-but-cached pages), not just tensors: label it as
//        such.

#include <torch/types.h>

#include <cstdint>
#include <string>

namespace flora::gpt2 {

struct PeakMemory {
  int64_t bytes = -1; // -1: not available
  /// What `bytes` measures, e.g. "CUDA peak allocated" or "process peak RSS".
  std::string kind;
  /// False when the peak could not be reset before the run (then it is the
  /// peak since the process started; `kind` says so too).
  bool reset = true;
};

/// Starts a new measurement for `device`; returns false if the peak could not
/// be reset.
bool reset_peak_memory(const torch::Device& device);
/// The peak since the last reset_peak_memory(device).
PeakMemory peak_memory(const torch::Device& device);
/// The current resident set size of the process (VmRSS), -1 if unknown.
int64_t current_rss_bytes();

/// "123.4 MiB".
std::string format_bytes(int64_t bytes);

} // namespace flora::gpt2
