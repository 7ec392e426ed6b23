// flora::Flora as a torch::optim::Optimizer: constructors, the step's
// semantics for every parameter shape, state layout, seeds, errors.

#include "test_util.h"

#include <flora/flora.h>

namespace {

using flora::Flora;
using flora::FloraOptions;
using flora::FloraParamState;
using flora::ProjectionMode;
using flora::testing::expect_error;
using flora::testing::param;
using flora::testing::randn_like_seeded;

const FloraParamState& state_of(const Flora& opt, const torch::Tensor& p) {
  const auto* state = flora::testing::state_of<FloraParamState>(opt, p);
  TORCH_CHECK(state != nullptr, "the parameter has no state");
  return *state;
}

bool has_state(const Flora& opt, const torch::Tensor& p) {
  return flora::testing::state_of<FloraParamState>(opt, p) != nullptr;
}

void set_grads(const std::vector<torch::Tensor>& params, uint64_t seed) {
  for (size_t i = 0; i < params.size(); ++i) {
    params[i].mutable_grad() = randn_like_seeded(params[i], seed * 1000 + i);
  }
}

TEST(Flora, StepReturnsTheClosureLossAndZeroGradClears) {
  auto w = param({3, 5}, 1);
  Flora opt({w}, FloraOptions(1e-2));
  const auto x = torch::randn({4, 3});
  auto loss = opt.step([&] {
    opt.zero_grad();
    auto l = x.mm(w).pow(2).sum();
    l.backward();
    return l;
  });
  ASSERT_TRUE(loss.defined());
  EXPECT_TRUE(w.grad().defined());
  opt.zero_grad();
  EXPECT_FALSE(w.grad().defined());
  EXPECT_FALSE(opt.step().defined());
}

TEST(Flora, AllParameterRanksWorkAndOnly2dIsFactored) {
  std::vector<torch::Tensor> params = {
      param({}, 1), param({7}, 2), param({6, 10}, 3), param({2, 3, 4}, 4), param({2, 2, 3, 3}, 5)};
  Flora opt(params, FloraOptions(1e-2).beta1(0.9).rank(2));
  const auto before = params[0].detach().clone();
  for (int s = 0; s < 3; ++s) {
    set_grads(params, s);
    opt.step();
  }
  for (const auto& p : params) {
    const auto& st = state_of(opt, p);
    EXPECT_EQ(st.step(), 3);
    EXPECT_TRUE(torch::isfinite(p).all().item<bool>());
    const bool factored = p.dim() == 2;
    EXPECT_EQ(st.exp_avg_sq_row().defined(), factored);
    EXPECT_EQ(st.exp_avg_sq_col().defined(), factored);
    EXPECT_EQ(st.exp_avg_sq().defined(), !factored);
    EXPECT_TRUE(st.rms().defined());
    EXPECT_EQ(st.rms().dim(), 0);
  }
  EXPECT_FALSE(torch::equal(before, params[0].detach()));
  EXPECT_EQ(state_of(opt, params[2]).exp_avg().sizes(), (std::vector<int64_t>{2, 10}));
  EXPECT_EQ(state_of(opt, params[3]).exp_avg().sizes(), params[3].sizes());
}

TEST(Flora, ParametersWithoutGradientAreSkipped) {
  auto a = param({4, 4}, 1);
  auto b = param({4, 4}, 2);
  Flora opt({a, b}, FloraOptions(1e-2));
  a.mutable_grad() = torch::ones_like(a);
  const auto b_before = b.detach().clone();
  opt.step();
  EXPECT_TRUE(has_state(opt, a));
  EXPECT_FALSE(has_state(opt, b));
  EXPECT_TRUE(torch::equal(b.detach(), b_before));
}

TEST(Flora, CompressionRuleMatchesFloraOpt) {
  // rank 4: (8, 16) compressed (right? no: 8 < 16 -> left), (32, 8) aspect 4
  // compressed, (40, 8) aspect 5 excluded (embeddings), (3, 16) smaller than
  // the rank, (8, 8) square -> right.
  auto left = param({8, 16}, 1);
  auto aspect4 = param({32, 8}, 2);
  auto embedding = param({40, 8}, 3);
  auto thin = param({3, 16}, 4);
  auto square = param({8, 8}, 5);
  std::vector<torch::Tensor> all = {left, aspect4, embedding, thin, square};
  Flora opt(all, FloraOptions(1e-2).beta1(0.9).rank(4));
  set_grads(all, 1);
  opt.step();
  EXPECT_EQ(state_of(opt, left).exp_avg().sizes(), (std::vector<int64_t>{4, 16}));
  EXPECT_EQ(state_of(opt, aspect4).exp_avg().sizes(), (std::vector<int64_t>{32, 4}));
  EXPECT_EQ(state_of(opt, embedding).exp_avg().sizes(), embedding.sizes());
  EXPECT_EQ(state_of(opt, thin).exp_avg().sizes(), thin.sizes());
  EXPECT_EQ(state_of(opt, square).exp_avg().sizes(), (std::vector<int64_t>{8, 4}));

  const auto layout = flora::ParamLayout::of({8, 16}, FloraOptions(1e-2).beta1(0.9).rank(4).factorize_second_moment(false));
  EXPECT_FALSE(layout.factored);
  EXPECT_FALSE(layout.compressed);
  EXPECT_FALSE(flora::ParamLayout::of({8, 16}, FloraOptions(1e-2).rank(4)).momentum);
  EXPECT_FALSE(flora::ParamLayout::of({8, 16}, FloraOptions(1e-2).rank(4).beta1(0.0)).momentum);
}

TEST(Flora, SeedsAreBasePlusPositionAndAdvanceEveryKappaSteps) {
  auto a = param({8, 8}, 1);
  auto frozen = param({8, 8}, 2).requires_grad_(false);
  auto b = param({8, 8}, 3);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<torch::Tensor>{a, frozen});
  groups.emplace_back(std::vector<torch::Tensor>{b});
  Flora opt(groups, FloraOptions(1e-2).beta1(0.9).rank(2).kappa(3).seed(40));
  for (int step = 1; step <= 7; ++step) {
    a.mutable_grad() = randn_like_seeded(a, step);
    b.mutable_grad() = randn_like_seeded(b, 100 + step);
    opt.step();
    int64_t expected_a = 41;
    int64_t expected_b = 43; // the frozen parameter still counts
    for (int resample = 3; resample <= step; resample += 3) {
      expected_a = flora::next_seed(expected_a, ProjectionMode::philox);
      expected_b = flora::next_seed(expected_b, ProjectionMode::philox);
    }
    EXPECT_EQ(state_of(opt, a).seed(), expected_a) << "step " << step;
    EXPECT_EQ(state_of(opt, b).seed(), expected_b) << "step " << step;
  }
  EXPECT_FALSE(has_state(opt, frozen));
}

