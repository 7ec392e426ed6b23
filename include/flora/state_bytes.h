#pragma once

// Bytes of optimizer state, for comparing Flora with the optimizers it
// replaces.

#include <flora/export.h>

#include <torch/optim/optimizer.h>

#include <cstdint>

namespace flora {

/// Total bytes of the state tensors of `optimizer`: flora::Flora and
/// torch::optim's Adam, AdamW, SGD, RMSprop and Adagrad. Throws for an
/// optimizer whose state type it does not know.
FLORA_API int64_t optimizer_state_bytes(const torch::optim::Optimizer& optimizer);

} // namespace flora
