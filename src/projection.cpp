#include <flora/layout.h>
#include <flora/ops.h>
#include <flora/projection.h>

#include "kernels/philox.h"
#include "kernels/projection_seed.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>

namespace flora {

namespace {

at::Generator reference_generator(int64_t seed) {
  // torch.Generator().manual_seed(seed): the same mt19937 state as
  // constructing the CPU generator with that seed.
  return at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(seed));
}

torch::Tensor reference_draws(int64_t seed, int64_t count) {
  return torch::randint(
      0, std::numeric_limits<int64_t>::max(), {count}, reference_generator(seed),
      torch::TensorOptions().dtype(torch::kLong));
}

int64_t as_signed(uint64_t v) {
  return static_cast<int64_t>(v);
}

} // namespace

int64_t next_seed(int64_t seed, ProjectionMode mode) {
  if (mode == ProjectionMode::reference) {
    // flora-opt draws 15 and keeps the last.
    return reference_draws(seed, 15)[14].item<int64_t>();
  }
  return detail::next_philox_seed(seed);
}

std::pair<int64_t, int64_t> split_seed(int64_t seed, ProjectionMode mode) {
  if (mode == ProjectionMode::reference) {
    const auto draws = reference_draws(seed, 2);
    const int64_t* d = draws.data_ptr<int64_t>();
    return {d[0], d[1]};
  }
  return {
      as_signed(detail::projection_seed(seed, /*left=*/1)), as_signed(detail::projection_seed(seed, /*right=*/2))};
}

namespace {

// randn(rows, cols; seed) / divisor, computed as flora-opt computes it in
// reference mode (divide, do not multiply by the reciprocal) and with the
// scale folded into the generator in philox mode.
torch::Tensor scaled_gaussian(
    int64_t seed, int64_t rows, int64_t cols, double divisor, ProjectionMode mode,
    const torch::TensorOptions& options) {
  TORCH_CHECK(rows >= 0 && cols >= 0, "gaussian_matrix: negative shape (", rows, ", ", cols, ")");
  if (mode == ProjectionMode::reference) {
    // Drawn on the CPU generator whatever the target device, as flora-opt
    // does on the CPU.
    auto cpu = options.device(torch::kCPU);
    auto m = torch::randn({rows, cols}, reference_generator(seed), cpu);
    if (divisor != 1.0) {
      m.div_(divisor);
    }
    return options.device().is_cpu() ? m : m.to(options.device());
  }
  auto m = torch::empty({rows, cols}, options);
  ops::philox_normal_(m, seed, 1.0 / divisor);
  return m;
}

} // namespace

torch::Tensor gaussian_matrix(
    int64_t seed, int64_t rows, int64_t cols, ProjectionMode mode,
    const torch::TensorOptions& options) {
  return scaled_gaussian(seed, rows, cols, 1.0, mode, options);
}

Projection::Projection(
    int64_t seed, int64_t rows, int64_t cols, int64_t rank, ProjectionMode mode,
    Seeding seeding, const torch::TensorOptions& options)
    : rows_(rows), cols_(cols), rank_(rank), left_(projects_from_left(rows, cols)) {
  TORCH_CHECK(rank > 0, "Projection: rank must be positive, got ", rank);
  TORCH_CHECK(rows > 0 && cols > 0, "Projection: empty matrix shape (", rows, ", ", cols, ")");
  int64_t s = seed;
  if (seeding == Seeding::split) {
    const auto [left_seed, right_seed] = split_seed(seed, mode);
    s = left_ ? left_seed : right_seed;
  }
  const double divisor = std::sqrt(static_cast<double>(rank));
  matrix_ = left_ ? scaled_gaussian(s, rank, rows, divisor, mode, options)
                  : scaled_gaussian(s, cols, rank, divisor, mode, options);
}

std::vector<int64_t> Projection::compressed_shape() const {
  return flora::compressed_shape(rows_, cols_, rank_);
}

torch::Tensor Projection::down(const torch::Tensor& x) const {
  return left_ ? torch::mm(matrix_, x) : torch::mm(x, matrix_);
}

torch::Tensor Projection::up(const torch::Tensor& c) const {
  return left_ ? torch::mm(matrix_.t(), c) : torch::mm(c, matrix_.t());
}

torch::Tensor Projection::up_add(
    const torch::Tensor& x, const torch::Tensor& c, double beta, double alpha) const {
  return left_ ? torch::addmm(x, matrix_.t(), c, beta, alpha)
               : torch::addmm(x, c, matrix_.t(), beta, alpha);
}

void Projection::down_add_(torch::Tensor& c, const torch::Tensor& x, double beta, double alpha) const {
  if (left_) {
    c.addmm_(matrix_, x, beta, alpha);
  } else {
    c.addmm_(x, matrix_, beta, alpha);
  }
}

} // namespace flora
