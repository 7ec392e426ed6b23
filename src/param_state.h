#pragma once

// Internal helpers around FloraParamState and FloraOptions shared by the
// step and the checkpoint code.

#include <flora/optimizer.h>

#include <torch/serialize/archive.h>

#include <cstdint>
#include <string>

namespace flora::detail {

/// The most steps a parameter's state may count: a checkpoint with more is
/// refused (no run takes that many; int64 would overflow on a later step),
/// and a step that would go beyond it throws, so that every state the
/// optimizer reaches saves and loads back.
constexpr int64_t kMaxStepCount = int64_t{1} << 62;

/// The state of a parameter of `shape` before its first step (step and seed
/// left at 0): float32 zeros, or, quantized, the codes and absmax that
/// quantizing zeros gives (all 0), with the shapes `options` imply. With
/// `tensor_options` on the meta device it describes what a checkpoint must
/// hold, allocating nothing.
FloraParamState initial_state(
    torch::IntArrayRef shape,
    const FloraOptions& options,
    const torch::TensorOptions& tensor_options);

/// Reads a FloraParamState written in checkpoint format `format` (see
/// read_options in option_fields.h).
void read_state(torch::serialize::InputArchive& archive, int64_t format, FloraParamState& out);

/// "param group 2": how messages name a group.
std::string group_name(size_t group);

/// "parameter 3 (param group 0, position 2, shape [8, 16])": how messages
/// name a parameter (`index` counts over all groups from 1).
std::string describe_parameter(int64_t index, size_t group, size_t position, const torch::Tensor& param);

/// Bytes of a tensor's elements (0 for an undefined tensor).
inline int64_t tensor_bytes(const torch::Tensor& t) {
  return t.defined() ? static_cast<int64_t>(t.nbytes()) : 0;
}

} // namespace flora::detail
