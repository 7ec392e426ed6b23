// The dispatcher operators: every operator through one table (registration,
// argument checks, version counters; tests/op_cases.h), then each against its
// definition (computed here in float64 from the formulas in ops.h), and the
// layouts the kernels must accept.

#include "op_cases.h"
#include "test_util.h"

#include <flora/flora.h>

#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

namespace {

using flora::testing::error_of;
using flora::testing::expect_error;
using flora::testing::names_argument;
using flora::testing::op_cases;
using flora::testing::OpArgs;
using flora::testing::relative_error;

// ---------------------------------------------------------------- the table

TEST(OpCases, CoverEveryOperator) {
  std::set<std::string> registered;
  for (const auto& name : c10::Dispatcher::singleton().getAllOpNames()) {
    if (name.name.rfind("flora::", 0) == 0) {
      registered.insert(name.name.substr(7));
    }
  }
  std::set<std::string> listed;
  for (const auto& c : op_cases()) {
    listed.insert(c.name);
  }
  EXPECT_EQ(listed, registered);
}

TEST(OpCases, RegisteredOnceWithKernelsForEveryBackend) {
  for (const auto& c : op_cases()) {
    const auto op = c10::Dispatcher::singleton().findSchema({"flora::" + c.name, ""});
    ASSERT_TRUE(op.has_value()) << c.name;
    EXPECT_TRUE(op->hasKernelForDispatchKey(c10::DispatchKey::CPU)) << c.name;
#ifdef FLORA_WITH_CUDA
    EXPECT_TRUE(op->hasKernelForDispatchKey(c10::DispatchKey::CUDA)) << c.name;
#endif
  }
}

TEST(OpCases, ValidArgumentsRunAndWrittenArgumentsBumpTheirVersion) {
  for (const auto& c : op_cases()) {
    OpArgs args = c.make(torch::kCPU);
    std::map<std::string, int64_t> before;
    for (const auto& name : args.names()) {
      before[name] = args[name]._version();
    }
    c.call(args);
    for (const auto& name : args.names()) {
      const bool written = std::find(c.mutated.begin(), c.mutated.end(), name) != c.mutated.end();
      if (written) {
        EXPECT_GT(args[name]._version(), before[name]) << c.name << ": " << name;
      } else {
        EXPECT_EQ(args[name]._version(), before[name]) << c.name << ": " << name << " is not written";
      }
    }
  }
}

// Every tensor argument with a dtype, and every argument with a size the op
// prescribes, is rejected with "<op>: <argument> ..." and the value found.
TEST(OpCases, BadArgumentsAreRejectedByName) {
  int rejected = 0;
  for (const auto& c : op_cases()) {
    const OpArgs valid = c.make(torch::kCPU);
    for (const auto& name : valid.names()) {
      const std::string prefix = c.name + ": " + name + " ";
      {
        OpArgs args = c.make(torch::kCPU);
        args[name] = args[name].to(torch::kDouble);
        const auto message = error_of([&] { c.call(args); });
        EXPECT_NE(message.find(prefix + "has dtype Double"), std::string::npos) << message;
        ++rejected;
      }
      if (std::find(c.shaped.begin(), c.shaped.end(), name) != c.shaped.end()) {
        OpArgs args = c.make(torch::kCPU);
        args[name] = flora::testing::misshapen(args[name]);
        const auto message = error_of([&] { c.call(args); });
        EXPECT_NE(message.find(prefix), std::string::npos) << message;
        ++rejected;
      }
    }
  }
  EXPECT_GE(rejected, 40);
}

// Tensors on two devices: without a GPU the dispatcher cannot reach a kernel
// with a second device, so the shared check (the first thing both kernels
// call) is given a meta tensor; tests/cuda/kernels_test.cpp does it through
// the dispatcher with CUDA tensors.
TEST(OpCases, ArgumentsOnAnotherDeviceAreRejectedByName) {
  for (const auto& c : op_cases()) {
    const auto names = c.make(torch::kCPU).names();
    if (names.size() < 2) {
      continue; // one tensor: nothing to disagree with
    }
    for (const auto& name : names) {
      OpArgs args = c.make(torch::kCPU);
      args[name] = args[name].to(torch::kMeta);
      const auto message = error_of([&] { c.check(args); });
      EXPECT_TRUE(names_argument(message, name)) << c.name << " " << name << ": " << message;
      if (message.empty()) {
        ADD_FAILURE() << c.name << ": " << name << " on the meta device was accepted";
      }
      EXPECT_NE(message.find("meta"), std::string::npos) << message;
    }
  }
}

// ---------------------------------------------------------------- definitions

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

// Late in training beta2_t = 1 - t^-0.8 is close to 1, and 1 - beta2_t must be
// computed in double: rounded from a float beta2_t it is off by ~3e-5
// relative at t = 1e4 and ~2e-4 at 1e5. With v = 0 that error is all of v.
TEST(Ops, SecondMomentKeepsOneMinusBeta2Exact) {
  for (double step : {1e4, 1e5, 1e6}) {
    const double beta2 = 1.0 - std::pow(step, -0.8);
    const auto grad = torch::randn({257});
    const auto g = grad.to(torch::kDouble);
    auto v = torch::zeros({257});
    flora::ops::second_moment_full_(grad, v, beta2, 1e-30);
    EXPECT_LT(relative_error(v, (g * g + 1e-30) * (1.0 - beta2)), 1e-6) << "step " << step;

    std::vector<torch::Tensor> params = {torch::randn({257})}, grads = {grad}, vs = {torch::zeros({257})};
    flora::ops::full_moment_step_(params, grads, vs, {}, {beta2}, {0.01}, 1e-30, 1e-3, 0.0, true, 1.0, 0.0);
    EXPECT_LT(relative_error(vs[0], (g * g + 1e-30) * (1.0 - beta2)), 1e-6) << "step " << step;
  }
}

// 4,194,305 rows: more than 65,535 row tiles of 64 (a CUDA grid's y limit).
TEST(Ops, SecondMomentFactoredTallMatrix) {
  const int64_t rows = 4194305;
  const auto grad = torch::randn({rows, 1});
  auto row = torch::zeros({rows});
  auto col = torch::zeros({1});
  const auto update = flora::ops::second_moment_factored_(grad, row, col, 0.5, 1e-30);
  const auto g = grad.to(torch::kDouble);
  const auto col_ref = (g * g + 1e-30).mean(0) * 0.5;
  EXPECT_LT(relative_error(col, col_ref), 1e-5);
  EXPECT_LT(relative_error(row, (g * g + 1e-30).squeeze(1) * 0.5), 1e-6);
  EXPECT_TRUE(update.isfinite().all().item<bool>());
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
      const auto applied = u / std::max(1.0, rms_u / clip) * lr_t;
      const auto expected = p - wd * lr_t * p - applied;
      const auto rms = flora::ops::apply_update_(param, update, lr, eps2, scale, clip, wd);
      EXPECT_EQ(param.scalar_type(), dtype);
      EXPECT_NEAR(rms.item<double>(), rms_p, 1e-6 * rms_p + (dtype == torch::kFloat ? 0 : 1e-3));
      const double tolerance = dtype == torch::kFloat ? 1e-6 : 1e-2; // rounding of the parameter itself
      EXPECT_LT(relative_error(param, expected), tolerance) << dtype << " scale " << scale;
      // The contract of ops.h: update now holds the step that was subtracted.
      EXPECT_LT(relative_error(update, applied), 1e-6) << dtype << " scale " << scale;
    }
  }
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