TEST(Flora, HalfPrecisionParametersKeepTheirDtypeWithFloat32State) {
  for (auto dtype : {torch::kHalf, torch::kBFloat16}) {
    auto p = param({8, 12}, 1, dtype);
    auto ref = param({8, 12}, 1, torch::kFloat);
    ref.detach().copy_(p.detach().to(torch::kFloat));
    Flora opt({p}, FloraOptions(1e-2).beta1(0.9).rank(4).kappa(2));
    Flora opt_ref({ref}, FloraOptions(1e-2).beta1(0.9).rank(4).kappa(2));
    for (int s = 0; s < 5; ++s) {
      const auto g = randn_like_seeded(ref, s);
      p.mutable_grad() = g.to(dtype);
      ref.mutable_grad() = g.to(dtype).to(torch::kFloat);
      opt.step();
      opt_ref.step();
      ref.detach().copy_(ref.detach().to(dtype).to(torch::kFloat)); // same rounding as p
    }
    EXPECT_EQ(p.scalar_type(), dtype);
    const auto& st = state_of(opt, p);
    EXPECT_EQ(st.exp_avg().scalar_type(), torch::kFloat);
    EXPECT_EQ(st.exp_avg_sq_row().scalar_type(), torch::kFloat);
    // Same arithmetic in float32: only the rounding to the parameter's dtype differs.
    EXPECT_TRUE(torch::allclose(p.detach().to(torch::kFloat), ref.detach(), 1e-2, 1e-2)) << dtype;
  }
}

