#pragma once

// The compressed exchange's rule and projections: which gradients travel as
// rank-r sketches, and the projection a (seed, parameter) draws. The rule is
// Flora's (layout.h, compresses_momentum) on the parameter viewed as a
// (size(0), numel / size(0)) matrix, as CompressedAccumulator views it; the
// projection is drawn from the seed directly (Projection::Seeding::direct),
// as CompressedAccumulator draws it, so a compressed exchange and a
// compressed accumulation with the same seeds are the same sums.

#include <flora/options.h>
#include <flora/projection.h>

#include <torch/types.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace flora::distributed::detail {

/// The sketch's shape for a parameter of `shape`, or nullopt when its
/// gradient goes plain (no rank, fewer than 2 dimensions, empty, or outside
/// compresses_momentum(rows, cols, rank, max_aspect_ratio)).
std::optional<std::vector<int64_t>> sketch_shape(
    torch::IntArrayRef shape,
    std::optional<int64_t> rank,
    double max_aspect_ratio);

/// The projection of `param`'s gradient matrix for `seed` (float32, on the
/// parameter's device).
Projection sketch_projection(const torch::Tensor& param, int64_t seed, int64_t rank, ProjectionMode mode);

/// down(grad) of the gradient viewed as a matrix (float32).
torch::Tensor sketch_of(const Projection& projection, const torch::Tensor& param, const torch::Tensor& grad);

/// up(sketch) as a gradient of the parameter's shape and dtype (not a view).
torch::Tensor gradient_from_sketch(const Projection& projection, const torch::Tensor& param, const torch::Tensor& sketch);

} // namespace flora::distributed::detail
