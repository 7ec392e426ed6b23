#pragma once

// Dispatcher operator calls while alive (all threads, nested calls
// included), counted by a RecordFunction observer: on a GPU each is a
// launch or more, on a CPU most are a pass over memory. Shared by the CPU
// and GPU step benchmarks.

#include <ATen/record_function.h>

#include <atomic>
#include <cstdint>
#include <memory>

namespace flora::bench {

class AtenCallCounter {
 public:
  AtenCallCounter() {
    count_ = 0;
    handle_ = at::addGlobalCallback(
        at::RecordFunctionCallback([](const at::RecordFunction&) -> std::unique_ptr<at::ObserverContext> {
          ++count_;
          return nullptr;
        }).scopes({at::RecordScope::FUNCTION}));
  }
  ~AtenCallCounter() {
    at::removeCallback(handle_);
  }
  AtenCallCounter(const AtenCallCounter&) = delete;
  AtenCallCounter& operator=(const AtenCallCounter&) = delete;
  int64_t count() const {
    return count_.load();
  }

 private:
  static inline std::atomic<int64_t> count_{0};
  at::CallbackHandle handle_;
};

/// The dispatcher calls of one call of `fn`.
template <typename Fn>
int64_t aten_calls_of(Fn&& fn) {
  const AtenCallCounter counter;
  fn();
  return counter.count();
}

} // namespace flora::bench
