#include <flora/quantization.h>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

#include <map>
#include <mutex>

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

} // namespace

torch::Tensor dynamic_code_map(const torch::Device& device) {
  static std::mutex mutex;
  static std::map<std::string, torch::Tensor> maps;
  std::lock_guard<std::mutex> lock(mutex);
  auto& cpu = maps["cpu"];
  if (!cpu.defined()) {
    cpu = build_dynamic_code_map();
  }
  if (device.is_cpu()) {
    return cpu;
  }
  auto& on_device = maps[device.str()];
  if (!on_device.defined()) {
    on_device = cpu.to(device);
  }
  return on_device;
}

int64_t quantization_blocks(int64_t numel, int64_t block_size) {
  TORCH_CHECK(block_size > 0, "quantization block size must be positive, got ", block_size);
  return (numel + block_size - 1) / block_size;
}

QuantizedTensor quantize_blockwise(const torch::Tensor& x, int64_t block_size) {
  QuantizedTensor q{
      torch::empty(x.sizes(), x.options().dtype(torch::kUInt8)),
      torch::empty({quantization_blocks(x.numel(), block_size)}, x.options().dtype(torch::kFloat))};
  quantize_blockwise_into(x, q, block_size);
  return q;
}

void quantize_blockwise_into(const torch::Tensor& x, QuantizedTensor& out, int64_t block_size) {
  static const auto handle =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("flora::quantize_blockwise_", "")
          .typed<void(const torch::Tensor&, torch::Tensor&, torch::Tensor&, const torch::Tensor&, int64_t)>();
  handle.call(x, out.codes, out.absmax, dynamic_code_map(x.device()), block_size);
}

torch::Tensor dequantize_blockwise(const QuantizedTensor& q, int64_t block_size) {
  static const auto handle =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("flora::dequantize_blockwise", "")
          .typed<torch::Tensor(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, int64_t)>();
  return handle.call(q.codes, q.absmax, dynamic_code_map(q.codes.device()), block_size);
}

} // namespace flora
