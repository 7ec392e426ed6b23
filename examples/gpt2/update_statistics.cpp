#include "update_statistics.h"

#include <flora/layout.h>

#include <torch/torch.h>

namespace flora::gpt2 {

std::vector<UpdateStatistics> sample_statistics(
    const flora::Flora& optimizer,
    int64_t step,
    const std::vector<std::string>& names,
    const std::vector<torch::Tensor>& params) {
  const auto recorded = optimizer.statistics();
  std::vector<UpdateStatistics> out;
  if (recorded.empty()) {
    return out;
  }
  std::vector<torch::Tensor> sums;
  for (const auto& r : recorded) {
    sums.push_back(r.sums.to(torch::kCPU)); // small; one copy per parameter, read once below
  }
  const auto host = torch::stack(sums).to(torch::kDouble);
  const double* s = host.data_ptr<double>();
  const auto& options = static_cast<const FloraOptions&>(optimizer.param_groups().front().options());
  for (size_t i = 0; i < recorded.size(); ++i) {
    const auto& r = recorded[i];
    const size_t at = static_cast<size_t>(r.index - 1); // one group: index = position + 1
    TORCH_CHECK(at < params.size(), "statistics for parameter ", r.index, " of ", params.size());
    UpdateStatistics u;
    u.step = step;
    u.parameter = names[at];
    u.shape = params[at].sizes().vec();
    const auto layout = ParamLayout::of(params[at].sizes(), options);
    u.momentum = layout.compressed ? "compressed" : (layout.momentum ? "momentum" : "none");
    const double n = static_cast<double>(r.numel);
    u.param_rms = std::sqrt(s[2 * i] / n);
    u.update_rms = std::sqrt(s[2 * i + 1] / n);
    u.clip_factor = 1.0 / std::max(1.0, u.update_rms / r.clip_threshold);
    out.push_back(std::move(u));
  }
  return out;
}

} // namespace flora::gpt2
