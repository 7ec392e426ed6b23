#include "test_util.h"

#include <flora/flora.h>

namespace {

using flora::testing::param;

TEST(StateBytes, FloraCountsItsLowRankFactors) {
  auto compressed = param({64, 256}, 1); // aspect 4, compressed at rank 8
  auto embedding = param({512, 64}, 2); // aspect 8: uncompressed momentum
  auto bias = param({256}, 3);
  std::vector<torch::Tensor> params = {compressed, embedding, bias};
  flora::Flora opt(params, flora::FloraOptions(1e-3).beta1(0.9).rank(8));
  EXPECT_EQ(opt.state_bytes(), 0);
  for (auto& p : params) {
    p.mutable_grad() = torch::ones_like(p);
  }
  opt.step();
  const int64_t f = 4; // float32
  const int64_t expected = f * ((8 * 256 + 64 + 256 + 1) + (512 * 64 + 512 + 64 + 1) + (256 + 256 + 1));
  EXPECT_EQ(opt.state_bytes(), expected);
  EXPECT_EQ(flora::optimizer_state_bytes(opt), expected);
}

TEST(StateBytes, AdamCountsBothMoments) {
  auto p = param({64, 256}, 1);
  torch::optim::Adam adam({p}, torch::optim::AdamOptions(1e-3));
  p.mutable_grad() = torch::ones_like(p);
  adam.step();
  EXPECT_EQ(flora::optimizer_state_bytes(adam), 2 * 4 * 64 * 256);
  torch::optim::SGD sgd({p}, torch::optim::SGDOptions(0.1).momentum(0.9));
  sgd.step();
  EXPECT_EQ(flora::optimizer_state_bytes(sgd), 4 * 64 * 256);
}

TEST(StateBytes, EstimateFromShapesEqualsTheAllocatedState) {
  const std::vector<std::vector<int64_t>> shapes = {{64, 256}, {512, 64}, {256}, {}, {3, 4, 5}, {8, 8}, {5000}};
  for (const auto& options :
       {flora::FloraOptions(1e-3), flora::FloraOptions(1e-3).beta1(0.9), flora::FloraOptions(1e-3).beta1(0.9).rank(8),
        flora::FloraOptions(1e-3).beta1(0.9).rank(8).quantization(true).quantization_min_size(0),
        flora::FloraOptions(1e-3).beta1(0.9).factorize_second_moment(false).quantization(true).quantization_min_size(0).quantization_block_size(100)}) {
    std::vector<torch::Tensor> params;
    for (const auto& s : shapes) {
      params.push_back(torch::randn(s, torch::requires_grad()));
      params.back().mutable_grad() = torch::randn(s);
    }
    flora::Flora opt(params, options);
    opt.step();
    EXPECT_EQ(flora::estimate_state_bytes(shapes, options), opt.state_bytes());
  }
  std::vector<torch::Tensor> params;
  for (const auto& s : shapes) {
    params.push_back(torch::randn(s, torch::requires_grad()));
    params.back().mutable_grad() = torch::randn(s);
  }
  torch::optim::Adam adam(params, torch::optim::AdamOptions(1e-3));
  adam.step();
  EXPECT_EQ(flora::estimate_adam_state_bytes(shapes), flora::optimizer_state_bytes(adam));
}

} // namespace
