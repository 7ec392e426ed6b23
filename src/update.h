#pragma once

// The arithmetic of one Flora step over a set of parameters whose inputs
// were already checked (optimizer.cpp does the checking).

#include <flora/optimizer.h>

#include <memory>
#include <string>
#include <vector>

namespace flora::detail {

/// A parameter about to be updated.
struct PendingUpdate {
  torch::Tensor param; // shares storage with the parameter in its group
  torch::Tensor grad;
  const FloraOptions* options;
  int64_t index; // 1-based position over all groups: the seed offset
  std::string who; // how messages name it
};

using StateMap = ska::flat_hash_map<void*, std::unique_ptr<torch::optim::OptimizerParamState>>;

/// Updates every pending parameter, creating its state on its first step.
void apply_updates(StateMap& states, std::vector<PendingUpdate>& pending);

} // namespace flora::detail
