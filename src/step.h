#pragma once

// The arithmetic of one Flora step over a set of parameters whose
// arguments were already checked (optimizer.cpp checks them). Two
// implementations: ProjectionMode::reference runs flora-opt's own sequence
// of ATen operations (reference_step.cpp, bit-parity with the Python
// package on the CPU); ProjectionMode::philox runs the fused step
// (fused_step.cpp): grouped multi-tensor kernels and batched GEMMs.

#include <flora/optimizer.h>

#include <map>
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

/// Updates every pending parameter, creating its state on its first step
/// (all of `pending` in reference mode). Non-finite gradients were checked
/// by the caller.
void reference_step(StateMap& states, std::vector<PendingUpdate>& pending);

/// The same in philox mode. It checks the gradients for non-finite values
/// itself (with the step's first reductions, before anything changes, one
/// host synchronisation per device) and throws, changing nothing, if one
/// of a parameter whose options ask for the check has any.
/// With `statistics`, each stepped parameter's entry (by index) is
/// replaced by this step's ParameterStatistics once the step succeeded.
void fused_step(
    StateMap& states,
    std::vector<PendingUpdate>& pending,
    std::map<int64_t, ParameterStatistics>* statistics = nullptr);

} // namespace flora::detail
