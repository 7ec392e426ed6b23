#include <flora/memory.h>

#include <c10/core/CPUAllocator.h>
#include <c10/core/CachingDeviceAllocator.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <unordered_map>

namespace flora {
namespace {

// Wraps the CPU allocator that was current when it was installed and counts
// live bytes. It is never uninstalled or destroyed: tensors it allocated
// may outlive any scope and must find it when they are freed.
//
// Its DataPtrs carry the data pointer itself as their context, as c10's
// default CPU allocator does: Allocator::raw_allocate() (which oneDNN uses
// through ideep, e.g. for bfloat16 matrix products) requires it. The
// wrapped allocation and its size are kept in a table keyed by that
// pointer.
class CountingCpuAllocator final : public c10::Allocator {
 public:
  explicit CountingCpuAllocator(c10::Allocator* base) : base_(base) {}

  c10::DataPtr allocate(size_t bytes) override {
    c10::DataPtr inner = base_->allocate(bytes);
    void* data = inner.get();
    const auto device = inner.device();
    if (data == nullptr) {
      return inner; // nothing allocated (zero bytes): nothing to count
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      live_.emplace(data, Allocation{std::move(inner), static_cast<int64_t>(bytes)});
    }
    add(static_cast<int64_t>(bytes));
    return {data, data, &release, device};
  }

  c10::DeleterFnPtr raw_deleter() const override {
    return &release;
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  int64_t current() const {
    return current_.load();
  }
  int64_t peak() const {
    return peak_.load();
  }
  void reset_peak() {
    peak_.store(current_.load());
  }

 private:
  struct Allocation {
    c10::DataPtr inner;
    int64_t bytes;
  };

  static void release(void* data);

  void remove(void* data) {
    c10::DataPtr inner; // freed through the wrapped allocator's deleter, outside the lock
    {
      std::lock_guard<std::mutex> lock(mutex_);
      const auto it = live_.find(data);
      if (it != live_.end()) {
        inner = std::move(it->second.inner);
        current_.fetch_sub(it->second.bytes);
        live_.erase(it);
        return;
      }
    }
    // Not counted: raw memory allocated before this allocator was installed
    // (oneDNN keeps such buffers and frees them through whichever CPU
    // allocator is current then).
    const auto base_deleter = base_->raw_deleter();
    TORCH_INTERNAL_ASSERT(base_deleter != nullptr, "MemoryMeter: cannot free memory it did not allocate");
    base_deleter(data);
  }

  void add(int64_t bytes) {
    const int64_t now = current_.fetch_add(bytes) + bytes;
    int64_t seen = peak_.load();
    while (now > seen && !peak_.compare_exchange_weak(seen, now)) {
    }
  }

  c10::Allocator* base_;
  std::mutex mutex_;
  std::unordered_map<void*, Allocation> live_;
  std::atomic<int64_t> current_{0};
  std::atomic<int64_t> peak_{0};
};

CountingCpuAllocator& counting_cpu_allocator() {
  static CountingCpuAllocator* instance = [] {
    auto* counting = new CountingCpuAllocator(c10::GetCPUAllocator());
    // Priority above the default allocator's, so that it takes over.
    c10::SetCPUAllocator(counting, /*priority=*/100);
    return counting;
  }();
  return *instance;
}

void CountingCpuAllocator::release(void* data) {
  counting_cpu_allocator().remove(data);
}

int64_t aggregate(const c10::CachingDeviceAllocator::StatArray& stats, bool peak) {
  const auto& s = stats[static_cast<size_t>(c10::CachingDeviceAllocator::StatType::AGGREGATE)];
  return peak ? s.peak : s.current;
}

} // namespace

MemoryMeter::MemoryMeter(torch::Device device) : device_(device) {
  if (device_.is_cpu()) {
    counting_cpu_allocator();
  } else {
    TORCH_CHECK(
        c10::GetAllocator(device_.type()) != nullptr && dynamic_cast<c10::DeviceAllocator*>(c10::GetAllocator(device_.type())),
        "MemoryMeter: no allocator statistics for device ", device_, " (was LibTorch built with it?)");
  }
}

void MemoryMeter::reset_peak() {
  if (device_.is_cpu()) {
    counting_cpu_allocator().reset_peak();
  } else {
    c10::getDeviceAllocator(device_.type())->resetPeakStats(device_.has_index() ? device_.index() : 0);
  }
}

int64_t MemoryMeter::current_bytes() const {
  if (device_.is_cpu()) {
    return counting_cpu_allocator().current();
  }
  const auto stats = c10::getDeviceAllocator(device_.type())->getDeviceStats(device_.has_index() ? device_.index() : 0);
  return aggregate(stats.allocated_bytes, /*peak=*/false);
}

int64_t MemoryMeter::peak_bytes() const {
  if (device_.is_cpu()) {
    return counting_cpu_allocator().peak();
  }
  const auto stats = c10::getDeviceAllocator(device_.type())->getDeviceStats(device_.has_index() ? device_.index() : 0);
  return aggregate(stats.allocated_bytes, /*peak=*/true);
}

} // namespace flora
