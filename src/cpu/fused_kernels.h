#pragma once

// The vectorised CPU kernels behind the fused step (philox mode), compiled
// once per instruction set (fused_kernels_{default,avx2,avx512}.cpp, each
// including fused_kernels_impl.h with ATen's Vectorized<float> of that
// width) and picked at run time as ATen picks its own kernels
// (at::get_cpu_capability(), which honours ATEN_CPU_CAPABILITY). The
// operators (fused_step_kernel.cpp) call them through kernels().
//
// Every reduction is deterministic: partial sums go to fixed slots per
// fixed-size block of the data and are added in a fixed order, so a result
// does not depend on the number of threads.

#include <flora/export.h>

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace flora::cpu {

/// One parameter and its gradient: `rows` x `cols`, row-major contiguous
/// (a tensor that is not 2-d is one row of all its elements).
struct TensorView {
  const void* param = nullptr;
  const void* grad = nullptr;
  c10::ScalarType dtype = c10::ScalarType::Float;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t numel() const {
    return rows * cols;
  }
};

/// Phase 1 of a step (nothing written but these outputs): sum of p^2, a
/// 1/0 flag for a non-finite gradient element, and for a factored
/// parameter the row and column sums of g^2.
struct GradientSums {
  double param_sq = 0;
  bool nonfinite = false;
};

/// A moment kept as float32 or as blockwise 8-bit codes (quantization.h).
struct Moment {
  float* values = nullptr; // float32, or null when quantized
  uint8_t* codes = nullptr; // 8-bit codes, or null
  float* absmax = nullptr; // one per block of `block` elements
  int64_t block = 0;
  const float* code_map = nullptr; // the 256-entry dynamic map
  bool defined() const {
    return values != nullptr || codes != nullptr;
  }
};

/// What the update of one element needs besides the gradient: factored,
/// u = (r_i c_j) g_ij; otherwise (full second moment) v <- b2 v + (1-b2)(g^2+eps1)
/// and u = g / sqrt(v). With momentum (beta1 > 0), m <- b1 m + (1-b1) u and
/// the update is m.
struct UpdateRule {
  bool factored = true;
  const float* row_factor = nullptr; // factored: rsqrt(row / mean(row)), rows entries
  const float* col_factor = nullptr; // factored: rsqrt(col), cols entries
  Moment second; // full second moment
  float beta2 = 0, one_minus_beta2 = 0, eps1 = 0;
  Moment momentum; // undefined without momentum
  float beta1 = 0, one_minus_beta1 = 0;
};

/// The parameter write: p <- p * keep - update * scale, rounded to a
/// bfloat16 parameter stochastically when asked
/// (kernels/stochastic_rounding.h: element e draws lane e % 4 of the
/// Philox block (step, e / 4) of rounding_key).
struct ApplyRule {
  float keep = 1; // 1 - weight_decay * lr_t
  float scale = 0; // lr_t / max(1, RMS(update) / clip_threshold)
  bool stochastic = false;
  uint64_t rounding_key = 0;
  int64_t step = 0;
};

struct Kernels {
  /// Phase 1; factored: row_sums (rows) and col_sums (cols) are written.
  GradientSums (*gradient_sums)(const TensorView& t, bool factored, float* row_sums, float* col_sums);
  /// Sum of the squares of the update (nothing written).
  double (*update_sq)(const TensorView& t, const UpdateRule& rule);
  /// Writes the parameter and the moments (the update recomputed as in
  /// update_sq, bit for bit).
  void (*apply)(const TensorView& t, const UpdateRule& rule, const ApplyRule& apply);
  /// out (rows x cols, float32) = (r_i c_j) g_ij.
  void (*normalize)(const TensorView& t, const float* row_factor, const float* col_factor, float* out);
  /// Sum of squares of a float32 array.
  double (*sum_sq)(const float* x, int64_t n);
  /// p <- p * keep - update * scale, update float32.
  void (*apply_from)(const TensorView& t, const float* update, const ApplyRule& apply);
  /// out (rows x cols) = scale * N(0, 1) of the Philox stream of `seed` (projection.h).
  void (*philox_normal)(float* out, int64_t rows, int64_t cols, uint64_t seed, float scale);
  /// float32 <-> blockwise 8-bit codes for n elements starting at a block boundary.
  void (*dequantize)(const Moment& m, int64_t n, float* out);
  void (*quantize)(const float* x, int64_t n, const Moment& m);
  const char* name;
};

/// The kernels of the best instruction set this CPU and ATen agree on.
FLORA_API const Kernels& kernels();

/// Each instruction set's table, for tests (exported for them, not an API):
/// null when not compiled in or not supported by this CPU.
FLORA_API const Kernels& kernels_default();
FLORA_API const Kernels* kernels_avx2();
FLORA_API const Kernels* kernels_avx512();

} // namespace flora::cpu
