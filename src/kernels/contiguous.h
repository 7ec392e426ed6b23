#pragma once

// Kernels index memory densely; the tensors they are given need not be
// contiguous (channels_last weights, transposed or strided views). An output
// or in-place argument is then worked on through a contiguous copy that is
// written back at the end; inputs are read through at::Tensor::contiguous().
// Contiguous tensors (the common case) are used in place: no copy is made.

#include <ATen/core/Tensor.h>

namespace flora::detail {

class ContiguousWorkingCopy {
 public:
  explicit ContiguousWorkingCopy(const at::Tensor& target) : target_(target), work_(target.contiguous()) {}
  ContiguousWorkingCopy(const ContiguousWorkingCopy&) = delete;
  ContiguousWorkingCopy& operator=(const ContiguousWorkingCopy&) = delete;
  ContiguousWorkingCopy(ContiguousWorkingCopy&&) = default;

  /// The contiguous tensor to write: the target itself when it is contiguous.
  const at::Tensor& get() const {
    return work_;
  }
  /// Writes the copy back into the target (nothing to do when there is none).
  void write_back() const {
    if (!work_.is_same(target_)) {
      target_.copy_(work_);
    }
  }

 private:
  at::Tensor target_;
  at::Tensor work_;
};

} // namespace flora::detail
