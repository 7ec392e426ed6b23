#pragma once

// How the CUDA tests compare a GPU result with the CPU's: float32 values to
// a relative error (test_util.h), low-precision parameters to one ulp of
// their dtype, and 8-bit moments to one code (a value near the midpoint of
// two codes may round to the other one after last-bit differences of the
// float32 value it came from: a flip, counted, never more than one code).

#include "../test_util.h"

#include <flora/quantization.h>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <string>

namespace flora::testing {

/// One ulp of the parameter's own dtype, relative: a low-precision parameter
/// may round the other way on the other device.
inline double parameter_tolerance(torch::Dtype dtype) {
  switch (dtype) {
    case torch::kBFloat16:
      return std::ldexp(1.0, -7);
    case torch::kHalf:
      return std::ldexp(1.0, -10);
    default:
      return 1e-5;
  }
}

/// The largest errors seen, for the tests' summary lines.
struct Agreement {
  double worst_state = 0, worst_param = 0;
  int64_t codes_compared = 0, code_flips = 0;
};

/// 8-bit moments of the two devices: absmax to 1e-5 and dequantized values
/// within one code of each other.
inline void expect_within_one_code(
    const torch::Tensor& codes_gpu, const torch::Tensor& absmax_gpu, const torch::Tensor& codes_cpu,
    const torch::Tensor& absmax_cpu, int64_t block, const std::string& where, Agreement& agreement) {
  const int64_t n = codes_cpu.numel();
  const auto map = flora::dynamic_code_map();
  const auto cpu_index = codes_cpu.flatten().to(torch::kLong);
  const auto here = map.index_select(0, cpu_index);
  const auto below = map.index_select(0, (cpu_index - 1).clamp_min(0));
  const auto above = map.index_select(0, (cpu_index + 1).clamp_max(255));
  const auto gap = torch::maximum(here - below, above - here); // to the farther neighbour
  const double absmax_error = relative_error(absmax_gpu, absmax_cpu);
  agreement.worst_state = std::max(agreement.worst_state, absmax_error);
  EXPECT_LT(absmax_error, 1e-5) << where << " absmax";
  const auto scale = torch::maximum(absmax_gpu.cpu(), absmax_cpu).repeat_interleave(block).narrow(0, 0, n);
  const auto deq_gpu = flora::dequantize_blockwise({codes_gpu, absmax_gpu}, block).cpu().flatten();
  const auto deq_cpu = flora::dequantize_blockwise({codes_cpu, absmax_cpu}, block).flatten();
  const auto excess = (deq_gpu - deq_cpu).abs() - (gap + 1e-5) * scale;
  EXPECT_LE(excess.max().item<double>(), 0.0) << where << ": a dequantized value more than one code away";
  agreement.codes_compared += n;
  agreement.code_flips += codes_gpu.cpu().flatten().ne(codes_cpu.flatten()).sum().item<int64_t>();
}

} // namespace flora::testing
