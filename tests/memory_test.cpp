#include "test_util.h"

#include <flora/flora.h>

#include <c10/core/CPUAllocator.h>

namespace {

TEST(MemoryMeter, CountsCpuTensorStorage) {
  flora::MemoryMeter meter(torch::kCPU);
  const int64_t start = meter.current_bytes();
  meter.reset_peak();
  {
    auto a = torch::empty({1024, 256}); // 1 MiB
    EXPECT_EQ(meter.current_bytes() - start, 1024 * 256 * 4);
    {
      auto b = torch::empty({512, 256}); // 0.5 MiB more
      EXPECT_EQ(meter.peak_bytes() - start, (1024 + 512) * 256 * 4);
    }
    EXPECT_EQ(meter.current_bytes() - start, 1024 * 256 * 4);
  }
  EXPECT_EQ(meter.current_bytes(), start);
  EXPECT_EQ(meter.peak_bytes() - start, (1024 + 512) * 256 * 4);
  meter.reset_peak();
  EXPECT_EQ(meter.peak_bytes(), start);
}

TEST(MemoryMeter, TensorsOutliveMeters) {
  torch::Tensor kept;
  {
    flora::MemoryMeter meter(torch::kCPU);
    kept = torch::ones({1000});
  }
  flora::MemoryMeter again(torch::kCPU);
  const int64_t with = again.current_bytes();
  kept = torch::Tensor();
  EXPECT_EQ(again.current_bytes(), with - 4000);
}

TEST(MemoryMeter, MetersShareTheDevicesStatistics) {
  flora::MemoryMeter first(torch::kCPU);
  first.reset_peak();
  const int64_t start = first.current_bytes();
  {
    auto t = torch::empty({1000, 1000});
  }
  flora::MemoryMeter second(torch::kCPU); // does not reset anything
  EXPECT_EQ(second.peak_bytes() - start, 4000000);
  second.reset_peak();
  EXPECT_EQ(first.peak_bytes(), start);
}

// oneDNN (through ideep) allocates with Allocator::raw_allocate, which
// requires a DataPtr's context to be its data pointer; bfloat16 matrix
// products on the CPU take that path.
TEST(MemoryMeter, RawAllocationsAndBfloat16MatrixProductsWork) {
  flora::MemoryMeter meter(torch::kCPU);
  const int64_t start = meter.current_bytes();
  auto* allocator = c10::GetCPUAllocator();
  void* raw = allocator->raw_allocate(4096);
  EXPECT_EQ(meter.current_bytes() - start, 4096);
  allocator->raw_deallocate(raw);
  EXPECT_EQ(meter.current_bytes(), start);
  const auto a = torch::randn({64, 64});
  const auto product = torch::mm(a.to(torch::kBFloat16), a.to(torch::kBFloat16)).to(torch::kFloat);
  EXPECT_LT((product - torch::mm(a, a)).abs().max().item<double>(), 0.05 * torch::mm(a, a).abs().max().item<double>());
}

} // namespace
