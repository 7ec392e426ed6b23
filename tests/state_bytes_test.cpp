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

} // namespace
