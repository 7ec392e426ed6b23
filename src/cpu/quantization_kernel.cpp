// CPU kernels of flora::quantize_blockwise_ and flora::dequantize_blockwise.

#include "../quantization_rule.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

namespace flora::cpu {
namespace {

void check_code(const at::Tensor& code, const at::Tensor& like, const char* op) {
  TORCH_CHECK(
      code.numel() == 256 && code.scalar_type() == at::kFloat && code.is_contiguous(), op,
      ": code must be a contiguous float32 tensor of 256 entries, got ", code.sizes(), " ", code.scalar_type());
  TORCH_CHECK(code.device() == like.device(), op, ": code is on ", code.device(), ", the data on ", like.device());
}

void quantize_blockwise_cpu(
    const at::Tensor& x_in, at::Tensor& codes, at::Tensor& absmax, const at::Tensor& code, int64_t block_size) {
  TORCH_CHECK(block_size > 0, "quantize_blockwise_: block_size must be positive, got ", block_size);
  check_code(code, x_in, "quantize_blockwise_");
  const int64_t n = x_in.numel();
  const int64_t blocks = (n + block_size - 1) / block_size;
  TORCH_CHECK(
      codes.scalar_type() == at::kByte && codes.numel() == n && codes.is_contiguous(),
      "quantize_blockwise_: codes must be a contiguous uint8 tensor of ", n, " elements");
  TORCH_CHECK(
      absmax.scalar_type() == at::kFloat && absmax.numel() == blocks && absmax.is_contiguous(),
      "quantize_blockwise_: absmax must be a contiguous float32 tensor of ", blocks, " elements");
  const at::Tensor x = x_in.to(at::kFloat).contiguous();
  const float* xs = x.data_ptr<float>();
  const float* map = code.data_ptr<float>();
  uint8_t* q = codes.data_ptr<uint8_t>();
  float* am = absmax.data_ptr<float>();
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t first = b * block_size;
      const int64_t last = std::min(n, first + block_size);
      float m = 0.0f;
      for (int64_t i = first; i < last; ++i) {
        m = std::max(m, std::fabs(xs[i])); // NaN never wins
      }
      am[b] = m;
      if (m == 0.0f) {
        std::fill(q + first, q + last, uint8_t{0});
        continue;
      }
      const float inverse = 1.0f / m;
      for (int64_t i = first; i < last; ++i) {
        q[i] = detail::nearest_code(map, xs[i] * inverse);
      }
    }
  });
}

at::Tensor dequantize_blockwise_cpu(
    const at::Tensor& codes_in, const at::Tensor& absmax_in, const at::Tensor& code, int64_t block_size) {
  TORCH_CHECK(block_size > 0, "dequantize_blockwise: block_size must be positive, got ", block_size);
  TORCH_CHECK(codes_in.scalar_type() == at::kByte, "dequantize_blockwise: codes must be uint8, got ", codes_in.scalar_type());
  check_code(code, codes_in, "dequantize_blockwise");
  const int64_t n = codes_in.numel();
  const int64_t blocks = (n + block_size - 1) / block_size;
  TORCH_CHECK(
      absmax_in.scalar_type() == at::kFloat && absmax_in.numel() == blocks,
      "dequantize_blockwise: absmax must be float32 with ", blocks, " elements, got ", absmax_in.numel());
  const at::Tensor codes = codes_in.contiguous();
  const at::Tensor absmax = absmax_in.contiguous();
  at::Tensor out = at::empty(codes.sizes(), codes.options().dtype(at::kFloat));
  const uint8_t* q = codes.data_ptr<uint8_t>();
  const float* am = absmax.data_ptr<float>();
  const float* map = code.data_ptr<float>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, n, 16384, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      o[i] = map[q[i]] * am[i / block_size];
    }
  });
  return out;
}

} // namespace

TORCH_LIBRARY_IMPL(flora, CPU, m) {
  m.impl("quantize_blockwise_", &quantize_blockwise_cpu);
  m.impl("dequantize_blockwise", &dequantize_blockwise_cpu);
}

} // namespace flora::cpu
