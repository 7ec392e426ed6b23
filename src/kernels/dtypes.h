#pragma once

// The one list of parameter dtypes that flora's kernels serve (gradients
// share their parameter's dtype; arithmetic is float32 whatever it is). Every
// AT_DISPATCH of a parameter-typed tensor goes through
// FLORA_DISPATCH_PARAM_TYPES, every argument check through
// is_parameter_dtype, and the optimizer's gradient check can use the same
// list, so that a dtype is supported everywhere or nowhere.

#include <ATen/Dispatch.h>
#include <c10/core/ScalarType.h>

#include <string>

// X(name, ...) for each supported at::ScalarType name.
#define FLORA_PARAMETER_DTYPES(X, ...) X(Float, __VA_ARGS__) X(Half, __VA_ARGS__) X(BFloat16, __VA_ARGS__)

#define FLORA_PRIVATE_DTYPE_ENUM(name, ...) c10::ScalarType::name,
#define FLORA_PRIVATE_DTYPE_CASE(name, ...) AT_DISPATCH_CASE(c10::ScalarType::name, __VA_ARGS__)

/// AT_DISPATCH over the parameter dtypes: scalar_t is float, c10::Half or
/// c10::BFloat16 inside the lambda.
#define FLORA_DISPATCH_PARAM_TYPES(TYPE, NAME, ...) \
  AT_DISPATCH_SWITCH(TYPE, NAME, FLORA_PARAMETER_DTYPES(FLORA_PRIVATE_DTYPE_CASE, __VA_ARGS__))

namespace flora::detail {

inline constexpr c10::ScalarType kParameterDtypes[] = {FLORA_PARAMETER_DTYPES(FLORA_PRIVATE_DTYPE_ENUM, )};

constexpr bool is_parameter_dtype(c10::ScalarType dtype) {
  for (const auto supported : kParameterDtypes) {
    if (dtype == supported) {
      return true;
    }
  }
  return false;
}

/// "Float, Half, BFloat16": the list as error messages name it.
inline std::string parameter_dtype_names() {
  std::string names;
  for (const auto dtype : kParameterDtypes) {
    names += (names.empty() ? "" : ", ") + std::string(c10::toString(dtype));
  }
  return names;
}

} // namespace flora::detail
