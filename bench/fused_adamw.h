#pragma once

// LibTorch's fused AdamW kernel (at::_fused_adamw_, the fastest Adam a C++
// user can call) over all parameters in one call, with the step counts
// advanced on the parameters' device as torch.optim.AdamW(fused=True)
// advances them. Shared by the CPU and GPU step benchmarks.

#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace flora::bench {

class FusedAdamW {
 public:
  /// The parameters' .grad are the gradients of every step.
  explicit FusedAdamW(const std::vector<torch::Tensor>& params) : params_(params) {
    for (const auto& p : params_) {
      grads_.push_back(p.grad());
      exp_avgs_.push_back(torch::zeros_like(p));
      exp_avg_sqs_.push_back(torch::zeros_like(p));
      steps_.push_back(torch::zeros({}, p.options().dtype(torch::kFloat)));
    }
  }

  void step() {
    torch::NoGradGuard no_grad;
    torch::_foreach_add_(steps_, 1.0);
    at::_fused_adamw_(
        params_, grads_, exp_avgs_, exp_avg_sqs_, {}, steps_, /*lr=*/1e-4, /*beta1=*/0.9, /*beta2=*/0.999,
        /*weight_decay=*/0.01, /*eps=*/1e-8, /*amsgrad=*/false, /*maximize=*/false);
  }

  /// exp_avg and exp_avg_sq.
  int64_t state_bytes() const {
    int64_t bytes = 0;
    for (size_t i = 0; i < params_.size(); ++i) {
      bytes += exp_avgs_[i].nbytes() + exp_avg_sqs_[i].nbytes();
    }
    return bytes;
  }

 private:
  std::vector<torch::Tensor> params_, grads_, exp_avgs_, exp_avg_sqs_, steps_;
};

} // namespace flora::bench
