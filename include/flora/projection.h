#pragma once

// Seeded Gaussian random projections, regenerated on demand, never stored.
//
// A projection of an (m, n) matrix X to rank r (flora-opt's convention):
//   m <  n (left):  P = randn(r, m) / sqrt(r);  down(X) = P X   (r x n);  up(C) = P^T C
//   m >= n (right): P = randn(n, r) / sqrt(r);  down(X) = X P   (m x r);  up(C) = C P^T
// E[P^T P] = I (left) and E[P P^T] = I (right), so up(down(X)) is an
// unbiased estimate of X.
//
// Two generators (ProjectionMode):
//
// philox (default). Element (i, j) of a (rows, cols) matrix for seed s is
// lane j % 4 of the Box-Muller transform of the Philox4x32-10 block with key
// s (64 bits) and counter (j / 4, subsequence i): exactly what cuRAND's
// device API gives after curand_init(s, /*subsequence=*/i,
// /*offset=*/4 * (j / 4)) and curand4(). The transform is cuRAND's
// (u = x 2^-32 + 2^-33, v = y 2^-32 2pi + 2^-32 pi; s = sqrt(-2 log u);
// lanes (s sin v, s cos v)) with precise logf/sinf/cosf on both host and
// device. Seeds advance and split by the SplitMix64 finaliser
//   mix(z) = z += 0x9E3779B97F4A7C15; z = (z ^ z >> 30) * 0xBF58476D1CE4E5B9;
//            z = (z ^ z >> 27) * 0x94D049BB133111EB; z ^ z >> 31
//   next_seed(s)  = mix(s ^ 0x6A09E667F3BCC908)
//   split_seed(s) = (mix(s ^ 0xBB67AE8584CAA73B), mix(s ^ 0x3C6EF372FE94F82B))
// (the constants are SHA-512's first initial hash values, the fractional
// parts of sqrt(2), sqrt(3), sqrt(5)); seeds are 64-bit patterns carried in
// int64_t.
//
// reference. flora-opt 0.0.3's seeding on torch's CPU generator:
//   randn(shape; s)  = torch.randn(shape, generator=manual_seed(s))
//   next_seed(s)     = last of 15 draws of randint(0, 2^63 - 1; manual_seed(s))
//   split_seed(s)    = the 2 draws of randint(0, 2^63 - 1; manual_seed(s))

#include <flora/export.h>
#include <flora/options.h>

#include <torch/types.h>

#include <cstdint>
#include <utility>

namespace flora {

FLORA_API int64_t next_seed(int64_t seed, ProjectionMode mode);
FLORA_API std::pair<int64_t, int64_t> split_seed(int64_t seed, ProjectionMode mode);

/// A (rows, cols) matrix of standard normal draws for `seed`, of the dtype
/// and device in `options` (float32 on the CPU by default).
FLORA_API torch::Tensor gaussian_matrix(
    int64_t seed,
    int64_t rows,
    int64_t cols,
    ProjectionMode mode,
    const torch::TensorOptions& options = {});

/// One random projection of (rows, cols) matrices to rank `rank`. Building it
/// generates the matrix once; down() and up() reuse it.
class FLORA_API Projection {
 public:
  /// How the seed selects the matrix: the optimizer splits it into a left
  /// and a right seed (split_seed) and uses the one for its side; the
  /// gradient accumulator uses the seed as it is.
  enum class Seeding { split, direct };

  Projection(
      int64_t seed,
      int64_t rows,
      int64_t cols,
      int64_t rank,
      ProjectionMode mode,
      Seeding seeding,
      const torch::TensorOptions& options);

  /// True when rows < cols: P is (rank, rows) and multiplies from the left.
  bool left() const { return left_; }
  /// Shape of down(X): (rank, cols) on the left, (rows, rank) on the right.
  std::vector<int64_t> compressed_shape() const;
  /// The scaled matrix P (randn / sqrt(rank)).
  const torch::Tensor& matrix() const { return matrix_; }

  torch::Tensor down(const torch::Tensor& x) const;
  torch::Tensor up(const torch::Tensor& c) const;
  /// beta * x + alpha * up(c), in one GEMM.
  torch::Tensor up_add(const torch::Tensor& x, const torch::Tensor& c, double beta, double alpha) const;
  /// c = beta * c + alpha * down(x), in place, in one GEMM.
  void down_add_(torch::Tensor& c, const torch::Tensor& x, double beta, double alpha) const;

 private:
  int64_t rows_;
  int64_t cols_;
  int64_t rank_;
  bool left_;
  torch::Tensor matrix_;
};

} // namespace flora