TEST(Flora, PhiloxModeIsReproducibleAndSeedDependent) {
  auto run = [](int64_t seed) {
    std::vector<torch::Tensor> params = {param({8, 16}, 1), param({24, 8}, 2), param({5}, 3)};
    Flora opt(params, FloraOptions(1e-2).beta1(0.9).rank(4).kappa(3).seed(seed));
    for (int s = 0; s < 10; ++s) {
      set_grads(params, s);
      opt.step();
    }
    return params;
  };
  const auto a = run(0);
  const auto b = run(0);
  const auto c = run(1);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(torch::equal(a[i], b[i])) << i;
  }
  EXPECT_FALSE(torch::equal(a[0], c[0]));
  EXPECT_FALSE(torch::equal(a[1], c[1]));
  EXPECT_TRUE(torch::equal(a[2], c[2])); // 1-d: no projection involved
}

// With no resampling the compressed momentum is exactly the projection of the
// full momentum, m_c = down(m): nothing is lost but the basis. With rank equal
// to the small dimension P is square and invertible, so solving P m = m_c
// recovers the uncompressed Flora's momentum.
TEST(Flora, CompressedMomentumIsTheProjectedFullMomentum) {
  for (auto mode : {ProjectionMode::philox, ProjectionMode::reference}) {
    for (bool left : {true, false}) {
      const std::vector<int64_t> shape = left ? std::vector<int64_t>{6, 20} : std::vector<int64_t>{20, 6};
      auto compressed = param(shape, 1);
      auto full = param(shape, 1);
      Flora opt_c({compressed}, FloraOptions(1e-2).beta1(0.9).rank(6).kappa(1000).projection(mode));
      Flora opt_f({full}, FloraOptions(1e-2).beta1(0.9).projection(mode));
      for (int s = 0; s < 20; ++s) {
        const auto g = randn_like_seeded(full, s);
        compressed.mutable_grad() = g.clone();
        full.mutable_grad() = g.clone();
        opt_c.step();
        opt_f.step();
      }
      const auto& sc = state_of(opt_c, compressed);
      const auto& sf = state_of(opt_f, full);
      const flora::Projection p(sc.seed(), shape[0], shape[1], 6, mode, flora::Projection::Seeding::split, {});
      const auto P = p.matrix().to(torch::kDouble);
      const auto mc = sc.exp_avg().to(torch::kDouble);
      const auto mf = sf.exp_avg().to(torch::kDouble);
      const auto recovered = left ? torch::linalg_solve(P, mc) : torch::linalg_solve(P.t(), mc.t()).t();
      EXPECT_LT(flora::testing::relative_error(recovered, mf), 1e-4) << "left " << left;
      const auto projected = left ? P.mm(mf) : mf.mm(P);
      EXPECT_LT(flora::testing::relative_error(mc, projected), 1e-5) << "left " << left;
    }
  }
}

TEST(Flora, BadGradientsAreRejectedBeforeAnythingChanges) {
  auto make = [] {
    return std::vector<torch::Tensor>{param({4, 4}, 1), param({4, 4}, 2)};
  };
  struct Case {
    std::function<void(torch::Tensor&)> spoil;
    std::string message;
  };
  const std::vector<Case> cases = {
      {[](torch::Tensor& p) { p.mutable_grad() = torch::ones({4, 4}).to_sparse(); },
       "the gradient of parameter 2 (param group 0, position 1, shape [4, 4]) is sparse"},
      {[](torch::Tensor& p) { p.mutable_grad() = torch::ones({4, 5}); }, "has shape [4, 5], different from the parameter's"},
      {[](torch::Tensor& p) { p.mutable_grad() = torch::ones({16}); }, "has shape [16], different from the parameter's"},
      {[](torch::Tensor& p) {
         p.mutable_grad() = torch::full({4, 4}, std::numeric_limits<float>::quiet_NaN());
       },
       "the gradient of parameter 2 (param group 0, position 1, shape [4, 4]) contains NaN or Inf"},
      {[](torch::Tensor& p) {
         auto g = torch::ones({4, 4});
         g[1][2] = std::numeric_limits<float>::infinity();
         p.mutable_grad() = g;
       },
       "contains NaN or Inf; no parameter or state was changed"},
  };
  for (const auto& c : cases) {
    auto params = make();
    Flora opt(params, FloraOptions(1e-2).beta1(0.9));
    set_grads(params, 1);
    opt.step(); // some state exists already
    const auto state_before = state_of(opt, params[0]);
    const auto p0 = params[0].detach().clone();
    const auto p1 = params[1].detach().clone();
    params[0].mutable_grad() = torch::ones({4, 4});
    c.spoil(params[1]);
    expect_error([&] { opt.step(); }, c.message);
    EXPECT_TRUE(torch::equal(params[0].detach(), p0)) << c.message;
    EXPECT_TRUE(torch::equal(params[1].detach(), p1)) << c.message;
    EXPECT_TRUE(state_of(opt, params[0]) == state_before) << c.message;
  }
}

