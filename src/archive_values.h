#pragma once

// Conversions between option/state field types and the IValues stored in a
// checkpoint archive, with errors that name the key and what was found
// instead of c10's internal asserts.

#include <flora/options.h>

#include <ATen/core/ivalue.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>

namespace flora::detail {

inline c10::IValue to_ivalue(double v) {
  return v;
}
inline c10::IValue to_ivalue(int64_t v) {
  return v;
}
inline c10::IValue to_ivalue(bool v) {
  return v;
}
// std::nullopt is written as None, as torch does for its own options.
template <typename T>
c10::IValue to_ivalue(const std::optional<T>& v) {
  return v.has_value() ? to_ivalue(*v) : c10::IValue();
}
inline c10::IValue to_ivalue(ProjectionMode v) {
  return static_cast<int64_t>(v);
}
inline c10::IValue to_ivalue(MomentumProjection v) {
  return static_cast<int64_t>(v);
}
inline c10::IValue to_ivalue(ProjectionPrecision v) {
  return static_cast<int64_t>(v);
}

/// Reads `value` (the archive's entry `key`, read by `who`) into `out`.
inline void from_ivalue(const c10::IValue& value, double& out, const char* who, const char* key) {
  // Integers are accepted for floating options: a value written as 1 is 1.0.
  TORCH_CHECK(
      value.isDouble() || value.isInt(), who, ": '", key, "' in the checkpoint is ", value.tagKind(),
      ", expected a float");
  out = value.isDouble() ? value.toDouble() : static_cast<double>(value.toInt());
}
inline void from_ivalue(const c10::IValue& value, int64_t& out, const char* who, const char* key) {
  TORCH_CHECK(value.isInt(), who, ": '", key, "' in the checkpoint is ", value.tagKind(), ", expected an int");
  out = value.toInt();
}
inline void from_ivalue(const c10::IValue& value, bool& out, const char* who, const char* key) {
  TORCH_CHECK(value.isBool(), who, ": '", key, "' in the checkpoint is ", value.tagKind(), ", expected a bool");
  out = value.toBool();
}
template <typename T>
void from_ivalue(const c10::IValue& value, std::optional<T>& out, const char* who, const char* key) {
  if (value.isNone()) {
    out = std::nullopt;
    return;
  }
  T inner{};
  from_ivalue(value, inner, who, key);
  out = inner;
}
// An enum whose values run from 0 to `last`, read as its integer.
template <typename Enum>
void from_ivalue_enum(
    const c10::IValue& value, Enum& out, Enum last, const char* what, const char* who, const char* key) {
  int64_t kind = 0;
  from_ivalue(value, kind, who, key);
  TORCH_CHECK(kind >= 0 && kind <= static_cast<int64_t>(last), who, ": unknown ", what, " ", kind, " in the checkpoint");
  out = static_cast<Enum>(kind);
}
inline void from_ivalue(const c10::IValue& value, ProjectionMode& out, const char* who, const char* key) {
  from_ivalue_enum(value, out, ProjectionMode::reference, "projection mode", who, key);
}
inline void from_ivalue(const c10::IValue& value, MomentumProjection& out, const char* who, const char* key) {
  from_ivalue_enum(value, out, MomentumProjection::subspace, "momentum projection", who, key);
}
inline void from_ivalue(const c10::IValue& value, ProjectionPrecision& out, const char* who, const char* key) {
  from_ivalue_enum(value, out, ProjectionPrecision::tf32, "projection precision", who, key);
}

} // namespace flora::detail
