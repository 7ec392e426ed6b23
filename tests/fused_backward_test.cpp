// The update fused into backward: same result as backward(); step();
// gradients released; hooks removed; clipping rules.

#include "test_util.h"

#include <flora/flora.h>

namespace {

using flora::Flora;
using flora::FloraOptions;
using flora::FusedBackward;
using flora::FusedBackwardOptions;
using flora::testing::expect_error;

using Net = flora::testing::TanhMlp;

struct Data {
  torch::Tensor x, y;
};

Data make_data() {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  return {torch::randn({96, 12}, gen), torch::randn({96, 3}, gen)};
}

std::shared_ptr<Net> make_net() {
  torch::manual_seed(0);
  return std::make_shared<Net>(12, 32, 3);
}

torch::Tensor loss_of(Net& net, const Data& d, int64_t batch, int64_t size) {
  return torch::mse_loss(net.forward(d.x.narrow(0, batch * size, size)), d.y.narrow(0, batch * size, size));
}

const FloraOptions kOptions = FloraOptions(2e-2).beta1(0.9).rank(4).kappa(3);

void expect_same_parameters(Net& a, Net& b, double tolerance) {
  const auto pa = a.parameters(), pb = b.parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (size_t i = 0; i < pa.size(); ++i) {
    EXPECT_LE(flora::testing::relative_error(pa[i].detach(), pb[i].detach()), tolerance) << "parameter " << i;
  }
}

TEST(FusedBackward, EqualsBackwardThenStep) {
  const auto data = make_data();
  auto plain = make_net();
  auto fused = make_net();
  Flora opt_plain(plain->parameters(), kOptions);
  Flora opt_fused(fused->parameters(), kOptions);
  FusedBackward hooks(opt_fused);
  for (int step = 0; step < 8; ++step) {
    opt_plain.zero_grad();
    loss_of(*plain, data, step % 6, 16).backward();
    opt_plain.step();
    loss_of(*fused, data, step % 6, 16).backward();
    for (const auto& p : fused->parameters()) {
      EXPECT_FALSE(p.grad().defined()) << "gradients are released inside backward";
    }
  }
  expect_same_parameters(*plain, *fused, 1e-6);
  EXPECT_EQ(hooks.micro_steps(), 8);
  EXPECT_EQ(hooks.updates(), 8);
}

TEST(FusedBackward, WithAccumulationEqualsAccumulateThenStep) {
  const auto data = make_data();
  const int64_t k = 3;
  for (bool compressed : {false, true}) {
    auto plain = make_net();
    auto fused = make_net();
    Flora opt_plain(plain->parameters(), kOptions);
    Flora opt_fused(fused->parameters(), kOptions);
    flora::CompressedAccumulator acc(plain->parameters(), flora::AccumulationOptions(compressed ? 3 : 0));
    auto options = FusedBackwardOptions().accumulation_steps(k);
    if (compressed) {
      options.accumulation_rank(3);
    }
    FusedBackward hooks(opt_fused, options);
    for (int micro = 0; micro < 4 * k; ++micro) {
      (loss_of(*plain, data, micro % 6, 16) / k).backward();
      acc.accumulate();
      if ((micro + 1) % k == 0) {
        acc.restore();
        opt_plain.step();
        opt_plain.zero_grad();
      }
      (loss_of(*fused, data, micro % 6, 16) / k).backward();
    }
    expect_same_parameters(*plain, *fused, 1e-6);
    EXPECT_EQ(hooks.micro_steps(), 4 * k);
    EXPECT_EQ(hooks.updates(), 4);
  }
}

TEST(FusedBackward, HooksAreRemovedOnRemoveAndDestruction) {
  const auto data = make_data();
  auto net = make_net();
  Flora opt(net->parameters(), kOptions);
  {
    FusedBackward hooks(opt);
    loss_of(*net, data, 0, 16).backward();
    hooks.remove();
    const auto before = net->parameters()[0].detach().clone();
    loss_of(*net, data, 1, 16).backward();
    EXPECT_TRUE(net->parameters()[0].grad().defined()) << "no hook: the gradient stays";
    EXPECT_TRUE(torch::equal(before, net->parameters()[0].detach())) << "no hook: no update";
    opt.zero_grad();
  }
  {
    FusedBackward again(opt); // allowed: the old hooks are gone
    expect_error([&] { FusedBackward twice(opt); }, "already has a post-accumulate-grad hook");
  } // destroyed here
  loss_of(*net, data, 2, 16).backward();
  for (const auto& p : net->parameters()) {
    EXPECT_TRUE(p.grad().defined());
  }
}

TEST(FusedBackward, ClipValueAndParameterNorm) {
  const auto data = make_data();
  for (bool by_norm : {false, true}) {
    auto plain = make_net();
    auto fused = make_net();
    Flora opt_plain(plain->parameters(), kOptions);
    Flora opt_fused(fused->parameters(), kOptions);
    FusedBackward hooks(
        opt_fused, by_norm ? FusedBackwardOptions().max_parameter_norm(0.05) : FusedBackwardOptions().clip_value(0.01));
    for (int step = 0; step < 4; ++step) {
      opt_plain.zero_grad();
      loss_of(*plain, data, step, 16).backward();
      for (auto& p : plain->parameters()) {
        if (by_norm) {
          torch::nn::utils::clip_grad_norm_(p, 0.05);
        } else {
          p.grad().clamp_(-0.01, 0.01);
        }
      }
      opt_plain.step();
      loss_of(*fused, data, step, 16).backward();
    }
    expect_same_parameters(*plain, *fused, 1e-5);
  }
}

TEST(FusedBackward, ImpossibleOrBadOptionsAreRefused) {
  auto net = make_net();
  Flora opt(net->parameters(), kOptions);
  expect_error(
      [&] { FusedBackward f(opt, FusedBackwardOptions().max_global_norm(1.0)); },
      "max_global_norm (1) cannot be honoured: clipping by the global norm needs every gradient before the first update");
  expect_error([&] { FusedBackward f(opt, FusedBackwardOptions().accumulation_steps(0)); }, "accumulation_steps must be >= 1, got 0");
  expect_error(
      [&] { FusedBackward f(opt, FusedBackwardOptions().accumulation_rank(4)); }, "accumulation_rank (4) needs accumulation_steps > 1");
  expect_error([&] { FusedBackward f(opt, FusedBackwardOptions().clip_value(-1.0)); }, "clip_value must be positive, got -1");
}

TEST(FusedBackward, PeakMemoryIsLowerThanBackwardThenStep) {
  // A stack of square layers: with backward(); step() all gradients exist at
  // the end of backward; fused, each is released as soon as it is used.
  const int64_t width = 256, layers = 8;
  auto make = [&] {
    torch::manual_seed(0);
    std::vector<torch::Tensor> ws;
    for (int64_t i = 0; i < layers; ++i) {
      ws.push_back((torch::randn({width, width}) / 16).requires_grad_(true));
    }
    return ws;
  };
  const auto x = torch::randn({4, width});
  auto forward = [&](const std::vector<torch::Tensor>& ws) {
    auto h = x;
    for (const auto& w : ws) {
      h = torch::tanh(h.mm(w));
    }
    return h.pow(2).mean();
  };
  flora::MemoryMeter meter(torch::kCPU);
  auto peak_of = [&](bool fused) {
    auto ws = make();
    Flora opt(ws, FloraOptions(1e-2));
    std::unique_ptr<FusedBackward> hooks;
    if (fused) {
      hooks = std::make_unique<FusedBackward>(opt);
    }
    // One warm-up step allocates the optimizer state.
    forward(ws).backward();
    if (!fused) {
      opt.step();
      opt.zero_grad();
    }
    meter.reset_peak();
    const int64_t base = meter.current_bytes();
    forward(ws).backward();
    if (!fused) {
      opt.step();
      opt.zero_grad();
    }
    return meter.peak_bytes() - base;
  };
  const int64_t plain = peak_of(false);
  const int64_t fused = peak_of(true);
  std::cout << "[ memory   ] peak above the model and state, one step of " << layers << " x (" << width << ", " << width
            << "): backward+step " << plain << " B, fused " << fused << " B" << std::endl;
  // Plain holds all 8 gradients at once (8 x 256 KB); fused at most a few.
  EXPECT_GE(plain, layers * width * width * 4);
  EXPECT_LT(fused, plain / 2);
}

} // namespace
