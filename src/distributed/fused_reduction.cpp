// Mode 3: layer-by-layer synchronisation inside a FusedBackward. Each
// parameter's gradient (or its sketch, or its accumulated buffer) is
// all-reduced in its own post-accumulate-grad hook and the fused update
// follows at once, so a rank never holds more than the gradient in hand.
// flora-opt's maintainers noted that its fused update cannot use DDP's
// bucketed reducer; this is the per-layer alternative they described.

#include "synchronizer.h"

#include "collective.h"
#include "sketch.h"

#include <flora/projection.h>

#include <torch/torch.h>

namespace flora::distributed::detail {

namespace {

std::string parameter_name(int64_t index, const torch::Tensor& param) {
  std::ostringstream out;
  out << "the all-reduce of parameter " << index << " (shape " << param.sizes() << ") inside backward";
  return out.str();
}

} // namespace

torch::Tensor Synchronizer::reduce_gradient(const torch::Tensor& param, torch::Tensor grad) {
  std::lock_guard<std::mutex> lock(mutex_);
  torch::NoGradGuard no_grad;
  const int64_t index = index_of(param);
  Entry& e = entries_[index];
  const std::string what = parameter_name(index, param);
  if (e.compressed) {
    const auto projection = sketch_projection(param, e.seed, *options_.compression_rank(), options_.projection());
    auto sketch = sketch_of(projection, param, grad).contiguous();
    grad = torch::Tensor(); // only the sketch is needed from here on
    finish(start_sum(*backend_, sketch, options_.timeout(), what), rank_, what);
    bytes_exchanged_ += static_cast<int64_t>(sketch.nbytes());
    ++collectives_;
    if (options_.reduction() == Reduction::mean && size_ > 1) {
      sketch.div_(size_);
    }
    auto reduced = gradient_from_sketch(projection, param, sketch);
    e.seed = next_seed(e.seed, options_.projection());
    return reduced;
  }
  if (!grad.is_contiguous()) {
    grad = grad.contiguous();
  }
  finish(start_sum(*backend_, grad, options_.timeout(), what), rank_, what);
  bytes_exchanged_ += static_cast<int64_t>(grad.nbytes());
  ++collectives_;
  if (options_.reduction() == Reduction::mean && size_ > 1) {
    grad.div_(size_);
  }
  return grad;
}

void Synchronizer::reduce_accumulated(const torch::Tensor& param, CompressedAccumulator& accumulator) {
  std::lock_guard<std::mutex> lock(mutex_);
  torch::NoGradGuard no_grad;
  const int64_t index = index_of(param);
  const std::string what = parameter_name(index, param) + " (its accumulated buffer)";
  auto buffer = accumulator.buffer(param);
  TORCH_CHECK(buffer.defined(), "flora::distributed: ", what, ": the accumulator holds nothing for it");
  if (!buffer.is_contiguous()) {
    buffer = buffer.contiguous();
    accumulator.set_buffer(param, buffer);
  }
  finish(start_sum(*backend_, buffer, options_.timeout(), what), rank_, what);
  bytes_exchanged_ += static_cast<int64_t>(buffer.nbytes());
  ++collectives_;
  if (options_.reduction() == Reduction::mean && size_ > 1) {
    buffer.div_(size_);
  }
}

} // namespace flora::distributed::detail
