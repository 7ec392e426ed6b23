#pragma once

// The one table of FloraOptions' fields: serialization (both ways, with
// defaults for keys that older checkpoints lack), comparison and printing
// all walk it. Adding an option means: the TORCH_ARG in options.h, one line
// here (with the checkpoint format that first wrote it), and its rule in
// validate().

#include <flora/options.h>

#include <torch/serialize/archive.h>

#include <cstdint>
#include <tuple>

namespace flora::detail {

/// A serialized field: its archive key and the checkpoint format version
/// (see checkpoint_format.h) that first wrote it. A reader of an older
/// format leaves fields that format did not have at their defaults.
struct FieldInfo {
  const char* key;
  int64_t since;
};

/// Calls visit(FieldInfo, field of each object...) for every field, in a
/// fixed order; `options` are one FloraOptions (to read or write it) or two
/// (to compare them), const or not.
template <typename Visit, typename... Options>
void for_each_option(Visit&& visit, Options&... options) {
  visit(FieldInfo{"lr", 1}, options.lr()...);
  visit(FieldInfo{"rank", 1}, options.rank()...);
  visit(FieldInfo{"kappa", 1}, options.kappa()...);
  visit(FieldInfo{"eps1", 1}, std::get<0>(options.eps())...);
  visit(FieldInfo{"eps2", 1}, std::get<1>(options.eps())...);
  visit(FieldInfo{"clip_threshold", 1}, options.clip_threshold()...);
  visit(FieldInfo{"decay_rate", 1}, options.decay_rate()...);
  visit(FieldInfo{"beta1", 1}, options.beta1()...);
  visit(FieldInfo{"weight_decay", 1}, options.weight_decay()...);
  visit(FieldInfo{"scale_parameter", 1}, options.scale_parameter()...);
  visit(FieldInfo{"relative_step", 1}, options.relative_step()...);
  visit(FieldInfo{"warmup_init", 1}, options.warmup_init()...);
  visit(FieldInfo{"factorize_second_moment", 1}, options.factorize_second_moment()...);
  visit(FieldInfo{"seed", 1}, options.seed()...);
  visit(FieldInfo{"quantization", 1}, options.quantization()...);
  visit(FieldInfo{"quantization_block_size", 1}, options.quantization_block_size()...);
  visit(FieldInfo{"projection", 1}, options.projection()...);
  visit(FieldInfo{"check_finite", 1}, options.check_finite()...);
  visit(FieldInfo{"capturable", 2}, options.capturable()...);
  visit(FieldInfo{"max_aspect_ratio", 2}, options.max_aspect_ratio()...);
  visit(FieldInfo{"stochastic_rounding", 2}, options.stochastic_rounding()...);
  visit(FieldInfo{"momentum_projection", 3}, options.momentum_projection()...);
  visit(FieldInfo{"momentum_rescale", 3}, options.momentum_rescale()...);
  visit(FieldInfo{"quantization_min_size", 4}, options.quantization_min_size()...);
  visit(FieldInfo{"projection_precision", 4}, options.projection_precision()...);
}

/// Reads FloraOptions written in checkpoint format `format`
/// (checkpoint_format.h): a field that format did not have keeps its
/// default; a field it had but the archive lacks is an error. `out` is
/// assigned only when everything was read.
void read_options(torch::serialize::InputArchive& archive, int64_t format, FloraOptions& out);

} // namespace flora::detail
