#pragma once

// Memory of a training run, as the report shows it: the peak bytes of tensor
// storage on the run's device *with the parameters counted*, i.e. the
// parameters plus the peak of everything allocated while training
// (gradients, activations, optimizer state, batches). Measured with
// flora::MemoryMeter: the CUDA caching allocator's statistics, or on the CPU
// a counting wrapper around c10's allocator.
//
// The parameters are added from their sizes rather than read from the
// meter: on the CPU the meter only counts what was allocated after it was
// first created, which may be after the model was loaded. The training data
// on the CPU (the encoded corpus) is not part of it.
// The process's resident set size (LibTorch's code, the data, allocator
// caches) is available separately, for reference.

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace flora::gpt2 {

struct PeakMemory {
  int64_t bytes = -1;           // parameters + peak allocated while training; -1: not available
  int64_t parameter_bytes = -1; // the parameters alone
  /// What `bytes` measures, e.g. "peak CPU tensor memory, parameters included".
  std::string kind;
};

/// Measures one run on `device`: construct it after the model is on the
/// device and before training starts.
class RunMemory {
 public:
  RunMemory(const torch::Device& device, const std::vector<torch::Tensor>& parameters);
  /// The peak so far.
  PeakMemory peak() const;

 private:
  torch::Device device_;
  int64_t parameter_bytes_ = 0;
  int64_t baseline_ = 0; // allocated when the measurement started
};

/// The bytes of the tensors' storage (each storage counted once).
int64_t storage_bytes(const std::vector<torch::Tensor>& tensors);

/// The current resident set size of the process (VmRSS), -1 if unknown.
int64_t current_rss_bytes();

/// "123.4 MiB".
std::string format_bytes(int64_t bytes);

} // namespace flora::gpt2