// ---------------------------------------------------------------- layouts

// A conv weight in channels_last (4-d: the full second-moment path) with its
// gradient and states in that layout too, through every op of that path:
// the results are those of the same values laid out contiguously.
TEST(Ops, ChannelsLastConvWeight) {
  const auto cl = torch::MemoryFormat::ChannelsLast;
  const auto p0 = flora::testing::seeded_randn({8, 3, 5, 5}, 1, torch::kCPU) * 0.2;
  const auto g0 = flora::testing::seeded_randn({8, 3, 5, 5}, 2, torch::kCPU);
  const auto v0 = flora::testing::seeded_rand({8, 3, 5, 5}, 3, torch::kCPU);
  const auto m0 = flora::testing::seeded_randn({8, 3, 5, 5}, 4, torch::kCPU) * 0.1;
  ASSERT_FALSE(p0.contiguous(cl).is_contiguous());

  // second_moment_full_ + apply_update_
  auto v_cl = v0.contiguous(cl), v = v0.clone();
  auto u_cl = flora::ops::second_moment_full_(g0.contiguous(cl), v_cl, 0.9, 1e-30);
  auto u = flora::ops::second_moment_full_(g0, v, 0.9, 1e-30);
  EXPECT_LT(relative_error(v_cl, v), 1e-7);
  EXPECT_LT(relative_error(u_cl, u), 1e-7);
  auto p_cl = p0.contiguous(cl), p = p0.clone();
  u_cl = u_cl.contiguous(cl);
  flora::ops::apply_update_(p_cl, u_cl, 0.05, 1e-3, true, 1.0, 0.1);
  flora::ops::apply_update_(p, u, 0.05, 1e-3, true, 1.0, 0.1);
  EXPECT_TRUE(p_cl.is_contiguous(cl)); // written in place, layout kept
  EXPECT_LT(relative_error(p_cl, p), 1e-6);
  EXPECT_LT(relative_error(u_cl, u), 1e-6);

  // full_moment_step_ with momentum, every list in channels_last
  std::vector<torch::Tensor> ps = {p0.contiguous(cl)}, gs = {g0.contiguous(cl)}, vs = {v0.contiguous(cl)},
                             ms = {m0.contiguous(cl)};
  std::vector<torch::Tensor> ps_ref = {p0.clone()}, vs_ref = {v0.clone()}, ms_ref = {m0.clone()};
  flora::ops::full_moment_step_(ps, gs, vs, ms, {0.9}, {0.05}, 1e-30, 1e-3, 0.9, true, 1.0, 0.1);
  flora::ops::full_moment_step_(ps_ref, {g0}, vs_ref, ms_ref, {0.9}, {0.05}, 1e-30, 1e-3, 0.9, true, 1.0, 0.1);
  EXPECT_TRUE(ps[0].is_contiguous(cl));
  EXPECT_LT(relative_error(ps[0], ps_ref[0]), 1e-6);
  EXPECT_LT(relative_error(vs[0], vs_ref[0]), 1e-7);
  EXPECT_LT(relative_error(ms[0], ms_ref[0]), 1e-7);
}

