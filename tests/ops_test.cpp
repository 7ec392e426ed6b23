// The dispatcher operators against their definitions (computed here in
// float64 from the formulas in ops.h), on every registered device.

#include "test_util.h"

#include <flora/flora.h>

#include <ATen/core/dispatch/Dispatcher.h>

namespace {

using flora::testing::expect_error;
using flora::testing::relative_error;

TEST(Ops, SchemasAreRegisteredOnceWithCpuKernels) {
  for (const char* name :
       {"flora::philox_normal_", "flora::philox_bits_", "flora::second_moment_factored_",
        "flora::second_moment_full_", "flora::apply_update_"}) {
    const auto op = c10::Dispatcher::singleton().findSchema({name, ""});
    ASSERT_TRUE(op.has_value()) << name;
    EXPECT_TRUE(op->hasKernelForDispatchKey(c10::DispatchKey::CPU)) << name;
  }
}

TEST(Ops, SecondMomentFactored) {
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    const auto grad = torch::randn({6, 9}).to(dtype);
    auto row = torch::rand({6}) + 0.5;
    auto col = torch::rand({9}) + 0.5;
    const double beta2 = 0.7, eps1 = 1e-3;
    const auto g = grad.to(torch::kDouble);
    const auto u = g * g + eps1;
    const auto row_ref = row.to(torch::kDouble) * beta2 + u.mean(-1) * (1 - beta2);
    const auto col_ref = col.to(torch::kDouble) * beta2 + u.mean(-2) * (1 - beta2);
    const auto update_ref = (row_ref / row_ref.mean()).rsqrt().unsqueeze(1) * col_ref.rsqrt().unsqueeze(0) * g;
    const auto update = flora::ops::second_moment_factored_(grad, row, col, beta2, eps1);
    EXPECT_EQ(update.scalar_type(), torch::kFloat);
    EXPECT_LT(relative_error(row, row_ref), 1e-6);
    EXPECT_LT(relative_error(col, col_ref), 1e-6);
    EXPECT_LT(relative_error(update, update_ref), 1e-6);
  }
}

TEST(Ops, SecondMomentFull) {
  const auto grad = torch::randn({3, 4, 5});
  auto v = torch::rand({3, 4, 5}) + 0.1;
  const auto g = grad.to(torch::kDouble);
  const auto v_ref = v.to(torch::kDouble) * 0.9 + (g * g + 1e-30) * 0.1;
  const auto update = flora::ops::second_moment_full_(grad, v, 0.9, 1e-30);
  EXPECT_LT(relative_error(v, v_ref), 1e-6);
  EXPECT_LT(relative_error(update, v_ref.rsqrt() * g), 1e-6);
}

TEST(Ops, SecondMomentRejectsMismatchedState) {
  const auto grad = torch::randn({6, 9});
  auto row = torch::zeros({6});
  auto col = torch::zeros({8});
  expect_error([&] { flora::ops::second_moment_factored_(grad, row, col, 0.5, 1e-30); }, "exp_avg_sq_col has shape [8], expected [9]");
  auto col_double = torch::zeros({9}, torch::kDouble);
  expect_error([&] { flora::ops::second_moment_factored_(grad, row, col_double, 0.5, 1e-30); }, "exp_avg_sq_col must be float32");
  auto v = torch::zeros({5});
  expect_error([&] { flora::ops::second_moment_full_(grad, v, 0.5, 1e-30); }, "exp_avg_sq has shape [5], expected [6, 9]");
}

TEST(Ops, ApplyUpdate) {
  for (auto dtype : {torch::kFloat, torch::kHalf, torch::kBFloat16}) {
    for (bool scale : {true, false}) {
      auto param = (torch::randn({7, 5}) * 0.3).to(dtype);
      auto update = torch::randn({7, 5}) * 3; // RMS about 3: clipped at 1.5
      const double lr = 0.05, eps2 = 1e-3, clip = 1.5, wd = 0.1;
      const auto p = param.to(torch::kDouble);
      const auto u = update.to(torch::kDouble);
      const double rms_p = p.pow(2).mean().sqrt().item<double>();
      const double rms_u = u.pow(2).mean().sqrt().item<double>();
      const double lr_t = lr * (scale ? std::max(eps2, rms_p) : 1.0);
      const auto expected = p - wd * lr_t * p - u / std::max(1.0, rms_u / clip) * lr_t;
      const auto rms = flora::ops::apply_update_(param, update, lr, eps2, scale, clip, wd);
      EXPECT_EQ(param.scalar_type(), dtype);
      EXPECT_NEAR(rms.item<double>(), rms_p, 1e-6 * rms_p + (dtype == torch::kFloat ? 0 : 1e-3));
      const double tolerance = dtype == torch::kFloat ? 1e-6 : 1e-2; // rounding of the parameter itself
      EXPECT_LT(relative_error(param, expected), tolerance) << dtype << " scale " << scale;
    }
  }
}

TEST(Ops, ApplyUpdateRejectsMismatchedUpdate) {
  auto param = torch::zeros({4, 4});
  auto update = torch::zeros({4, 5});
  expect_error([&] { flora::ops::apply_update_(param, update, 0.1, 1e-3, true, 1.0, 0.0); }, "update has shape [4, 5], the parameter [4, 4]");
  auto half_update = torch::zeros({4, 4}, torch::kHalf);
  expect_error([&] { flora::ops::apply_update_(param, half_update, 0.1, 1e-3, true, 1.0, 0.0); }, "update must be float32");
}

TEST(Ops, InPlaceOpsBumpVersionCounters) {
  auto param = torch::randn({4, 4}).requires_grad_(true);
  auto update = torch::randn({4, 4});
  const auto before = param._version();
  {
    torch::NoGradGuard no_grad;
    flora::ops::apply_update_(param, update, 0.1, 1e-3, true, 1.0, 0.0);
  }
  EXPECT_GT(param._version(), before);
}

} // namespace
