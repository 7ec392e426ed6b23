#pragma once

// The arithmetic of one Flora step over a set of parameters whose
// arguments were already checked (optimizer.cpp checks them). Two
// implementations: ProjectionMode::reference runs flora-opt's own sequence
// of ATen operations (reference_step.cpp, bit-parity with the Python
// package on the CPU); ProjectionMode::philox runs the fused step
// (fused_step.cpp): grouped multi-tensor kernels and batched GEMMs.

#include <flora/optimizer.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace flora::detail {

/// The projection seed of the `index`-th parameter (1-based, over all
/// groups): seed + index, as flora-opt assigns them, wrapping around at the
/// int64 limit (a loaded or user seed may sit there; signed overflow would
/// be undefined).
inline int64_t parameter_seed(int64_t seed, int64_t index) {
  return static_cast<int64_t>(static_cast<uint64_t>(seed) + static_cast<uint64_t>(index));
}

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
