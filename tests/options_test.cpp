#include "test_util.h"

#include <flora/flora.h>

#include <torch/optim/schedulers/step_lr.h>

namespace {

using flora::FloraOptions;
using flora::testing::expect_error;

TEST(FloraOptions, DefaultsAreFloraOpts) {
  const FloraOptions o;
  EXPECT_FALSE(o.lr().has_value());
  EXPECT_FALSE(o.rank().has_value());
  EXPECT_EQ(o.kappa(), 1000);
  EXPECT_EQ(std::get<0>(o.eps()), 1e-30);
  EXPECT_EQ(std::get<1>(o.eps()), 1e-3);
  EXPECT_EQ(o.clip_threshold(), 1.0);
  EXPECT_EQ(o.decay_rate(), -0.8);
  EXPECT_FALSE(o.beta1().has_value());
  EXPECT_EQ(o.weight_decay(), 0.0);
  EXPECT_TRUE(o.scale_parameter());
  EXPECT_FALSE(o.relative_step());
  EXPECT_FALSE(o.warmup_init());
  EXPECT_TRUE(o.factorize_second_moment());
  EXPECT_EQ(o.seed(), 0);
  EXPECT_FALSE(o.quantization());
  EXPECT_EQ(o.quantization_block_size(), 4096);
  EXPECT_EQ(o.quantization_min_size(), 4096);
  EXPECT_EQ(o.projection_precision(), flora::ProjectionPrecision::float32);
  EXPECT_EQ(o.projection(), flora::ProjectionMode::philox);
  EXPECT_TRUE(o.check_finite());
}

TEST(FloraOptions, BuilderChainsAndCompares) {
  auto a = FloraOptions(1e-3).rank(8).beta1(0.9).kappa(50).seed(3);
  auto b = FloraOptions(1e-3).rank(8).beta1(0.9).kappa(50).seed(3);
  EXPECT_TRUE(a == b);
  b.rank(std::nullopt);
  EXPECT_FALSE(a == b);
  b.rank(8).eps(std::make_tuple(1e-30, 1e-4));
  EXPECT_FALSE(a == b);
}

// Writes the options to bytes and reads them back into options that start
// out different.
FloraOptions round_trip(const FloraOptions& saved) {
  torch::serialize::OutputArchive out;
  saved.serialize(out);
  std::ostringstream bytes;
  out.save_to(bytes);
  std::istringstream in_bytes(bytes.str());
  torch::serialize::InputArchive in;
  in.load_from(in_bytes);
  FloraOptions loaded(1.0);
  loaded.serialize(in);
  return loaded;
}

TEST(FloraOptions, SerializeRoundTrip) {
  auto saved = FloraOptions(2e-3)
                   .rank(16)
                   .kappa(7)
                   .eps(std::make_tuple(1e-20, 1e-2))
                   .clip_threshold(0.5)
                   .decay_rate(-0.5)
                   .beta1(0.8)
                   .weight_decay(0.01)
                   .scale_parameter(false)
                   .factorize_second_moment(false)
                   .seed(-5)
                   .quantization(true)
                   .quantization_block_size(256)
                   .quantization_min_size(100)
                   .projection(flora::ProjectionMode::reference)
                   .check_finite(false);
  EXPECT_TRUE(round_trip(saved) == saved);
  const auto precise = FloraOptions(1e-3).rank(4).projection_precision(flora::ProjectionPrecision::bfloat16);
  EXPECT_TRUE(round_trip(precise) == precise);

  // std::nullopt survives as well.
  const auto unset = FloraOptions().relative_step(true);
  const auto loaded = round_trip(unset);
  EXPECT_TRUE(loaded == unset);
  EXPECT_FALSE(loaded.lr().has_value());
}

TEST(FloraOptions, GetSetLrForSchedulers) {
  auto p = flora::testing::param({4, 4}, 1);
  flora::Flora opt({p}, FloraOptions(0.1));
  EXPECT_EQ(opt.param_groups()[0].options().get_lr(), 0.1);
  torch::optim::StepLR scheduler(opt, /*step_size=*/2, /*gamma=*/0.5);
  // torch's StepLR decays when its internal count (0, 1, 2, ...) reaches a
  // multiple of step_size: here at the 3rd and the 5th call.
  for (int i = 0; i < 5; ++i) {
    p.mutable_grad() = torch::ones_like(p);
    opt.step();
    scheduler.step();
  }
  EXPECT_DOUBLE_EQ(opt.param_groups()[0].options().get_lr(), 0.025);
}

TEST(FloraOptions, GetLrWithRelativeStepIsAnError) {
  const auto o = FloraOptions().relative_step(true);
  expect_error([&] { (void)o.get_lr(); }, "lr is not set");
  auto o2 = o;
  expect_error([&] { o2.set_lr(0.1); }, "relative_step=true");
}

TEST(FloraOptions, BadInputIsRejectedWithTheArgumentNamed) {
  const auto p = flora::testing::param({4, 4}, 1);
  auto make = [&](const FloraOptions& o) { return flora::Flora({p}, o); };
  expect_error([&] { make(FloraOptions(1e-3).relative_step(true)); }, "cannot combine a manual lr (0.001) with relative_step");
  expect_error([&] { make(FloraOptions(1e-3).warmup_init(true)); }, "warmup_init=true requires relative_step=true");
  expect_error([&] { make(FloraOptions()); }, "lr is not set");
  expect_error([&] { make(FloraOptions(0.0)); }, "lr must be positive and finite, got 0");
  expect_error([&] { make(FloraOptions(-1e-3)); }, "lr must be positive and finite, got -0.001");
  expect_error([&] { make(FloraOptions(1e-3).kappa(0)); }, "kappa must be positive, got 0");
  expect_error([&] { make(FloraOptions(1e-3).kappa(-3)); }, "kappa must be positive, got -3");
  expect_error([&] { make(FloraOptions(1e-3).clip_threshold(0)); }, "clip_threshold must be positive and finite, got 0");
  expect_error([&] { make(FloraOptions(1e-3).weight_decay(-0.1)); }, "weight_decay must be non-negative and finite, got -0.1");
  expect_error(
      [&] { make(FloraOptions(1e-3).eps(std::make_tuple(-1e-30, 1e-3))); }, "eps[0] (eps1) must be non-negative and finite, got -1e-30");
  expect_error(
      [&] { make(FloraOptions(1e-3).eps(std::make_tuple(1e-30, -1e-3))); }, "eps[1] (eps2) must be non-negative and finite, got -0.001");
  expect_error([&] { make(FloraOptions(1e-3).rank(0)); }, "rank must be positive when given, got 0");
  expect_error([&] { make(FloraOptions(1e-3).rank(-4)); }, "rank must be positive when given, got -4");
  expect_error([&] { make(FloraOptions(1e-3).beta1(1.0)); }, "beta1 must be in [0, 1) when given, got 1");
  expect_error([&] { make(FloraOptions(1e-3).decay_rate(0.5)); }, "decay_rate must be <= 0");
  expect_error([&] { make(FloraOptions(1e-3).quantization(true).quantization_block_size(0)); }, "quantization_block_size must be positive, got 0");
  expect_error([&] { make(FloraOptions(1e-3).quantization(true).quantization_min_size(-1)); }, "quantization_min_size must be non-negative (0: quantize every parameter), got -1");
}

TEST(FloraOptions, BadGroupOptionsNameTheGroup) {
  const auto a = flora::testing::param({4, 4}, 1);
  const auto b = flora::testing::param({4, 4}, 2);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<torch::Tensor>{a});
  groups.emplace_back(std::vector<torch::Tensor>{b}, std::make_unique<FloraOptions>(FloraOptions(1e-3).kappa(0)));
  expect_error([&] { flora::Flora opt(groups, FloraOptions(1e-3)); }, "param group 1: kappa must be positive");
}

TEST(FloraOptions, OptionsChangedAfterConstructionAreCheckedAtStep) {
  auto p = flora::testing::param({4, 4}, 1);
  flora::Flora opt({p}, FloraOptions(1e-3));
  static_cast<FloraOptions&>(opt.param_groups()[0].options()).clip_threshold(-1.0);
  p.mutable_grad() = torch::ones_like(p);
  const auto before = p.detach().clone();
  expect_error([&] { opt.step(); }, "param group 0: clip_threshold must be positive");
  EXPECT_TRUE(torch::equal(before, p.detach()));
}

} // namespace
