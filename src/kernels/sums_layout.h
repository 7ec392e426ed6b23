#pragma once

// Where a fused step keeps its per-parameter reductions: one float32 buffer
// per call of a fused operator, laid out as
//   [ sum p^2 (n) | sum update^2 (n) | factored only: for each parameter,
//     its row sums (rows) then its column sums (cols) ]
// Phase 1 (gradient_sums_) writes sum p^2 and the row/column sums of g^2;
// phase 2 turns the row/column sums into the normalising factors in place
// and writes sum update^2. The host sizes the buffer, the kernels find their
// slots, both with this one function.

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <vector>

namespace flora::detail {

struct SumsLayout {
  int64_t count = 0; // parameters
  std::vector<int64_t> row_offset; // factored: first row sum of parameter i
  std::vector<int64_t> col_offset; // factored: first column sum of parameter i
  int64_t size = 0; // floats in all

  int64_t param_sq(int64_t i) const {
    return i;
  }
  int64_t update_sq(int64_t i) const {
    return count + i;
  }

  /// `shapes`' first two sizes are (rows, cols) when factored.
  static SumsLayout of(at::TensorList tensors, bool factored) {
    SumsLayout l;
    l.count = static_cast<int64_t>(tensors.size());
    int64_t next = 2 * l.count;
    if (factored) {
      for (const auto& t : tensors) {
        l.row_offset.push_back(next);
        next += t.size(0);
        l.col_offset.push_back(next);
        next += t.size(1);
      }
    }
    l.size = next;
    return l;
  }
};

} // namespace flora::detail
