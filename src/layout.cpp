#include <flora/layout.h>

#include <c10/util/Exception.h>
#include <c10/util/accumulate.h>

#include <algorithm>

namespace flora {

bool projects_from_left(int64_t rows, int64_t cols) {
  return rows < cols;
}

std::vector<int64_t> compressed_shape(int64_t rows, int64_t cols, int64_t rank) {
  return projects_from_left(rows, cols) ? std::vector<int64_t>{rank, cols} : std::vector<int64_t>{rows, rank};
}

bool compresses_momentum(int64_t rows, int64_t cols, int64_t rank, double max_aspect_ratio) {
  const int64_t small = std::min(rows, cols);
  const int64_t large = std::max(rows, cols);
  return small > 0 && small >= rank &&
      static_cast<double>(large) / static_cast<double>(small) <= max_aspect_ratio;
}

ParamLayout ParamLayout::of(torch::IntArrayRef shape, const FloraOptions& options) {
  ParamLayout layout;
  layout.factored = shape.size() == 2 && options.factorize_second_moment();
  layout.momentum = options.beta1().has_value() && *options.beta1() > 0;
  layout.compressed = layout.momentum && layout.factored && options.rank().has_value() && *options.rank() > 0 &&
      compresses_momentum(shape[0], shape[1], *options.rank(), options.max_aspect_ratio());
  layout.quantized = options.quantization() && c10::multiply_integers(shape) >= options.quantization_min_size();
  return layout;
}

std::vector<int64_t> ParamLayout::momentum_shape(torch::IntArrayRef shape, const FloraOptions& options) const {
  TORCH_INTERNAL_ASSERT(momentum, "momentum_shape of a parameter without momentum");
  return compressed ? compressed_shape(shape[0], shape[1], *options.rank()) : shape.vec();
}

} // namespace flora
