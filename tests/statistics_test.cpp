// Flora::record_statistics: the recorded sums are the step's own (the
// parameter before the step, the update before clipping), consistent with
// how far each parameter moved; recording is opt-in, survives nothing it
// should not, and a failed step leaves the record as it was.

#include "test_util.h"

#include <flora/flora.h>

#include <limits>

namespace {

using flora::Flora;
using flora::FloraOptions;
using flora::MomentumProjection;
using flora::testing::param;
using flora::testing::randn_like_seeded;

// Every kind of parameter: compressed (both sides), factored without
// compression (aspect ratio > 4), full second moment (vector, 3-d), in two
// groups, one of them with a momentum variant.
struct Model {
  std::vector<torch::Tensor> params{
      param({8, 24}, 1), param({24, 8}, 2), param({40, 6}, 3), param({17}, 4), param({3, 4, 5}, 5),
      param({12, 12}, 6)};
  std::unique_ptr<Flora> opt;

  explicit Model(double clip) {
    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(std::vector<torch::Tensor>{params[0], params[1], params[2], params[3], params[4]});
    groups.emplace_back(
        std::vector<torch::Tensor>{params[5]},
        std::make_unique<FloraOptions>(
            FloraOptions(0.05).beta1(0.9).rank(4).clip_threshold(clip).momentum_projection(MomentumProjection::subspace)));
    opt = std::make_unique<Flora>(groups, FloraOptions(0.05).beta1(0.9).rank(4).kappa(2).clip_threshold(clip));
  }
  void gradients(int step) {
    for (size_t i = 0; i < params.size(); ++i) {
      params[i].mutable_grad() = randn_like_seeded(params[i], 50 * step + i);
    }
  }
};

// The parameter moves by lr max(eps2, RMS(p)) clip_factor update (no weight
// decay), so its RMS change is lr RMS(p) clip_factor update_rms.
TEST(Statistics, AgreeWithHowFarEachParameterMoved) {
  Model m(/*clip=*/0.6); // low enough that some updates are clipped
  m.opt->record_statistics(true);
  int clipped = 0;
  for (int step = 1; step <= 4; ++step) {
    m.gradients(step);
    std::vector<torch::Tensor> before;
    for (const auto& p : m.params) {
      before.push_back(p.detach().clone());
    }
    m.opt->step();
    const auto stats = m.opt->statistics();
    ASSERT_EQ(stats.size(), m.params.size());
    for (size_t i = 0; i < stats.size(); ++i) {
      const auto& s = stats[i];
      EXPECT_EQ(s.index, static_cast<int64_t>(i) + 1);
      EXPECT_EQ(s.step, step);
      EXPECT_EQ(s.numel, m.params[i].numel());
      EXPECT_DOUBLE_EQ(s.clip_threshold, 0.6);
      const double n = static_cast<double>(s.numel);
      const double param_rms = std::sqrt(before[i].pow(2).sum().item<double>() / n);
      EXPECT_NEAR(s.param_rms(), param_rms, 1e-5 * param_rms) << "param " << i;
      const double moved_rms = std::sqrt((before[i] - m.params[i].detach()).pow(2).sum().item<double>() / n);
      const double predicted = 0.05 * std::max(1e-3, param_rms) * s.clip_factor() * s.update_rms();
      EXPECT_NEAR(moved_rms, predicted, 1e-4 * predicted) << "param " << i << " step " << step;
      EXPECT_GT(s.clip_factor(), 0.0);
      EXPECT_LE(s.clip_factor(), 1.0);
      EXPECT_DOUBLE_EQ(s.clip_factor(), 1.0 / std::max(1.0, s.update_rms() / 0.6));
      clipped += s.clip_factor() < 1.0;
    }
  }
  EXPECT_GT(clipped, 0) << "no update was clipped: the test does not exercise clipping";
}

TEST(Statistics, OnlyWhenAskedAndClearedWhenStopped) {
  Model m(1.0);
  m.gradients(1);
  m.opt->step();
  EXPECT_FALSE(m.opt->recording_statistics());
  EXPECT_TRUE(m.opt->statistics().empty());
  m.opt->record_statistics(true);
  // Only the parameters stepped since: the fused backward path steps one at a time.
  m.gradients(2);
  m.opt->step_parameter(m.params[1], m.params[1].grad());
  auto stats = m.opt->statistics();
  ASSERT_EQ(stats.size(), 1u);
  EXPECT_EQ(stats[0].index, 2);
  EXPECT_EQ(stats[0].step, 2);
  m.opt->record_statistics(false);
  EXPECT_TRUE(m.opt->statistics().empty());
}

TEST(Statistics, AFailedStepLeavesTheRecordAsItWas) {
  Model m(1.0);
  m.opt->record_statistics(true);
  m.gradients(1);
  m.opt->step();
  const auto before = m.opt->statistics();
  m.gradients(2);
  m.params[4].mutable_grad()[1][2][3] = std::numeric_limits<float>::infinity();
  EXPECT_THROW(m.opt->step(), c10::Error);
  const auto after = m.opt->statistics();
  ASSERT_EQ(after.size(), before.size());
  for (size_t i = 0; i < after.size(); ++i) {
    EXPECT_EQ(after[i].step, 1);
    EXPECT_TRUE(torch::equal(after[i].sums, before[i].sums));
  }
}

// Parameters in reference mode (flora-opt's sequence, which computes no
// such sums) are not recorded; those of a philox group beside them are.
TEST(Statistics, ReferenceModeParametersAreNotRecorded) {
  auto a = param({8, 8}, 1);
  auto b = param({8, 8}, 2);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<torch::Tensor>{a});
  groups.emplace_back(
      std::vector<torch::Tensor>{b},
      std::make_unique<FloraOptions>(FloraOptions(1e-2).projection(flora::ProjectionMode::reference)));
  Flora opt(groups, FloraOptions(1e-2));
  opt.record_statistics(true);
  a.mutable_grad() = randn_like_seeded(a, 3);
  b.mutable_grad() = randn_like_seeded(b, 4);
  opt.step();
  const auto stats = opt.statistics();
  ASSERT_EQ(stats.size(), 1u);
  EXPECT_EQ(stats[0].index, 1);
}

} // namespace
