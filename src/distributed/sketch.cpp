#include "sketch.h"

#include <flora/layout.h>

#include <torch/torch.h>

namespace flora::distributed::detail {

namespace {

int64_t rows_of(torch::IntArrayRef shape) {
  return shape[0];
}

int64_t cols_of(torch::IntArrayRef shape) {
  int64_t cols = 1;
  for (size_t d = 1; d < shape.size(); ++d) {
    cols *= shape[d];
  }
  return cols;
}

} // namespace

std::optional<std::vector<int64_t>> sketch_shape(
    torch::IntArrayRef shape, std::optional<int64_t> rank, double max_aspect_ratio) {
  if (!rank.has_value() || shape.size() < 2) {
    return std::nullopt;
  }
  const int64_t rows = rows_of(shape);
  const int64_t cols = cols_of(shape);
  if (rows == 0 || cols == 0 || !compresses_momentum(rows, cols, *rank, max_aspect_ratio)) {
    return std::nullopt;
  }
  return compressed_shape(rows, cols, *rank);
}

Projection sketch_projection(const torch::Tensor& param, int64_t seed, int64_t rank, ProjectionMode mode) {
  return Projection(
      seed, rows_of(param.sizes()), cols_of(param.sizes()), rank, mode, Projection::Seeding::direct,
      param.options().dtype(torch::kFloat));
}

torch::Tensor sketch_of(const Projection& projection, const torch::Tensor& param, const torch::Tensor& grad) {
  return projection.down(grad.reshape({rows_of(param.sizes()), cols_of(param.sizes())}).to(torch::kFloat));
}

torch::Tensor gradient_from_sketch(
    const Projection& projection, const torch::Tensor& param, const torch::Tensor& sketch) {
  // _unsafe_view: a gradient must not be a view (zero_grad detaches in place).
  auto g = at::_unsafe_view(projection.up(sketch), param.sizes());
  return g.scalar_type() == param.scalar_type() ? g : g.to(param.scalar_type());
}

} // namespace flora::distributed::detail
