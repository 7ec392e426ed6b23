#include "test_util.h"

#include <flora/flora.h>

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

} // namespace
