// Stochastic rounding of bfloat16 parameters (FloraOptions::
// stochastic_rounding): the rule itself (exact where there is nothing to
// round, unbiased, never into infinity), and the optimizer with it (small
// updates survive in expectation where round-to-nearest drops them,
// reproducible for a seed, bit for bit across a resume).

#include "test_util.h"

#include "kernels/stochastic_rounding.h"

#include <flora/flora.h>

#include <cmath>
#include <cstring>
#include <limits>

namespace {

using flora::Flora;
using flora::FloraOptions;
using flora::detail::bfloat16_bits_stochastic;

float bfloat16_value(uint16_t bits) {
  const uint32_t b = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}

float from_bits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}

TEST(StochasticRounding, RepresentableValuesStayExactlyWhateverTheDraw) {
  for (const float x : {0.0f, -0.0f, 1.0f, -2.5f, 3.0e38f, 1e-40f /* subnormal */, 0.0078125f}) {
    const float bf = bfloat16_value(static_cast<uint16_t>(flora::detail::float_bits(x) >> 16));
    for (const uint32_t draw : {0u, 1u, 0x7FFFu, 0xFFFFu, 0xDEADBEEFu}) {
      EXPECT_EQ(bfloat16_value(bfloat16_bits_stochastic(bf, draw)), bf) << x << " draw " << draw;
    }
  }
}

// Over all 2^16 values of the draw's low half, the mean is x exactly: the
// rounding is unbiased, not only on average over seeds.
TEST(StochasticRounding, TheMeanOverAllDrawsIsTheValue) {
  for (const uint32_t bits : {0x3F800001u, 0x3F80FFFFu, 0xBF8ABCDEu, 0x00012345u /* subnormal */, 0x7F7F8000u}) {
    const float x = from_bits(bits);
    double sum = 0.0;
    for (uint32_t d = 0; d < 65536; ++d) {
      sum += bfloat16_value(bfloat16_bits_stochastic(x, d));
    }
    const double mean = sum / 65536.0;
    if (bits == 0x7F7F8000u) {
      // Above the largest finite bfloat16: it never rounds into infinity.
      EXPECT_TRUE(std::isfinite(mean));
      continue;
    }
    EXPECT_EQ(mean, static_cast<double>(x)) << std::hex << bits;
  }
}

TEST(StochasticRounding, NonFiniteValuesRoundToNearest) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(bfloat16_value(bfloat16_bits_stochastic(inf, 0xFFFF)), inf);
  EXPECT_EQ(bfloat16_value(bfloat16_bits_stochastic(-inf, 0xFFFF)), -inf);
  EXPECT_TRUE(std::isnan(bfloat16_value(bfloat16_bits_stochastic(std::nanf(""), 0x1234))));
  EXPECT_EQ(bfloat16_value(bfloat16_bits_stochastic(3.4e38f, 0xFFFF)), 3.3895314e38f) << "not into infinity";
}

// Updates far smaller than a bfloat16 ulp: round-to-nearest never moves the
// parameters; stochastic rounding moves them as float32 training does, in
// expectation.
TEST(StochasticRounding, SmallUpdatesSurviveInExpectation) {
  const int64_t n = 1 << 16;
  const auto options = FloraOptions(2e-4).scale_parameter(true); // no momentum: every step the same size
  auto run = [&](torch::Dtype dtype, bool stochastic) {
    auto p = torch::ones({n}, torch::dtype(dtype)).requires_grad_(true);
    Flora opt({p}, FloraOptions(options).stochastic_rounding(stochastic));
    for (int s = 1; s <= 10; ++s) {
      p.mutable_grad() = torch::ones({n}, torch::dtype(dtype)); // the update is -lr per element
      opt.step();
    }
    return p.detach().to(torch::kDouble).mean().item<double>();
  };
  const double fp32 = run(torch::kFloat, false);
  const double nearest = run(torch::kBFloat16, false);
  const double stochastic = run(torch::kBFloat16, true);
  EXPECT_LT(fp32, 1.0 - 1e-3); // moved by about 10 lr
  EXPECT_EQ(nearest, 1.0) << "round-to-nearest loses every update (ulp 2^-7 below 1 is ~0.004)";
  // The mean of 65536 independent roundings: its standard deviation is
  // about 0.004 * 0.2 / 256 per step.
  EXPECT_NEAR(stochastic, fp32, 2e-5) << "fp32 " << fp32 << ", bf16 round-to-nearest " << nearest;
  std::cout << "[ rounding ] mean after 10 steps of -2e-4 from 1.0: float32 " << fp32 << ", bf16 nearest " << nearest
            << ", bf16 stochastic " << stochastic << std::endl;
}

