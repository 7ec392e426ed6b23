// CPU kernels of flora::quantize_blockwise_ and flora::dequantize_blockwise.

#include "kernels/checks.h"
#include "kernels/contiguous.h"
#include "fused_kernels.h"

#include <ATen/ATen.h>
#include <torch/library.h>


namespace flora::cpu {
namespace {

void quantize_blockwise_cpu(
    const at::Tensor& x_in, at::Tensor& codes_out, at::Tensor& absmax_out, const at::Tensor& code,
    int64_t block_size) {
  detail::check_quantize_blockwise_args(x_in, codes_out, absmax_out, code, block_size);
  const int64_t n = x_in.numel();
  const at::Tensor x = x_in.to(at::kFloat).contiguous();
  const at::Tensor map_tensor = code.contiguous();
  const detail::ContiguousWorkingCopy codes(codes_out);
  const detail::ContiguousWorkingCopy absmax(absmax_out);
  const float* xs = x.data_ptr<float>();
  const float* map = map_tensor.data_ptr<float>();
  // The fused step's (de)quantisers, vectorised for this CPU (fused_kernels.h).
  Moment moment;
  moment.codes = codes.get().data_ptr<uint8_t>();
  moment.absmax = absmax.get().data_ptr<float>();
  moment.block = block_size;
  moment.code_map = map;
  kernels().quantize(xs, n, moment);
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
  Moment moment;
  moment.codes = const_cast<uint8_t*>(codes.data_ptr<uint8_t>()); // read only: dequantize writes `out`
  moment.absmax = const_cast<float*>(absmax.data_ptr<float>());
  moment.block = block_size;
  moment.code_map = map_tensor.data_ptr<float>();
  kernels().dequantize(moment, n, out.data_ptr<float>());
  return out;
}

} // namespace

TORCH_LIBRARY_IMPL(flora, CPU, m) {
  m.impl("quantize_blockwise_", &quantize_blockwise_cpu);
  m.impl("dequantize_blockwise", &dequantize_blockwise_cpu);
}

} // namespace flora::cpu
