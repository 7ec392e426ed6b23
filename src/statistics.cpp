// ParameterStatistics' readings of the step's sums (statistics.h).

#include <flora/statistics.h>

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

namespace flora {
namespace {

double read(const torch::Tensor& sums, int64_t slot) {
  TORCH_CHECK(sums.defined() && sums.numel() == 2, "ParameterStatistics: no recorded sums");
  return sums[slot].item<double>();
}

} // namespace

double ParameterStatistics::param_rms() const {
  return std::sqrt(read(sums, 0) / static_cast<double>(numel));
}

double ParameterStatistics::update_rms() const {
  return std::sqrt(read(sums, 1) / static_cast<double>(numel));
}

double ParameterStatistics::clip_factor() const {
  return 1.0 / std::max(1.0, update_rms() / clip_threshold);
}

} // namespace flora
