#pragma once

// The version of flora::Flora's checkpoint format (the "flora_format" entry
// of every checkpoint). A reader knows every version ever written: fields
// carry the version that introduced them (option_fields.h, state_fields.h),
// and a checkpoint of an older version gets the defaults of the fields it
// predates. A checkpoint of a newer version is refused.
//
// History:
//   1  flora 0.1: options and per-parameter state of flora-opt 0.0.3 plus
//      projection, check_finite and quantization_block_size.
//   2  options: capturable, max_aspect_ratio, stochastic_rounding.
//   3  options: momentum_projection, momentum_rescale.
//   4  options: quantization_min_size (formats 1-3 quantized every
//      parameter: they read as 0), projection_precision.

#include <cstdint>

namespace flora::detail {

constexpr int64_t kCheckpointFormat = 4;

} // namespace flora::detail
