#include "memory.h"

#include <flora/memory.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <unordered_set>

namespace flora::gpt2 {
namespace {

// A "VmXXX:   1234 kB" line of /proc/self/status, in bytes; -1 if absent.
int64_t proc_status_kb(const char* key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const size_t n = std::strlen(key);
  while (std::getline(in, line)) {
    if (line.compare(0, n, key) == 0 && line.size() > n && line[n] == ':') {
      std::istringstream fields(line.substr(n + 1));
      int64_t kb = -1;
      fields >> kb;
      return kb < 0 ? -1 : kb * 1024;
    }
  }
  return -1;
}

} // namespace

int64_t storage_bytes(const std::vector<torch::Tensor>& tensors) {
  std::unordered_set<const void*> seen;
  int64_t bytes = 0;
  for (const auto& t : tensors) {
    if (t.defined() && t.has_storage() && seen.insert(t.storage().unsafeGetStorageImpl()).second) {
      bytes += static_cast<int64_t>(t.storage().nbytes());
    }
  }
  return bytes;
}

RunMemory::RunMemory(const torch::Device& device, const std::vector<torch::Tensor>& parameters)
    : device_(device), parameter_bytes_(storage_bytes(parameters)) {
  MemoryMeter meter(device_);
  meter.reset_peak();
  baseline_ = meter.current_bytes();
}

PeakMemory RunMemory::peak() const {
  PeakMemory peak;
  peak.parameter_bytes = parameter_bytes_;
  peak.bytes = parameter_bytes_ + (MemoryMeter(device_).peak_bytes() - baseline_);
  peak.kind = std::string(device_.is_cuda() ? "peak CUDA" : "peak CPU") +
      " tensor memory, parameters included (parameters + the peak of gradients, activations, optimizer state "
      "and batches)";
  return peak;
}

int64_t current_rss_bytes() {
  return proc_status_kb("VmRSS");
}

std::string format_bytes(int64_t bytes) {
  if (bytes < 0) {
    return "n/a";
  }
  char buffer[64];
  const double b = static_cast<double>(bytes);
  if (b >= 1024.0 * 1024.0 * 1024.0) {
    std::snprintf(buffer, sizeof(buffer), "%.2f GiB", b / (1024.0 * 1024.0 * 1024.0));
  } else if (b >= 1024.0 * 1024.0) {
    std::snprintf(buffer, sizeof(buffer), "%.1f MiB", b / (1024.0 * 1024.0));
  } else if (b >= 1024.0) {
    std::snprintf(buffer, sizeof(buffer), "%.1f KiB", b / 1024.0);
  } else {
    std::snprintf(buffer, sizeof(buffer), "%lld B", static_cast<long long>(bytes));
  }
  return buffer;
}

} // namespace flora::gpt2
