#pragma once

// Where a fused kernel finds a parameter's step count and the learning rate.
// Eager steps: the host's values, passed by value in the launch's table.
// Capturable steps: read on the device from the parameter's counters
// (int64 step, seed, previous seed) and the group's lr tensor (float64),
// so that a captured launch reads the values of each replay, not those of
// the capture. Either way the scalars derived from them (beta2_t, the step
// size) are computed on the device, by kernels/step_math.h.

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <optional>

namespace flora::cuda {

struct StepSource {
  const int64_t* counters = nullptr; // capturable: the parameter's counters
  int64_t step = 0; // eager: this step's count

#if defined(__CUDACC__)
  __device__ __forceinline__ int64_t get() const {
    return counters != nullptr ? counters[0] : step;
  }
#endif
};

/// Parameter i's source: counters[i] when counters are given, else steps[i].
inline StepSource step_source(c10::ArrayRef<int64_t> steps, at::TensorList counters, size_t i) {
  StepSource s;
  if (counters.empty()) {
    s.step = steps[i];
  } else {
    s.counters = counters[i].data_ptr<int64_t>();
  }
  return s;
}

/// The lr tensor's address, or null (then the hyper-parameters' lr).
inline const double* lr_address(const std::optional<at::Tensor>& lr_tensor) {
  return lr_tensor.has_value() ? lr_tensor->data_ptr<double>() : nullptr;
}

#if defined(__CUDACC__)
__device__ __forceinline__ double learning_rate(const double* lr_tensor, double lr) {
  return lr_tensor != nullptr ? *lr_tensor : lr;
}
#endif

} // namespace flora::cuda
