// The projection generators: Philox known answers, the matrix layout, the
// statistics of the matrices, the seed arithmetic of both modes.

#include "test_util.h"

#include "kernels/philox.h"

#include <flora/flora.h>

#include <cmath>

namespace {

using flora::Projection;
using flora::ProjectionMode;

// Known-answer vectors of Philox4x32-10 published with Random123
// (kat_vectors: "philox4x32 10 <ctr> <key> <expected>").
TEST(Philox, KnownAnswers) {
  using flora::detail::philox4x32_10;
  struct Case {
    flora::detail::PhiloxBlock ctr;
    uint32_t k0, k1;
    flora::detail::PhiloxBlock expected;
  };
  const Case cases[] = {
      {{0, 0, 0, 0}, 0, 0, {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}},
      {{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
       0xffffffffu,
       0xffffffffu,
       {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}},
      {{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
       0xa4093822u,
       0x299f31d0u,
       {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}},
  };
  for (const auto& c : cases) {
    const auto r = philox4x32_10(c.ctr, c.k0, c.k1);
    EXPECT_EQ(r.x, c.expected.x);
    EXPECT_EQ(r.y, c.expected.y);
    EXPECT_EQ(r.z, c.expected.z);
    EXPECT_EQ(r.w, c.expected.w);
  }
}

TEST(Philox, BitsOpFollowsTheDocumentedLayout) {
  const int64_t seed = 0x1234567890abcdefLL;
  auto bits = torch::empty({5, 11}, torch::kInt);
  flora::ops::philox_bits_(bits, seed);
  for (int64_t i = 0; i < 5; ++i) {
    for (int64_t j = 0; j < 11; ++j) {
      const auto d = flora::detail::philox_draws(static_cast<uint64_t>(seed), i, j / 4);
      const uint32_t lanes[4] = {d.x, d.y, d.z, d.w};
      EXPECT_EQ(static_cast<uint32_t>(bits[i][j].item<int32_t>()), lanes[j % 4]) << i << "," << j;
    }
  }
}

TEST(Philox, NormalOpIsBoxMullerOfTheBits) {
  const int64_t seed = 99;
  auto normals = torch::empty({3, 9});
  flora::ops::philox_normal_(normals, seed, 1.0);
  for (int64_t i = 0; i < 3; ++i) {
    for (int64_t j = 0; j < 9; ++j) {
      float n[4];
      flora::detail::philox_normal4(seed, i, j / 4, n);
      EXPECT_EQ(normals[i][j].item<float>(), n[j % 4]);
    }
  }
  // Rows are independent streams: a wider matrix starts with the same columns.
  auto wider = torch::empty({3, 20});
  flora::ops::philox_normal_(wider, seed, 1.0);
  EXPECT_TRUE(torch::equal(wider.narrow(1, 0, 9), normals));
}

TEST(Philox, NormalOpScalesCastsAndFillsStridedTensors) {
  auto reference = torch::empty({6, 7});
  flora::ops::philox_normal_(reference, 5, 1.0);
  auto scaled = torch::empty({6, 7});
  flora::ops::philox_normal_(scaled, 5, 0.25);
  EXPECT_TRUE(torch::allclose(scaled, reference * 0.25, 0, 1e-7));
  for (auto dtype : {torch::kHalf, torch::kBFloat16}) {
    auto typed = torch::empty({6, 7}, dtype);
    flora::ops::philox_normal_(typed, 5, 1.0);
    EXPECT_TRUE(torch::equal(typed, reference.to(dtype))) << dtype;
  }
  auto transposed = torch::empty({7, 6}).t(); // (6, 7), not contiguous
  flora::ops::philox_normal_(transposed, 5, 1.0);
  EXPECT_TRUE(torch::equal(transposed, reference));
}

TEST(Philox, BadOutputsAreRejected) {
  auto three_d = torch::empty({2, 3, 4});
  flora::testing::expect_error([&] { flora::ops::philox_normal_(three_d, 1, 1.0); }, "self must be 2-d, got shape [2, 3, 4]");
  auto ints = torch::empty({2, 3}, torch::kInt);
  flora::testing::expect_error(
      [&] { flora::ops::philox_normal_(ints, 1, 1.0); }, "self has dtype Int, expected one of Float, Half, BFloat16");
  auto doubles = torch::empty({2, 3}, torch::kDouble);
  flora::testing::expect_error([&] { flora::ops::philox_normal_(doubles, 1, 1.0); }, "self has dtype Double");
  auto floats = torch::empty({2, 3});
  flora::testing::expect_error([&] { flora::ops::philox_bits_(floats, 1); }, "self has dtype Float, expected Int");
}

TEST(Philox, StandardNormalStatistics) {
  const auto m = flora::gaussian_matrix(2024, 1000, 1000, ProjectionMode::philox).to(torch::kDouble);
  const double n = 1e6;
  const double mean = m.mean().item<double>();
  const double var = m.var().item<double>();
  // Standard errors: 1/sqrt(n) = 1e-3 for the mean, sqrt(2/n) = 1.4e-3 for the
  // variance; allow 5 of them.
  EXPECT_NEAR(mean, 0.0, 5 / std::sqrt(n));
  EXPECT_NEAR(var, 1.0, 5 * std::sqrt(2 / n));
  const auto abs = m.abs();
  EXPECT_NEAR((abs < 1).to(torch::kDouble).mean().item<double>(), 0.682689, 0.0025);
  EXPECT_NEAR((abs < 2).to(torch::kDouble).mean().item<double>(), 0.954500, 0.0015);
  EXPECT_NEAR((abs < 3).to(torch::kDouble).mean().item<double>(), 0.997300, 0.0005);
  EXPECT_NEAR((m.pow(4)).mean().item<double>(), 3.0, 0.05); // kurtosis; std err 0.0096
  EXPECT_TRUE(torch::isfinite(m).all().item<bool>());
  // Neighbouring elements (same block, adjacent blocks, adjacent rows) are
  // uncorrelated.
  const auto a = m.narrow(1, 0, 999);
  const auto b = m.narrow(1, 1, 999);
  EXPECT_NEAR((a * b).mean().item<double>(), 0.0, 5e-3);
  const auto r0 = m.narrow(0, 0, 999);
  const auto r1 = m.narrow(0, 1, 999);
  EXPECT_NEAR((r0 * r1).mean().item<double>(), 0.0, 5e-3);
}

TEST(Seeds, PhiloxSeedHashIsSplitMix64) {
  // SplitMix64's first output for state 0 is 0xE220A8397B1DCDAF (Vigna's
  // reference implementation); next_seed(s) = mix(s ^ 0x6A09E667F3BCC908).
  EXPECT_EQ(
      static_cast<uint64_t>(flora::next_seed(static_cast<int64_t>(0x6A09E667F3BCC908ull), ProjectionMode::philox)),
      0xE220A8397B1DCDAFull);
  const auto [l, r] = flora::split_seed(7, ProjectionMode::philox);
  EXPECT_NE(l, r);
  EXPECT_NE(l, flora::next_seed(7, ProjectionMode::philox));
  EXPECT_EQ(flora::split_seed(7, ProjectionMode::philox), flora::split_seed(7, ProjectionMode::philox));
}

TEST(Seeds, ReferenceModeMatchesTorchGenerator) {
  // Values printed by Python torch 2.11:
  //   torch.randint(0, 2**63 - 1, (15,), generator=torch.Generator().manual_seed(5))[-1]
  EXPECT_EQ(flora::next_seed(5, ProjectionMode::reference), 7008601228353732127LL);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
  const auto draws = torch::randint(0, std::numeric_limits<int64_t>::max(), {2}, gen, torch::kLong);
  const auto [l, r] = flora::split_seed(11, ProjectionMode::reference);
  EXPECT_EQ(l, draws[0].item<int64_t>());
  EXPECT_EQ(r, draws[1].item<int64_t>());
  auto gen2 = at::make_generator<at::CPUGeneratorImpl>(123);
  EXPECT_TRUE(torch::equal(
      flora::gaussian_matrix(123, 3, 20, ProjectionMode::reference), torch::randn({3, 20}, gen2)));
}

TEST(Projection, SameSeedSameMatrixDifferentSeedDifferentMatrix) {
  for (auto mode : {ProjectionMode::philox, ProjectionMode::reference}) {
    const Projection a(1, 6, 10, 4, mode, Projection::Seeding::split, {});
    const Projection b(1, 6, 10, 4, mode, Projection::Seeding::split, {});
    const Projection c(2, 6, 10, 4, mode, Projection::Seeding::split, {});
    EXPECT_TRUE(torch::equal(a.matrix(), b.matrix()));
    EXPECT_FALSE(torch::allclose(a.matrix(), c.matrix()));
  }
}

TEST(Projection, ShapesFollowTheSmallerSide) {
  const auto opts = torch::TensorOptions();
  const Projection left(1, 6, 10, 4, ProjectionMode::philox, Projection::Seeding::split, opts);
  EXPECT_TRUE(left.left());
  EXPECT_EQ(left.matrix().sizes(), (std::vector<int64_t>{4, 6}));
  EXPECT_EQ(left.compressed_shape(), (std::vector<int64_t>{4, 10}));
  const Projection right(1, 10, 6, 4, ProjectionMode::philox, Projection::Seeding::split, opts);
  EXPECT_FALSE(right.left());
  EXPECT_EQ(right.matrix().sizes(), (std::vector<int64_t>{6, 4}));
  EXPECT_EQ(right.compressed_shape(), (std::vector<int64_t>{10, 4}));
  const Projection square(1, 8, 8, 4, ProjectionMode::philox, Projection::Seeding::split, opts);
  EXPECT_FALSE(square.left());

  const auto x = torch::randn({6, 10});
  EXPECT_EQ(left.down(x).sizes(), (std::vector<int64_t>{4, 10}));
  EXPECT_EQ(left.up(left.down(x)).sizes(), x.sizes());
  const auto y = torch::randn({10, 6});
  EXPECT_EQ(right.down(y).sizes(), (std::vector<int64_t>{10, 4}));
  EXPECT_EQ(right.up(right.down(y)).sizes(), y.sizes());
}

TEST(Projection, FusedFormsEqualTheirDefinitions) {
  for (int64_t rows : {6, 10}) {
    const int64_t cols = 16 - rows;
    const Projection p(3, rows, cols, 4, ProjectionMode::philox, Projection::Seeding::split, {});
    const auto x = torch::randn({rows, cols});
    const auto c = torch::randn(p.compressed_shape());
    EXPECT_TRUE(torch::allclose(p.up_add(x, c, 0.1, 0.9), x * 0.1 + p.up(c) * 0.9, 1e-5, 1e-6));
    auto c2 = c.clone();
    p.down_add_(c2, x, 0.9, 0.1);
    EXPECT_TRUE(torch::allclose(c2, c * 0.9 + p.down(x) * 0.1, 1e-5, 1e-6));
  }
}

// E[P^T P] = I (left) and E[P P^T] = I (right): averaged over many seeds the
// Gram matrix approaches the identity at the rate the variance predicts.
TEST(Projection, GramMatrixIsIdentityInExpectation) {
  const int64_t m = 8, r = 16, seeds = 400;
  for (bool left : {true, false}) {
    auto sum = torch::zeros({m, m}, torch::kDouble);
    for (int64_t s = 0; s < seeds; ++s) {
      const Projection p = left ? Projection(s, m, 64, r, ProjectionMode::philox, Projection::Seeding::direct, {})
                                : Projection(s, 64, m, r, ProjectionMode::philox, Projection::Seeding::direct, {});
      const auto P = p.matrix().to(torch::kDouble);
      sum += left ? P.t().mm(P) : P.mm(P.t());
    }
    const auto mean = sum / seeds;
    // Each entry has variance <= 2/r per draw: std of the mean <= sqrt(2/(r*seeds)) = 0.018.
    EXPECT_LT((mean - torch::eye(m, torch::kDouble)).abs().max().item<double>(), 6 * std::sqrt(2.0 / (r * seeds)));
  }
}

// up(down(X)) is unbiased: its average over seeds converges to X, with an
// error that falls like 1/sqrt(number of seeds) (a bias would not fall).
TEST(Projection, RoundTripIsUnbiased) {
  for (auto mode : {ProjectionMode::philox, ProjectionMode::reference}) {
    for (int64_t rows : {6, 12}) {
      const int64_t cols = 18 - rows;
      auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
      const auto x = torch::randn({rows, cols}, gen).to(torch::kDouble);
      auto error_after = [&](int64_t n) {
        auto sum = torch::zeros_like(x);
        for (int64_t s = 0; s < n; ++s) {
          const Projection p(1000 + s, rows, cols, 3, mode, Projection::Seeding::split, {});
          sum += p.up(p.down(x.to(torch::kFloat))).to(torch::kDouble);
        }
        return ((sum / n) - x).norm().item<double>() / x.norm().item<double>();
      };
      const double few = error_after(25);
      const double many = error_after(1600); // 64x the samples: 8x smaller expected error
      EXPECT_LT(many, 0.1) << "mode " << static_cast<int>(mode) << " rows " << rows;
      EXPECT_LT(many, few / 3) << "mode " << static_cast<int>(mode) << " rows " << rows;
    }
  }
}

} // namespace
