// The compressed momentum's variants (momentum_projection, momentum_rescale)
// on CUDA against the CPU: the same seeds draw the same projections on both
// devices, the QR decompositions (LAPACK, cuSOLVER) agree to float32
// rounding once their signs are fixed by R's diagonal, and so do the steps,
// 8-bit states included. Skipped without a GPU.

#include "../cuda_util.h"
#include "../test_util.h"

#include <flora/flora.h>

namespace {

using flora::Flora;
using flora::FloraOptions;
using flora::MomentumProjection;
using flora::testing::param;
using flora::testing::randn_like_seeded;
using flora::testing::relative_error;

struct Case {
  const char* name;
  MomentumProjection kind;
  bool rescale;
  bool quantized;
};

class VariantOnCuda : public ::testing::TestWithParam<Case> {};

TEST_P(VariantOnCuda, MatchesTheCpu) {
  FLORA_REQUIRE_CUDA();
  const auto c = GetParam();
  // Both projection sides, two matrices of one shape (a batched group), resamples at 3 and 6.
  std::vector<torch::Tensor> cpu{param({16, 40}, 1), param({40, 16}, 2), param({40, 16}, 3), param({9}, 4)};
  std::vector<torch::Tensor> gpu;
  for (const auto& p : cpu) {
    gpu.push_back(p.detach().to(torch::kCUDA).requires_grad_(true));
  }
  const auto options = FloraOptions(2e-2).beta1(0.9).rank(6).kappa(3).momentum_projection(c.kind).momentum_rescale(
      c.rescale).quantization(c.quantized).quantization_min_size(0).quantization_block_size(64);
  Flora opt_cpu(cpu, options);
  Flora opt_gpu(gpu, options);
  for (int t = 1; t <= 8; ++t) {
    for (size_t i = 0; i < cpu.size(); ++i) {
      const auto g = randn_like_seeded(cpu[i], 10 * t + i);
      cpu[i].mutable_grad() = g;
      gpu[i].mutable_grad() = g.to(torch::kCUDA);
    }
    opt_cpu.step();
    opt_gpu.step();
  }
  // 8-bit: a code may flip between devices and steer the later steps a little.
  const double bound = c.quantized ? 1e-2 : 1e-4;
  for (size_t i = 0; i < cpu.size(); ++i) {
    EXPECT_LT(relative_error(gpu[i].detach().cpu(), cpu[i].detach()), bound) << c.name << " param " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Variants,
    VariantOnCuda,
    ::testing::Values(
        Case{"orthonormal", MomentumProjection::orthonormal, false, false},
        Case{"subspace", MomentumProjection::subspace, false, false},
        Case{"gaussian_rescaled", MomentumProjection::gaussian, true, false},
        Case{"subspace_8bit", MomentumProjection::subspace, false, true}),
    [](const auto& info) { return std::string(info.param.name); });

} // namespace
