#include <flora/ops.h>
#include <flora/quantization.h>

#include "kernels/checks.h"

#include <torch/torch.h>

namespace flora {
namespace {

torch::Tensor build_dynamic_code_map() {
  std::vector<torch::Tensor> parts;
  for (int64_t i = 0; i <= 6; ++i) {
    const auto bounds = torch::linspace(0.1, 1.0, (int64_t{1} << i) + 1, torch::kFloat);
    const auto mids = (bounds.slice(0, 0, -1) + bounds.slice(0, 1)) / 2.0;
    const double scale = std::pow(10.0, static_cast<double>(i - 6));
    parts.push_back(mids * scale);
    parts.push_back(mids * -scale);
  }
  parts.push_back(torch::tensor({0.0f, 1.0f}));
  auto code = std::get<0>(torch::sort(torch::cat(parts)));
  TORCH_INTERNAL_ASSERT(code.numel() == 256, "dynamic code map has ", code.numel(), " entries");
  code[0] = -1.0f;
  return code;
}

// The map the kernels read: built once (thread-safe static), never written
// again, and on the CPU for every device (see ops::quantize_blockwise_).
const torch::Tensor& code_map() {
  static const torch::Tensor map = build_dynamic_code_map();
  return map;
}

} // namespace

torch::Tensor dynamic_code_map(const torch::Device& device) {
  // Made on the device by the dequantize kernel (code[i] * 1 == code[i]
  // exactly) on the current stream: no host copy, so this works inside a
  // CUDA-graph capture too. The CPU takes the same path.
  const auto on_device = torch::TensorOptions().device(device);
  const auto indices = torch::arange(256, on_device.dtype(torch::kUInt8));
  const auto ones = torch::ones({1}, on_device.dtype(torch::kFloat));
  return ops::dequantize_blockwise(indices, ones, code_map(), 256);
}

int64_t quantization_blocks(int64_t numel, int64_t block_size) {
  TORCH_CHECK(block_size > 0, "quantization block size must be positive, got ", block_size);
  return detail::quantization_block_count(numel, block_size);
}

QuantizedTensor quantize_blockwise(const torch::Tensor& x, int64_t block_size) {
  QuantizedTensor q{
      torch::empty(x.sizes(), x.options().dtype(torch::kUInt8)),
      torch::empty({quantization_blocks(x.numel(), block_size)}, x.options().dtype(torch::kFloat))};
  quantize_blockwise_into(x, q, block_size);
  return q;
}

void quantize_blockwise_into(const torch::Tensor& x, QuantizedTensor& out, int64_t block_size) {
  ops::quantize_blockwise_(x, out.codes, out.absmax, code_map(), block_size);
}

torch::Tensor dequantize_blockwise(const QuantizedTensor& q, int64_t block_size) {
  return ops::dequantize_blockwise(q.codes, q.absmax, code_map(), block_size);
}

} // namespace flora