TEST(Ops, TransposedGradientThroughSecondMomentFactored) {
  const auto stored = flora::testing::seeded_randn({9, 6}, 5, torch::kCPU);
  const auto grad = stored.t(); // (6, 9), not contiguous
  ASSERT_FALSE(grad.is_contiguous());
  auto row = torch::full({6}, 0.5), col = torch::full({9}, 0.5);
  auto row_ref = row.clone(), col_ref = col.clone();
  const auto update = flora::ops::second_moment_factored_(grad, row, col, 0.8, 1e-30);
  const auto update_ref = flora::ops::second_moment_factored_(grad.contiguous(), row_ref, col_ref, 0.8, 1e-30);
  EXPECT_LT(relative_error(row, row_ref), 1e-6);
  EXPECT_LT(relative_error(col, col_ref), 1e-6);
  EXPECT_LT(relative_error(update, update_ref), 1e-6);
}

// Strided views as outputs: every written argument through a non-contiguous
// view of a larger tensor, which must come back written in place.
TEST(Ops, StridedOutputsAreWrittenInPlace) {
  auto wide = torch::zeros({5, 16});
  auto view = wide.narrow(1, 0, 7); // (5, 7), row stride 16
  flora::ops::philox_normal_(view, 3, 1.0);
  auto dense = torch::empty({5, 7});
  flora::ops::philox_normal_(dense, 3, 1.0);
  EXPECT_TRUE(torch::equal(view, dense));

  const auto x = flora::testing::seeded_randn({54}, 8, torch::kCPU);
  auto codes_storage = torch::zeros({108}, torch::kUInt8);
  auto absmax_storage = torch::zeros({8});
  auto codes = codes_storage.slice(0, 0, 108, 2); // every other byte
  auto absmax = absmax_storage.slice(0, 0, 8, 2);
  flora::ops::quantize_blockwise_(x, codes, absmax, flora::dynamic_code_map(), 16);
  const auto expected = flora::quantize_blockwise(x, 16);
  EXPECT_TRUE(torch::equal(codes, expected.codes));
  EXPECT_TRUE(torch::equal(absmax, expected.absmax));
  EXPECT_TRUE(torch::equal(flora::ops::dequantize_blockwise(codes, absmax, flora::dynamic_code_map(), 16),
                           flora::dequantize_blockwise(expected, 16)));
}

} // namespace
