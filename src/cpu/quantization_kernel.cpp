// CPU kernels of flora::quantize_blockwise_ and flora::dequantize_blockwise.

#include "kernels/checks.h"
#include "kernels/contiguous.h"
#include "kernels/code_lookup.h"
#include "kernels/quantization_rule.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

namespace flora::cpu {
namespace {

void quantize_blockwise_cpu(
    const at::Tensor& x_in, at::Tensor& codes_out, at::Tensor& absmax_out, const at::Tensor& code,
    int64_t block_size) {
  const int64_t blocks = detail::check_quantize_blockwise_args(x_in, codes_out, absmax_out, code, block_size);
  const int64_t n = x_in.numel();
  const at::Tensor x = x_in.to(at::kFloat).contiguous();
  const at::Tensor map_tensor = code.contiguous();
  const detail::ContiguousWorkingCopy codes(codes_out);
  const detail::ContiguousWorkingCopy absmax(absmax_out);
  const float* xs = x.data_ptr<float>();
  const float* map = map_tensor.data_ptr<float>();
  uint8_t* q = codes.get().data_ptr<uint8_t>();
  float* am = absmax.get().data_ptr<float>();
  const auto lookup = detail::CodeLookup::of(map);
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
        q[i] = lookup->nearest(xs[i] * inverse);
      }
    }
  });
  codes.write_back();
  absmax.write_back();
}

at::Tensor dequantize_blockwise_cpu(
    const at::Tensor& codes_in, const at::Tensor& absmax_in, const at::Tensor& code, int64_t block_size) {
  detail::check_dequantize_blockwise_args(codes_in, absmax_in, code, block_size);
  const int64_t n = codes_in.numel();
  const at::Tensor codes = codes_in.contiguous();
  const at::Tensor absmax = absmax_in.contiguous();
  const at::Tensor map_tensor = code.contiguous();
  at::Tensor out = at::empty(codes.sizes(), codes.options().dtype(at::kFloat));
  const uint8_t* q = codes.data_ptr<uint8_t>();
  const float* am = absmax.data_ptr<float>();
  const float* map = map_tensor.data_ptr<float>();
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
