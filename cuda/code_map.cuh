#pragma once

// The 256-entry dynamic code map of 8-bit moments on the device, and the
// element rule of blockwise quantization (kernels/quantization_rule.h) as
// the CUDA kernels apply it. The map is a CPU tensor on every device
// (kernels/checks.h): its values travel as a launch argument and are staged
// in shared memory, so no device copy of the map exists, nothing is copied
// from the host, and a CUDA graph captures the values with the launch.

#include "common.cuh"

#include "kernels/quantization_rule.h"

#include <ATen/core/Tensor.h>

#include <cstring>

namespace flora::cuda {

struct CodeMap {
  float value[256];
};

/// The map's values (a CPU tensor: read on the host, no device involved).
inline CodeMap code_map_of(const at::Tensor& code) {
  CodeMap map;
  const at::Tensor dense = code.contiguous();
  std::memcpy(map.value, dense.data_ptr<float>(), sizeof(map.value));
  return map;
}

/// Copies the map into `shared` (256 floats) for the whole block; followed
/// by a barrier. Indexed straight from the parameter: never through a copy of
/// it, which would put 1 KB per thread on the stack.
__device__ __forceinline__ void stage_code_map(const CodeMap& code, float* shared) {
  for (int i = threadIdx.x; i < 256; i += blockDim.x) {
    shared[i] = code.value[i];
  }
  __syncthreads();
}

/// The value of a code in a block whose absmax is `absmax`.
__device__ __forceinline__ float dequantized(const float* map, uint8_t code, float absmax) {
  return __fmul_rn(map[code], absmax);
}

/// The code of `x` in a block whose absmax is `absmax` and `inverse` =
/// 1 / absmax (a block of zeros: absmax 0, every code 0), as the CPU's
/// quantize_block rounds it.
__device__ __forceinline__ uint8_t quantized(const float* map, float x, float absmax, float inverse) {
  return absmax == 0.0f ? uint8_t{0} : flora::detail::nearest_code(map, __fmul_rn(x, inverse));
}

/// 1 / absmax, as the CPU computes it (unused when absmax is 0).
__device__ __forceinline__ float inverse_absmax(float absmax) {
  return __fdiv_rn(1.0f, absmax);
}

} // namespace flora::cuda
