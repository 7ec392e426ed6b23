#pragma once

// The one table of FloraParamState's fields: serialization, comparison,
// byte counts, device moves and checkpoint validation all walk it. A new
// state field is one line here (with the checkpoint format that first wrote
// it) plus its TORCH_ARG in optimizer.h.

#include "option_fields.h"

#include <flora/optimizer.h>

namespace flora::detail {

/// Calls visit(FieldInfo, field of each state...) for every field of one
/// FloraParamState (to read or write it) or two (to compare them).
/// Integers are always present; an undefined tensor is absent from the
/// archive, as torch's optimizers write it.
template <typename Visit, typename... States>
void for_each_state_field(Visit&& visit, States&... states) {
  visit(FieldInfo{"step", 1}, states.step()...);
  visit(FieldInfo{"seed", 1}, states.seed()...);
  visit(FieldInfo{"rms", 1}, states.rms()...);
  visit(FieldInfo{"exp_avg", 1}, states.exp_avg()...);
  visit(FieldInfo{"exp_avg_sq_row", 1}, states.exp_avg_sq_row()...);
  visit(FieldInfo{"exp_avg_sq_col", 1}, states.exp_avg_sq_col()...);
  visit(FieldInfo{"exp_avg_sq", 1}, states.exp_avg_sq()...);
  visit(FieldInfo{"exp_avg_absmax", 1}, states.exp_avg_absmax()...);
  visit(FieldInfo{"exp_avg_sq_absmax", 1}, states.exp_avg_sq_absmax()...);
}

/// The same, for the tensor fields only.
template <typename Visit, typename... States>
void for_each_state_tensor(Visit&& visit, States&... states) {
  for_each_state_field(
      [&](const FieldInfo& info, auto&... fields) {
        if constexpr ((std::is_same_v<std::decay_t<decltype(fields)>, torch::Tensor> && ...)) {
          visit(info, fields...);
        }
      },
      states...);
}

} // namespace flora::detail
