#pragma once

// Blockwise dynamic 8-bit quantization of optimizer states, as flora-opt
// gets it from bitsandbytes (quantize_blockwise / dequantize_blockwise):
// the tensor, flattened, is cut into blocks of block_size elements (the last
// may be shorter); each block keeps its absmax in float32 and each element
// the index (uint8) of the entry of a 256-value code map nearest to
// x / absmax. Dequantized: code[q] * absmax.
//
// The code map is the signed "dynamic" map: for exponent levels i = 0..6,
// the 2^i midpoints of linspace(0.1, 1, 2^i + 1) scaled by +-10^(i - 6),
// plus 0 and 1, sorted (in float32, computed as bitsandbytes computes it);
// its first entry is then set to -1, as bitsandbytes' CPU kernel sets it, so
// that a block's absmax element round-trips exactly whatever its sign.
//
// Rounding (bitsandbytes' CPU kernel, reproduced bit for bit on the CPU and
// the GPU): v = x * (1 / absmax) in float32, clamped to [-1, 1]; the nearer of
// the two entries around v, a tie going to the lower index. A block whose
// absmax is 0 gets all codes 0 (dequantized: -0.0). NaN inputs do not count
// toward absmax and get code 0; so do zeros in a block of denormals only,
// where 1 / absmax overflows.

#include <flora/export.h>

#include <torch/types.h>

#include <cstdint>

namespace flora {

/// A copy of the 256-entry code map (float32) on `device`. The kernels need
/// no device copy (they read the map on the host, see
/// flora::ops::quantize_blockwise_); on a GPU the copy is written by a kernel
/// on the current stream, never copied from the host, so this may be called
/// inside a CUDA-graph capture.
FLORA_API torch::Tensor dynamic_code_map(const torch::Device& device = torch::kCPU);

struct QuantizedTensor {
  torch::Tensor codes; // uint8, the shape of the original
  torch::Tensor absmax; // float32, one per block
};

/// Number of blocks of a tensor of `numel` elements.
FLORA_API int64_t quantization_blocks(int64_t numel, int64_t block_size);

FLORA_API QuantizedTensor quantize_blockwise(const torch::Tensor& x, int64_t block_size = 4096);
/// Quantizes `x` into existing storage (codes and absmax of the right sizes).
FLORA_API void quantize_blockwise_into(const torch::Tensor& x, QuantizedTensor& out, int64_t block_size = 4096);
/// float32, the shape of the codes.
FLORA_API torch::Tensor dequantize_blockwise(const QuantizedTensor& q, int64_t block_size = 4096);

} // namespace flora