std::vector<torch::Tensor> run_bf16(int64_t seed, int steps, const std::string& save_at = "", int save_step = -1) {
  std::vector<torch::Tensor> params = {
      flora::testing::param({16, 40}, 1, torch::kBFloat16), flora::testing::param({90, 8}, 2, torch::kBFloat16),
      flora::testing::param({33}, 3, torch::kBFloat16)};
  Flora opt(params, FloraOptions(1e-3).beta1(0.9).rank(4).kappa(3).seed(seed).stochastic_rounding(true));
  for (int s = 1; s <= steps; ++s) {
    for (size_t i = 0; i < params.size(); ++i) {
      params[i].mutable_grad() = flora::testing::randn_like_seeded(params[i], 100 * s + i);
    }
    opt.step();
    if (s == save_step) {
      torch::save(opt, save_at);
    }
  }
  return params;
}

TEST(StochasticRounding, ReproducibleForASeedAndDifferentForAnother) {
  const auto a = run_bf16(7, 6);
  const auto b = run_bf16(7, 6);
  const auto c = run_bf16(8, 6);
  bool differs = false;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(torch::equal(a[i], b[i])) << i;
    differs = differs || !torch::equal(a[i], c[i]);
  }
  EXPECT_TRUE(differs) << "another seed draws other bits";
}

TEST(StochasticRounding, AResumedRunContinuesBitForBit) {
  flora::testing::TempDir dir;
  const auto straight = run_bf16(5, 8, dir.file("opt.pt"), 4);
  // A fresh process: the parameters as they were at step 4, then load.
  auto at4 = run_bf16(5, 4);
  std::vector<torch::Tensor> params;
  for (const auto& p : at4) {
    params.push_back(p.detach().clone().requires_grad_(true));
  }
  Flora opt(params, FloraOptions(1e-3).beta1(0.9).rank(4).kappa(3).seed(5).stochastic_rounding(true));
  torch::load(opt, dir.file("opt.pt"));
  for (int s = 5; s <= 8; ++s) {
    for (size_t i = 0; i < params.size(); ++i) {
      params[i].mutable_grad() = flora::testing::randn_like_seeded(params[i], 100 * s + i);
    }
    opt.step();
  }
  for (size_t i = 0; i < params.size(); ++i) {
    EXPECT_TRUE(torch::equal(params[i], straight[i])) << i;
  }
}

TEST(StochasticRounding, Float16AndReferenceModeAreRefused) {
  auto half = flora::testing::param({4, 4}, 1, torch::kHalf);
  Flora opt({half}, FloraOptions(1e-3).stochastic_rounding(true));
  half.mutable_grad() = torch::ones_like(half);
  flora::testing::expect_error([&] { opt.step(); }, "is float16: stochastic_rounding(true) is for bfloat16 parameters");
  flora::testing::expect_error(
      [&] {
        Flora({flora::testing::param({4}, 2)},
              FloraOptions(1e-3).stochastic_rounding(true).projection(flora::ProjectionMode::reference));
      },
      "stochastic_rounding(true) needs the philox projection");
}

// ---- max_aspect_ratio: compressed momentum for tall and wide matrices

