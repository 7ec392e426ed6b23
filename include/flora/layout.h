#pragma once

// What Flora keeps for a parameter of a given shape, decided in one place:
// the optimizer's state, the checkpoint validation, the byte estimates, the
// compressed gradient accumulation and the projections all ask here.

#include <flora/export.h>
#include <flora/options.h>

#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace flora {

/// A rank-r random projection of a (rows, cols) matrix multiplies from the
/// left when rows < cols (P is (r, rows); down(X) = P X is (r, cols)), else
/// from the right (P is (cols, r); down(X) = X P is (rows, r)): the
/// compressed side is always the larger one (flora-opt's convention).
FLORA_API bool projects_from_left(int64_t rows, int64_t cols);

/// The shape of down(X) for a (rows, cols) matrix: (rank, cols) or (rows, rank).
FLORA_API std::vector<int64_t> compressed_shape(int64_t rows, int64_t cols, int64_t rank);

/// Whether a (rows, cols) matrix's momentum is kept compressed at `rank`:
/// the smaller side is at least `rank` and the larger is at most
/// `max_aspect_ratio` times the smaller (flora-opt: 4, which keeps
/// embeddings uncompressed).
FLORA_API bool compresses_momentum(int64_t rows, int64_t cols, int64_t rank, double max_aspect_ratio);

/// What Flora keeps for a parameter of a given shape under given options.
struct FLORA_API ParamLayout {
  /// 2-d and factorize_second_moment: row/column second moment.
  bool factored = false;
  /// beta1 set and > 0.
  bool momentum = false;
  /// momentum, rank set, factored, and compresses_momentum(shape, rank,
  /// max_aspect_ratio).
  bool compressed = false;
  /// quantization, and the parameter has at least quantization_min_size
  /// elements: exp_avg and exp_avg_sq are 8-bit.
  bool quantized = false;

  static ParamLayout of(torch::IntArrayRef shape, const FloraOptions& options);

  /// The shape of exp_avg (only meaningful with momentum): the compressed
  /// shape when compressed, else the parameter's.
  std::vector<int64_t> momentum_shape(torch::IntArrayRef shape, const FloraOptions& options) const;
};

} // namespace flora