TEST(Flora, ComplexAndDoubleParametersAreRejected) {
  auto z = torch::randn({3, 3}, torch::kComplexFloat).requires_grad_(true);
  z.mutable_grad() = torch::ones_like(z);
  Flora opt_z({z}, FloraOptions(1e-2));
  expect_error([&] { opt_z.step(); }, "Flora supports real parameters only");
  auto d = torch::randn({3, 3}, torch::kDouble).requires_grad_(true);
  d.mutable_grad() = torch::ones_like(d);
  Flora opt_d({d}, FloraOptions(1e-2));
  expect_error([&] { opt_d.step(); }, "has dtype Double; Flora supports Float, Half, BFloat16 parameters");
}

TEST(Flora, NonFiniteGradientsPropagateWhenTheCheckIsOff) {
  auto p = param({4, 4}, 1);
  Flora opt({p}, FloraOptions(1e-2).check_finite(false));
  p.mutable_grad() = torch::full({4, 4}, std::numeric_limits<float>::quiet_NaN());
  EXPECT_NO_THROW(opt.step());
  EXPECT_TRUE(torch::isnan(p.detach()).all().item<bool>());
}

TEST(Flora, EmptyParametersAreLeftAlone) {
  auto empty = torch::zeros({0, 4}).requires_grad_(true);
  auto p = param({4, 4}, 1);
  Flora opt({empty, p}, FloraOptions(1e-2).beta1(0.9).rank(2));
  empty.mutable_grad() = torch::zeros({0, 4});
  p.mutable_grad() = torch::ones({4, 4});
  opt.step();
  EXPECT_FALSE(has_state(opt, empty));
  EXPECT_TRUE(has_state(opt, p));
}

TEST(Flora, UpdateIsClippedAndScaledByParameterRms) {
  // One step, factored, no momentum: the normalised update has RMS 1, so with
  // clip_threshold 1 it is unchanged and the parameter moves by
  // lr * max(eps2, RMS(p)) * update.
  auto p = param({16, 16}, 3);
  const auto before = p.detach().clone();
  Flora opt({p}, FloraOptions(0.1));
  p.mutable_grad() = torch::randn({16, 16});
  opt.step();
  const double rms = before.pow(2).mean().sqrt().item<double>();
  const auto delta = before - p.detach();
  const double delta_rms = delta.pow(2).mean().sqrt().item<double>();
  EXPECT_NEAR(state_of(opt, p).rms().item<double>(), rms, 1e-6);
  EXPECT_LE(delta_rms, 0.1 * rms * (1 + 1e-5));
  EXPECT_GT(delta_rms, 0.0);

  // A tiny clip threshold caps the step's RMS at lr * RMS(p) * threshold.
  auto q = param({16, 16}, 3);
  Flora clipped({q}, FloraOptions(0.1).clip_threshold(0.01));
  q.mutable_grad() = torch::randn({16, 16});
  clipped.step();
  const double q_delta = (before - q.detach()).pow(2).mean().sqrt().item<double>();
  EXPECT_NEAR(q_delta, 0.1 * rms * 0.01, 0.1 * rms * 0.01 * 1e-3);
}

TEST(Flora, WeightDecayIsDecoupled) {
  // With a zero gradient the normalised update is zero and only the decay acts.
  auto p = param({5}, 4);
  const auto before = p.detach().clone();
  Flora opt({p}, FloraOptions(0.1).weight_decay(0.5).scale_parameter(false));
  p.mutable_grad() = torch::zeros({5});
  opt.step();
  EXPECT_TRUE(torch::allclose(p.detach(), before * (1 - 0.5 * 0.1), 1e-6, 1e-7));
}

} // namespace
