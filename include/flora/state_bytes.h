#pragma once

// Bytes of optimizer state, for comparing Flora with the optimizers it
// replaces.

#include <flora/export.h>
#include <flora/options.h>

#include <torch/optim/optimizer.h>

#include <cstdint>
#include <vector>

namespace flora {

/// Total bytes of the state tensors of `optimizer`: flora::Flora and
/// torch::optim's Adam, AdamW, SGD, RMSprop and Adagrad. Throws for an
/// optimizer whose state type it does not know.
FLORA_API int64_t optimizer_state_bytes(const torch::optim::Optimizer& optimizer);

/// The bytes flora::Flora's state will take for parameters of these shapes
/// under `options` (after their first step), computed from the shapes alone:
/// for memory planning at scales that do not fit the machine at hand.
FLORA_API int64_t estimate_state_bytes(const std::vector<std::vector<int64_t>>& shapes, const FloraOptions& options);

/// The same for torch::optim::Adam (exp_avg and exp_avg_sq in float32; the
/// parameters' own dtype is assumed float32).
FLORA_API int64_t estimate_adam_state_bytes(const std::vector<std::vector<int64_t>>& shapes);

} // namespace flora
