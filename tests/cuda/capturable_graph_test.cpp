// A capturable Flora step (FloraOptions::capturable(true): step counts,
// seeds and the learning rate live on the device) captured once in a CUDA
// graph and replayed: 30 replays after one eager warm-up step, with
// resamples among them (kappa 7) and a learning-rate schedule applied with
// set_lr between replays, against the same optimizer stepped eagerly (bit
// for bit) and against a non-capturable optimizer (to 1e-5). Skipped without
// a GPU.

#include "../cuda_util.h"
#include "../test_util.h"
#include "cuda_agreement.h"

#include <flora/flora.h>

#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

using flora::FloraParamState;
using flora::testing::parameter_tolerance;
using flora::testing::relative_error;

constexpr int kReplays = 30;

// One optimizer with its parameters and the gradient tensors a captured
// step reads (written in place before each step, never replaced).
struct Run {
  std::vector<torch::Tensor> params;
  std::unique_ptr<flora::Flora> opt;

  template <typename Options>
  Run(const std::vector<torch::Tensor>& initial, const Options& options) {
    for (const auto& p : initial) {
      params.push_back(p.detach().clone().requires_grad_(true));
      params.back().mutable_grad() = torch::zeros_like(params.back());
    }
    opt = std::make_unique<flora::Flora>(params, options);
  }
  void set_grads(const std::vector<torch::Tensor>& grads) {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < params.size(); ++i) {
      params[i].mutable_grad().copy_(grads[i]);
    }
  }
  void set_lr(double lr) {
    for (auto& group : opt->param_groups()) {
      group.options().set_lr(lr); // the group's device lr tensor, no host sync
    }
  }
  const FloraParamState& state(size_t i) const {
    return static_cast<const FloraParamState&>(*opt->state().at(params[i].unsafeGetTensorImpl()));
  }
};

// The state tensors a step writes, by name.
std::vector<std::pair<const char*, torch::Tensor>> state_tensors(const FloraParamState& s) {
  return {{"rms", s.rms()},
          {"exp_avg", s.exp_avg()},
          {"exp_avg_sq_row", s.exp_avg_sq_row()},
          {"exp_avg_sq_col", s.exp_avg_sq_col()},
          {"exp_avg_sq", s.exp_avg_sq()},
          {"exp_avg_absmax", s.exp_avg_absmax()},
          {"exp_avg_sq_absmax", s.exp_avg_sq_absmax()}};
}

template <typename Options>
void replay_against_eager(bool quantization) {
  torch::manual_seed(0);
  const auto cuda = torch::TensorOptions().device(torch::kCUDA);
  const std::vector<torch::Tensor> initial = {
      torch::randn({64, 256}, cuda) * 0.1, // compressed, projected from the left
      torch::randn({256, 64}, cuda) * 0.1, // compressed, from the right
      torch::randn({1024, 64}, cuda) * 0.1, // factored, momentum uncompressed (aspect ratio 16)
      torch::randn({256}, cuda) * 0.1, // full second moment
      (torch::randn({2, 3, 4}, cuda) * 0.1).to(torch::kBFloat16)};
  std::vector<std::vector<torch::Tensor>> grads(kReplays + 1);
  std::vector<double> lrs;
  for (int k = 0; k <= kReplays; ++k) {
    for (const auto& p : initial) {
      grads[k].push_back(torch::randn_like(p));
    }
    lrs.push_back(1e-2 * (1.0 - k / 40.0));
  }
  const auto options = Options(1e-2)
                           .rank(16)
                           .beta1(0.9)
                           .kappa(7)
                           .weight_decay(0.01)
                           .check_finite(false)
                           .quantization(quantization).quantization_min_size(0);
  Run captured(initial, Options(options).capturable(true));
  Run eager(initial, Options(options).capturable(true));
  Run plain(initial, options);

  auto side = c10::cuda::getStreamFromPool();
  torch::cuda::synchronize(); // the side stream starts after everything above
  at::cuda::CUDAGraph graph; // declared before the tensors made in its capture
  {
    // All three on one stream: the same kernels, the same cuBLAS workspace.
    c10::cuda::CUDAStreamGuard guard(side);
    for (Run* run : {&captured, &eager, &plain}) {
      run->set_lr(lrs[0]);
      run->set_grads(grads[0]);
      run->opt->step(); // eager: allocates the state
    }
    graph.capture_begin();
    captured.opt->step();
    graph.capture_end();
    for (int k = 1; k <= kReplays; ++k) {
      for (Run* run : {&captured, &eager, &plain}) {
        run->set_lr(lrs[k]);
        run->set_grads(grads[k]);
      }
      graph.replay();
      eager.opt->step();
      plain.opt->step();
    }
  }
  torch::cuda::synchronize();

  const std::string mode = quantization ? "8-bit" : "float32";
  for (size_t i = 0; i < initial.size(); ++i) {
    const std::string where = mode + " param " + std::to_string(i);
    EXPECT_TRUE(torch::equal(captured.params[i], eager.params[i])) << where << ": replayed vs eager";
    EXPECT_LT(relative_error(captured.params[i], plain.params[i]), parameter_tolerance(initial[i].scalar_type()))
        << where << ": replayed vs non-capturable";
    const auto a = state_tensors(captured.state(i));
    const auto b = state_tensors(eager.state(i));
    const auto c = state_tensors(plain.state(i));
    for (size_t k = 0; k < a.size(); ++k) {
      ASSERT_EQ(a[k].second.defined(), b[k].second.defined()) << where << " " << a[k].first;
      ASSERT_EQ(a[k].second.defined(), c[k].second.defined()) << where << " " << a[k].first;
      if (!a[k].second.defined()) {
        continue;
      }
      EXPECT_TRUE(torch::equal(a[k].second, b[k].second)) << where << " " << a[k].first << ": replayed vs eager";
      if (a[k].second.scalar_type() == torch::kFloat) {
        EXPECT_LT(relative_error(a[k].second, c[k].second), 1e-5) << where << " " << a[k].first << ": replayed vs non-capturable";
      }
    }
  }
}

class CapturableGraph : public ::testing::TestWithParam<bool> {};

TEST_P(CapturableGraph, ThirtyReplaysEqualEagerCapturableSteps) {
  FLORA_REQUIRE_CUDA();
  replay_against_eager<flora::FloraOptions>(GetParam());
}

INSTANTIATE_TEST_SUITE_P(
    States, CapturableGraph, ::testing::Values(false, true),
    [](const auto& info) { return info.param ? std::string("quantized") : std::string("float32"); });

} // namespace
