// The compressed momentum's variants (FloraOptions::momentum_projection,
// momentum_rescale; options.h): each against a reference written here in
// plain ATen from the rule's definition, over steps that cross a
// resample, on both projection sides; `subspace` at full rank against the
// uncompressed momentum; 8-bit states, checkpoints, the option errors.
//
// The normalised gradient u_t of every step is read off a run without
// momentum (lr 1, no parameter scale, no clipping: p_{t-1} - p_t = u_t);
// u_t depends on the gradients alone, so the variant's own run, with the
// same settings, moves its parameter by exactly its update.

#include "test_util.h"

#include <flora/flora.h>

#include <torch/serialize.h>

namespace {

using flora::Flora;
using flora::FloraOptions;
using flora::FloraParamState;
using flora::MomentumProjection;
using flora::ProjectionMode;
using flora::testing::expect_error;
using flora::testing::param;
using flora::testing::randn_like_seeded;
using flora::testing::relative_error;

constexpr double kBeta1 = 0.9;

// lr 1, no scale, no clipping: the parameter moves by the update itself.
FloraOptions plain() {
  return FloraOptions(1.0).scale_parameter(false).clip_threshold(1e30);
}

torch::Tensor gradient(const torch::Tensor& p, int step) {
  return randn_like_seeded(p, 1000 + step);
}

// Each step's parameter change, -(p_t - p_{t-1}), for `options` on a copy of `initial`.
std::vector<torch::Tensor> updates(const torch::Tensor& initial, const FloraOptions& options, int steps) {
  auto p = initial.detach().clone().requires_grad_(true);
  Flora opt({p}, options);
  std::vector<torch::Tensor> out;
  for (int t = 1; t <= steps; ++t) {
    const auto before = p.detach().clone();
    p.mutable_grad() = gradient(p, t);
    opt.step();
    out.push_back((before - p.detach()).to(torch::kDouble));
  }
  return out;
}

// The variant's projection of a (rows, cols) parameter for `seed`, in
// double: the Gaussian P (rows < cols: (r, rows), else (cols, r)), made
// orthonormal along its long side (QR, columns signed by R's diagonal)
// and scaled by sqrt(d / r) (orthonormal) or 1 (subspace).
torch::Tensor projection(int64_t seed, int64_t rows, int64_t cols, int64_t rank, MomentumProjection kind) {
  flora::Projection proj(
      seed, rows, cols, rank, ProjectionMode::philox, flora::Projection::Seeding::split, torch::kFloat);
  auto p = proj.matrix().to(torch::kDouble);
  if (kind == MomentumProjection::gaussian) {
    return p;
  }
  const bool left = rows < cols;
  auto a = left ? p.t() : p; // (d, r)
  auto [q, r] = torch::linalg_qr(a);
  q = q * torch::sign(r.diagonal()).unsqueeze(0);
  const double d = static_cast<double>(a.size(0));
  if (kind == MomentumProjection::orthonormal) {
    q = q * std::sqrt(d / static_cast<double>(rank));
  }
  return left ? q.t().contiguous() : q.contiguous();
}

// The rule of options.h, step by step, from the normalised gradients `u`.
std::vector<torch::Tensor> expected_updates(
    const std::vector<torch::Tensor>& u, int64_t rows, int64_t cols, int64_t rank, int64_t kappa,
    MomentumProjection kind, bool rescale) {
  const bool left = rows < cols;
  auto down = [&](const torch::Tensor& p, const torch::Tensor& x) { return left ? p.matmul(x) : x.matmul(p); };
  auto up = [&](const torch::Tensor& p, const torch::Tensor& c) { return left ? p.t().matmul(c) : c.matmul(p.t()); };
  int64_t seed = 1; // FloraOptions::seed 0 + parameter index 1
  auto p = projection(seed, rows, cols, rank, kind);
  auto m = torch::zeros(left ? std::vector<int64_t>{rank, cols} : std::vector<int64_t>{rows, rank}, torch::kDouble);
  std::vector<torch::Tensor> out;
  for (size_t i = 0; i < u.size(); ++i) {
    const int64_t t = static_cast<int64_t>(i) + 1;
    if (kind == MomentumProjection::subspace) {
      out.push_back(u[i] + kBeta1 * up(p, m - down(p, u[i])));
    } else {
      auto mixed = m;
      if (rescale) {
        const double up_norm = up(p, m).norm().item<double>();
        mixed = up_norm > 0 ? m * (m.norm().item<double>() / up_norm) : m;
      }
      out.push_back((1 - kBeta1) * u[i] + kBeta1 * up(p, mixed));
    }
    if (t % kappa == 0) { // resample, the momentum carried into the new basis
      seed = flora::next_seed(seed, ProjectionMode::philox);
      const auto q = projection(seed, rows, cols, rank, kind);
      m = down(q, up(p, m));
      p = q;
    }
    m = kBeta1 * m + (1 - kBeta1) * down(p, u[i]);
  }
  return out;
}

struct Case {
  const char* name;
  MomentumProjection kind;
  bool rescale;
};

class Variant : public ::testing::TestWithParam<Case> {};

TEST_P(Variant, FollowsItsRuleAcrossResamplesOnBothSides) {
  const auto c = GetParam();
  constexpr int steps = 7;
  constexpr int64_t rank = 5, kappa = 3;
  for (const auto& shape : {std::vector<int64_t>{12, 20}, std::vector<int64_t>{20, 12}}) {
    const auto initial = param(shape, 7);
    const auto u = updates(initial, plain(), steps);
    const auto actual = updates(
        initial, plain().beta1(kBeta1).rank(rank).kappa(kappa).momentum_projection(c.kind).momentum_rescale(c.rescale),
        steps);
    const auto expected = expected_updates(u, shape[0], shape[1], rank, kappa, c.kind, c.rescale);
    for (int t = 0; t < steps; ++t) {
      EXPECT_LT(relative_error(actual[t], expected[t]), 2e-4)
          << c.name << " " << shape[0] << "x" << shape[1] << " step " << t + 1;
    }
    // A variant is not the default rule (which this reference reproduces too).
    if (c.kind != MomentumProjection::gaussian || c.rescale) {
      const auto gaussian = expected_updates(u, shape[0], shape[1], rank, kappa, MomentumProjection::gaussian, false);
      EXPECT_GT(relative_error(actual[steps - 1], gaussian[steps - 1]), 1e-2) << c.name;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Rules,
    Variant,
    ::testing::Values(
        Case{"gaussian", MomentumProjection::gaussian, false},
        Case{"orthonormal", MomentumProjection::orthonormal, false},
        Case{"subspace", MomentumProjection::subspace, false},
        Case{"gaussian_rescaled", MomentumProjection::gaussian, true},
        Case{"orthonormal_rescaled", MomentumProjection::orthonormal, true}),
    [](const auto& info) { return std::string(info.param.name); });

// The reference above reproduces the default rule (so it is a check of
// the variants, not a second implementation that agrees with nothing).
TEST(Variant, TheReferenceReproducesTheDefaultRule) {
  const auto initial = param({12, 20}, 7);
  const auto u = updates(initial, plain(), 7);
  const auto actual = updates(initial, plain().beta1(kBeta1).rank(5).kappa(3), 7);
  const auto expected = expected_updates(u, 12, 20, 5, 3, MomentumProjection::gaussian, false);
  for (int t = 0; t < 7; ++t) {
    EXPECT_LT(relative_error(actual[t], expected[t]), 2e-4) << "step " << t + 1;
  }
}

// At r = d the subspace is the whole space: the momentum is exactly the
// uncompressed one, resamples included.
TEST(Variant, SubspaceAtFullRankIsTheFullMomentum) {
  for (const auto& shape : {std::vector<int64_t>{8, 24}, std::vector<int64_t>{24, 8}}) {
    const auto initial = param(shape, 3);
    const auto full = updates(initial, plain().beta1(kBeta1), 9);
    const auto subspace = updates(
        initial, plain().beta1(kBeta1).rank(8).kappa(4).momentum_projection(MomentumProjection::subspace), 9);
    for (int t = 0; t < 9; ++t) {
      EXPECT_LT(relative_error(subspace[t], full[t]), 1e-5) << shape[0] << "x" << shape[1] << " step " << t + 1;
    }
  }
}

// The rescaled momentum's norm is M's: b1 ||M|| in the update, whatever the projection's inflation.
TEST(Variant, RescaledOrthonormalMomentumIsShrunkBySqrtROverD) {
  // With orthonormal rows times sqrt(d / r), ||up(M)|| = sqrt(d / r) ||M||
  // exactly: rescaling is the constant sqrt(r / d), so the rescaled rule
  // is the unrescaled one with b1 up(M) scaled by it.
  const auto initial = param({16, 32}, 9);
  const auto u = updates(initial, plain(), 4);
  const auto base = plain().beta1(kBeta1).rank(4).kappa(100).momentum_projection(MomentumProjection::orthonormal);
  const auto plain_rule = updates(initial, base, 4);
  const auto rescaled = updates(initial, FloraOptions(base).momentum_rescale(true), 4);
  for (int t = 1; t < 4; ++t) { // step 1 has no momentum yet
    const auto momentum_part = plain_rule[t] - (1 - kBeta1) * u[t];
    const auto expected = (1 - kBeta1) * u[t] + momentum_part * std::sqrt(4.0 / 16.0);
    EXPECT_LT(relative_error(rescaled[t], expected), 2e-4) << "step " << t + 1;
  }
}

// 8-bit states: each variant stays close to its float32 run (the momentum
// is stored in the same (r, n) / (m, r) layout and quantized the same way).
TEST(Variant, EightBitStatesTrackFloat32) {
  for (const auto kind : {MomentumProjection::orthonormal, MomentumProjection::subspace}) {
    const auto initial = param({24, 40}, 11);
    const auto options = FloraOptions(1e-2).beta1(kBeta1).rank(8).kappa(5).momentum_projection(kind);
    auto p32 = initial.detach().clone().requires_grad_(true);
    auto p8 = initial.detach().clone().requires_grad_(true);
    Flora opt32({p32}, options);
    Flora opt8({p8}, FloraOptions(options).quantization(true).quantization_min_size(0).quantization_block_size(64));
    for (int t = 1; t <= 20; ++t) {
      p32.mutable_grad() = gradient(p32, t);
      p8.mutable_grad() = gradient(p8, t);
      opt32.step();
      opt8.step();
    }
    const auto* state = flora::testing::state_of<FloraParamState>(opt8, p8);
    ASSERT_NE(state, nullptr);
    EXPECT_EQ(state->exp_avg().scalar_type(), torch::kUInt8);
    EXPECT_EQ(state->exp_avg().numel(), 8 * 40);
    const auto moved32 = (p32 - initial).detach();
    EXPECT_LT(relative_error(p8 - initial, moved32), 0.05) << flora::to_string(kind);
  }
}

// Save, load into a fresh optimizer, continue: the same run bit for bit,
// with the variant options restored from the checkpoint.
TEST(Variant, CheckpointsResumeBitForBit) {
  flora::testing::TempDir dir;
  auto make = [](std::vector<torch::Tensor> params) {
    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(std::vector<torch::Tensor>{params[0], params[1]});
    groups.emplace_back(
        std::vector<torch::Tensor>{params[2]},
        std::make_unique<FloraOptions>(FloraOptions(1e-2).beta1(0.8).rank(3).kappa(2).momentum_projection(
            MomentumProjection::orthonormal).momentum_rescale(true).quantization(true).quantization_min_size(0).quantization_block_size(16)));
    return std::make_unique<Flora>(
        groups, FloraOptions(1e-2).beta1(kBeta1).rank(4).kappa(3).momentum_projection(MomentumProjection::subspace));
  };
  auto fresh = [] { return std::vector<torch::Tensor>{param({8, 16}, 1), param({24, 8}, 2), param({10, 12}, 3)}; };
  auto run = [](Flora& opt, const std::vector<torch::Tensor>& ps, int from, int to) {
    for (int t = from; t <= to; ++t) {
      for (size_t i = 0; i < ps.size(); ++i) {
        ps[i].mutable_grad() = randn_like_seeded(ps[i], 100 * t + i);
      }
      opt.step();
    }
  };
  auto straight_params = fresh();
  auto straight = make(straight_params);
  run(*straight, straight_params, 1, 9);

  auto first_params = fresh();
  {
    auto opt = make(first_params);
    run(*opt, first_params, 1, 4);
    torch::save(*opt, dir.file("opt.pt"));
  }
  auto second_params = fresh();
  {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < second_params.size(); ++i) {
      second_params[i].copy_(first_params[i]);
    }
  }
  // Loading restores the groups' options, variants included.
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<torch::Tensor>{second_params[0], second_params[1]});
  groups.emplace_back(std::vector<torch::Tensor>{second_params[2]}, std::make_unique<FloraOptions>(FloraOptions(1e-2)));
  Flora resumed(groups, FloraOptions(1e-2));
  torch::load(resumed, dir.file("opt.pt"));
  const auto& o0 = static_cast<const FloraOptions&>(resumed.param_groups()[0].options());
  const auto& o1 = static_cast<const FloraOptions&>(resumed.param_groups()[1].options());
  EXPECT_EQ(o0.momentum_projection(), MomentumProjection::subspace);
  EXPECT_FALSE(o0.momentum_rescale());
  EXPECT_EQ(o1.momentum_projection(), MomentumProjection::orthonormal);
  EXPECT_TRUE(o1.momentum_rescale());
  run(resumed, second_params, 5, 9);
  for (size_t i = 0; i < second_params.size(); ++i) {
    EXPECT_TRUE(torch::equal(second_params[i], straight_params[i])) << "param " << i;
  }
}

TEST(Variant, CombinationsThatCannotWorkAreRefused) {
  auto p = param({8, 8}, 1);
  expect_error(
      [&] {
        Flora({p}, FloraOptions(1e-2).beta1(0.9).rank(4).momentum_projection(MomentumProjection::subspace).projection(
                       ProjectionMode::reference));
      },
      "need the philox projection");
  expect_error(
      [&] {
        Flora({p}, FloraOptions(1e-2).beta1(0.9).rank(4).momentum_rescale(true).capturable(true).check_finite(false));
      },
      "are not capturable");
  expect_error(
      [&] {
        Flora({p}, FloraOptions(1e-2).momentum_projection(MomentumProjection::subspace).momentum_rescale(true));
      },
      "does nothing with momentum_projection(subspace)");
  // Refused again at step() when changed after construction.
  Flora opt({p}, FloraOptions(1e-2).beta1(0.9).rank(4));
  static_cast<FloraOptions&>(opt.param_groups()[0].options()).momentum_projection(MomentumProjection::orthonormal).projection(
      ProjectionMode::reference);
  p.mutable_grad() = torch::ones_like(p);
  const auto before = p.detach().clone();
  expect_error([&] { opt.step(); }, "need the philox projection");
  EXPECT_TRUE(torch::equal(p, before));
}

TEST(Variant, NamesAndDefaults) {
  EXPECT_EQ(FloraOptions().momentum_projection(), MomentumProjection::gaussian);
  EXPECT_FALSE(FloraOptions().momentum_rescale());
  EXPECT_STREQ(flora::to_string(MomentumProjection::gaussian), "gaussian");
  EXPECT_STREQ(flora::to_string(MomentumProjection::orthonormal), "orthonormal");
  EXPECT_STREQ(flora::to_string(MomentumProjection::subspace), "subspace");
  EXPECT_FALSE(FloraOptions(1.0) == FloraOptions(1.0).momentum_projection(MomentumProjection::subspace));
  EXPECT_FALSE(FloraOptions(1.0) == FloraOptions(1.0).momentum_rescale(true));
}

} // namespace