TEST(MaxAspectRatio, CompressesEmbeddingsOnTheirSmallSide) {
  auto embedding = flora::testing::param({100, 8}, 1);
  auto wide = flora::testing::param({6, 60}, 2);
  const auto base = FloraOptions(1e-2).beta1(0.9).rank(4);
  EXPECT_FALSE(flora::ParamLayout::of(embedding.sizes(), base).compressed) << "flora-opt's rule: aspect 12.5 > 4";
  const auto unlimited = FloraOptions(base).max_aspect_ratio(std::numeric_limits<double>::infinity());
  Flora opt({embedding, wide}, unlimited);
  embedding.mutable_grad() = torch::randn_like(embedding);
  wide.mutable_grad() = torch::randn_like(wide);
  opt.step();
  const auto* e = flora::testing::state_of<flora::FloraParamState>(opt, embedding);
  const auto* w = flora::testing::state_of<flora::FloraParamState>(opt, wide);
  EXPECT_EQ(e->exp_avg().sizes(), (std::vector<int64_t>{100, 4}));
  EXPECT_EQ(w->exp_avg().sizes(), (std::vector<int64_t>{4, 60}));
  // The estimate from shapes follows the same rule.
  EXPECT_EQ(flora::estimate_state_bytes({{100, 8}, {6, 60}}, unlimited), opt.state_bytes());
  // A limit between the two aspects compresses only the wide one.
  EXPECT_TRUE(flora::ParamLayout::of({6, 60}, FloraOptions(base).max_aspect_ratio(10)).compressed);
  EXPECT_FALSE(flora::ParamLayout::of({100, 8}, FloraOptions(base).max_aspect_ratio(10)).compressed);
  flora::testing::expect_error(
      [&] { Flora({embedding}, FloraOptions(base).max_aspect_ratio(0.5)); }, "max_aspect_ratio must be at least 1");
}

TEST(MaxAspectRatio, CheckpointsRoundTripAndAMismatchIsRefused) {
  flora::testing::TempDir dir;
  auto embedding = flora::testing::param({100, 8}, 1);
  const auto unlimited = FloraOptions(1e-2).beta1(0.9).rank(4).max_aspect_ratio(std::numeric_limits<double>::infinity());
  Flora opt({embedding}, unlimited);
  embedding.mutable_grad() = torch::randn_like(embedding);
  opt.step();
  torch::save(opt, dir.file("opt.pt"));
  Flora other({embedding}, FloraOptions(1.0));
  torch::load(other, dir.file("opt.pt"));
  EXPECT_EQ(
      static_cast<const FloraOptions&>(other.param_groups()[0].options()).max_aspect_ratio(),
      std::numeric_limits<double>::infinity());
  // The state was written under the unlimited rule: under flora-opt's rule
  // the momentum would be full-size, and the load says so.
  static_cast<FloraOptions&>(opt.param_groups()[0].options()).max_aspect_ratio(4.0);
  torch::save(opt, dir.file("mismatch.pt"));
  Flora target({embedding}, FloraOptions(1.0));
  flora::testing::expect_error(
      [&] { torch::load(target, dir.file("mismatch.pt")); }, "'exp_avg' has shape [100, 4], expected [100, 8]");
}

TEST(MaxAspectRatio, TheAccumulatorFollowsTheSameRule) {
  auto embedding = flora::testing::param({100, 8}, 1);
  auto square = flora::testing::param({8, 8}, 2);
  flora::CompressedAccumulator reference_rule({embedding, square}, flora::AccumulationOptions(2));
  EXPECT_TRUE(reference_rule.compressed(embedding)) << "flora-opt's accelerator compresses every matrix";
  flora::CompressedAccumulator limited({embedding, square}, flora::AccumulationOptions(2).max_aspect_ratio(4));
  EXPECT_FALSE(limited.compressed(embedding));
  EXPECT_TRUE(limited.compressed(square));
}

} // namespace
