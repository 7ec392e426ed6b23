#include "memory.h"

#include <c10/util/Exception.h>

#ifdef FLORA_GPT2_HAVE_C10_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include <malloc.h>

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

bool cpu_reset_ok = true;

} // namespace

bool reset_peak_memory(const torch::Device& device) {
  if (device.is_cuda()) {
#ifdef FLORA_GPT2_HAVE_C10_CUDA
    c10::cuda::CUDACachingAllocator::resetPeakStats(device.index() < 0 ? 0 : device.index());
    return true;
#else
    return false;
#endif
  }
  // Give freed heap memory back first, so that the new peak does not start
  // from the previous run's leftovers.
  ::malloc_trim(0);
  FILE* f = std::fopen("/proc/self/clear_refs", "w");
  bool ok = f != nullptr && std::fputs("5", f) >= 0;
  if (f != nullptr) {
    ok = (std::fclose(f) == 0) && ok;
  }
  cpu_reset_ok = ok;
  return ok;
}

PeakMemory peak_memory(const torch::Device& device) {
  PeakMemory peak;
  if (device.is_cuda()) {
#ifdef FLORA_GPT2_HAVE_C10_CUDA
    const auto stats =
        c10::cuda::CUDACachingAllocator::getDeviceStats(device.index() < 0 ? 0 : device.index());
    peak.bytes = stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak;
    peak.kind = "CUDA peak allocated";
#else
    peak.kind = "CUDA peak (not available in this build)";
#endif
    return peak;
  }
  peak.bytes = proc_status_kb("VmHWM");
  peak.reset = cpu_reset_ok;
  peak.kind = cpu_reset_ok ? "process peak RSS" : "process peak RSS (since start: reset failed)";
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
