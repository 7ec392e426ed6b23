// Compressed gradient accumulation: statistics of the reconstruction, the
// memory it holds, use with any optimizer, checkpoints, and parity with
// flora-opt's FloraAccelerator (fixtures/accumulation/, written by
// fixtures/parity/generate.py from the real package).

#include "parity_fixture.h"
#include "test_util.h"

#include <flora/flora.h>

namespace {

using flora::AccumulationOptions;
using flora::CompressedAccumulator;
using flora::ProjectionMode;
using flora::testing::expect_error;
using flora::testing::relative_error;

torch::Tensor seeded(torch::IntArrayRef shape, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return torch::randn(shape, gen);
}

// Accumulates the given micro-batch gradients of one parameter and returns
// the restored gradient.
torch::Tensor accumulate_and_restore(
    CompressedAccumulator& acc, torch::Tensor& param, const std::vector<torch::Tensor>& grads) {
  for (const auto& g : grads) {
    param.mutable_grad() = g.clone();
    acc.accumulate();
    EXPECT_FALSE(param.grad().defined()) << "the full gradient must be released";
  }
  acc.restore();
  return param.grad();
}

TEST(Accumulation, UncompressedIsThePlainSum) {
  auto matrix = torch::zeros({8, 5}, torch::requires_grad());
  auto vector = torch::zeros({7}, torch::requires_grad());
  CompressedAccumulator acc({matrix, vector}, AccumulationOptions(0));
  const std::vector<torch::Tensor> gm = {seeded({8, 5}, 1), seeded({8, 5}, 2), seeded({8, 5}, 3)};
  const std::vector<torch::Tensor> gv = {seeded({7}, 4), seeded({7}, 5), seeded({7}, 6)};
  for (int i = 0; i < 3; ++i) {
    matrix.mutable_grad() = gm[i].clone();
    vector.mutable_grad() = gv[i].clone();
    acc.accumulate();
  }
  acc.restore();
  EXPECT_TRUE(torch::allclose(matrix.grad(), gm[0] + gm[1] + gm[2], 1e-6, 1e-6));
  EXPECT_TRUE(torch::allclose(vector.grad(), gv[0] + gv[1] + gv[2], 1e-6, 1e-6));
  EXPECT_FALSE(acc.compressed(matrix));
}

TEST(Accumulation, OneDimensionalParametersStayUncompressed) {
  auto matrix = torch::zeros({8, 32}, torch::requires_grad());
  auto bias = torch::zeros({32}, torch::requires_grad());
  CompressedAccumulator acc({matrix, bias}, AccumulationOptions(4));
  EXPECT_TRUE(acc.compressed(matrix));
  EXPECT_FALSE(acc.compressed(bias));
  const auto g1 = seeded({32}, 1), g2 = seeded({32}, 2);
  const auto restored = accumulate_and_restore(acc, bias, {g1, g2});
  EXPECT_TRUE(torch::allclose(restored, g1 + g2, 1e-6, 1e-6));
}

// With rank equal to the small dimension the projection matrix is square
// and invertible: nothing of the sum is lost, solving P X = C recovers it.
TEST(Accumulation, FullRankLosesNothing) {
  for (bool left : {true, false}) {
    const std::vector<int64_t> shape = left ? std::vector<int64_t>{6, 40} : std::vector<int64_t>{40, 6};
    auto param = torch::zeros(shape, torch::requires_grad());
    CompressedAccumulator acc({param}, AccumulationOptions(6).seed(3));
    std::vector<torch::Tensor> grads = {seeded(shape, 1), seeded(shape, 2), seeded(shape, 3), seeded(shape, 4)};
    const auto sum = grads[0] + grads[1] + grads[2] + grads[3];
    for (const auto& g : grads) {
      param.mutable_grad() = g.clone();
      acc.accumulate();
    }
    // The buffer is down(sum) in the basis of seed 3: recover the sum from it.
    const flora::Projection p(3, shape[0], shape[1], 6, ProjectionMode::philox, flora::Projection::Seeding::direct, {});
    const auto restored = acc.take(param).to(torch::kDouble);
    const auto P = p.matrix().to(torch::kDouble);
    // restored = up(C) = P^T C (left) or C P^T (right) with C = down(sum).
    const auto C = left ? torch::linalg_solve(P.t(), restored) : torch::linalg_solve(P, restored.t()).t();
    const auto recovered = left ? torch::linalg_solve(P, C) : torch::linalg_solve(P.t(), C.t()).t();
    EXPECT_LT(relative_error(recovered, sum.to(torch::kDouble)), 1e-3) << "left " << left;
  }
}

// E over seeds of the restored gradient is the true sum; the error of the
// average falls like 1/sqrt(seeds), so a bias would show.
TEST(Accumulation, UnbiasedOverSeeds) {
  for (auto mode : {ProjectionMode::philox, ProjectionMode::reference}) {
    const std::vector<int64_t> shape = {12, 6};
    const std::vector<torch::Tensor> grads = {seeded(shape, 11), seeded(shape, 12)};
    const auto sum = (grads[0] + grads[1]).to(torch::kDouble);
    auto error_after = [&](int64_t n) {
      auto mean = torch::zeros(shape, torch::kDouble);
      for (int64_t s = 0; s < n; ++s) {
        auto param = torch::zeros(shape, torch::requires_grad());
        CompressedAccumulator acc({param}, AccumulationOptions(2).projection(mode).seed(500 + s));
        mean += accumulate_and_restore(acc, param, grads).to(torch::kDouble);
      }
      return ((mean / n) - sum).norm().item<double>() / sum.norm().item<double>();
    };
    const double few = error_after(25);
    const double many = error_after(1600);
    EXPECT_LT(many, 0.12) << static_cast<int>(mode);
    EXPECT_LT(many, few / 3) << static_cast<int>(mode);
  }
}

TEST(Accumulation, ErrorShrinksAsRankGrows) {
  const std::vector<int64_t> shape = {128, 96};
  const auto g = seeded(shape, 1);
  double previous = std::numeric_limits<double>::infinity();
  for (int64_t rank : {4, 16, 64, 96}) {
    double error = 0;
    for (int64_t s = 0; s < 8; ++s) {
      auto param = torch::zeros(shape, torch::requires_grad());
      CompressedAccumulator acc({param}, AccumulationOptions(rank).seed(s));
      error += relative_error(accumulate_and_restore(acc, param, {g}), g) / 8;
    }
    EXPECT_LT(error, previous) << "rank " << rank;
    // E||P^T P G - G||^2 / ||G||^2 = (n + 1) / r for a (r, n) Gaussian P / sqrt(r):
    // the measured (max-norm) error follows the same trend.
    previous = error;
  }
}

TEST(Accumulation, SeedsAdvanceAtEveryRestore) {
  auto param = torch::zeros({6, 20}, torch::requires_grad());
  CompressedAccumulator acc({param}, AccumulationOptions(3).seed(10));
  const auto g = seeded({6, 20}, 1);
  const auto first = accumulate_and_restore(acc, param, {g});
  const auto second = accumulate_and_restore(acc, param, {g});
  EXPECT_FALSE(torch::allclose(first, second)); // a new basis
  const flora::Projection p10(10, 6, 20, 3, ProjectionMode::philox, flora::Projection::Seeding::direct, {});
  EXPECT_TRUE(torch::allclose(first, p10.up(p10.down(g)), 1e-5, 1e-6));
  const int64_t s11 = flora::next_seed(10, ProjectionMode::philox);
  const flora::Projection p11(s11, 6, 20, 3, ProjectionMode::philox, flora::Projection::Seeding::direct, {});
  EXPECT_TRUE(torch::allclose(second, p11.up(p11.down(g)), 1e-5, 1e-6));
}

// Between micro-batches the accumulator holds r/min(m, n) of what plain
// accumulation holds: measured with the counting CPU allocator.
TEST(Accumulation, MemoryHeldBetweenMicroBatches) {
  flora::MemoryMeter meter(torch::kCPU);
  const int64_t rank = 16;
  std::vector<torch::Tensor> params = {
      torch::zeros({256, 512}, torch::requires_grad()), torch::zeros({512, 128}, torch::requires_grad())};
  auto held_after_one_micro_batch = [&](int64_t r) {
    CompressedAccumulator acc(params, AccumulationOptions(r));
    const int64_t before = meter.current_bytes();
    for (auto& p : params) {
      p.mutable_grad() = torch::randn(p.sizes());
    }
    acc.accumulate();
    const int64_t held = meter.current_bytes() - before;
    EXPECT_EQ(held, acc.buffer_bytes());
    acc.restore();
    for (auto& p : params) {
      p.mutable_grad() = torch::Tensor();
    }
    return held;
  };
  const int64_t plain = held_after_one_micro_batch(0);
  const int64_t compressed = held_after_one_micro_batch(rank);
  EXPECT_EQ(plain, 4 * (256 * 512 + 512 * 128));
  // (256, 512) -> (16, 512); (512, 128) -> (512, 16).
  EXPECT_EQ(compressed, 4 * (rank * 512 + 512 * rank));
  std::cout << "[ memory   ] held between micro-batches: plain " << plain << " B, rank " << rank << " " << compressed
            << " B (" << static_cast<double>(compressed) / plain << ")" << std::endl;
}

TEST(Accumulation, WorksWithAnyOptimizer) {
  torch::manual_seed(0);
  auto model = torch::nn::Sequential(torch::nn::Linear(16, 32), torch::nn::Tanh(), torch::nn::Linear(32, 4));
  const auto x = torch::randn({64, 16});
  const auto y = torch::randn({64, 4});
  torch::optim::Adam adam(model->parameters(), torch::optim::AdamOptions(1e-2));
  CompressedAccumulator acc(model->parameters(), AccumulationOptions(4));
  double first = 0, last = 0;
  for (int step = 0; step < 30; ++step) {
    double loss_sum = 0;
    for (int micro = 0; micro < 4; ++micro) {
      auto loss = torch::mse_loss(model->forward(x.narrow(0, micro * 16, 16)), y.narrow(0, micro * 16, 16)) / 4;
      loss.backward();
      acc.accumulate();
      loss_sum += loss.item<double>();
    }
    acc.restore();
    adam.step();
    adam.zero_grad();
    (step == 0 ? first : last) = loss_sum;
  }
  EXPECT_LT(last, first);
}

TEST(Accumulation, CheckpointRoundTripAndBadInput) {
  flora::testing::TempDir dir;
  auto p = torch::zeros({8, 24}, torch::requires_grad());
  auto b = torch::zeros({5}, torch::requires_grad());
  CompressedAccumulator acc({p, b}, AccumulationOptions(4).seed(7));
  p.mutable_grad() = seeded({8, 24}, 1);
  b.mutable_grad() = seeded({5}, 2);
  acc.accumulate();
  acc.restore(); // seeds advanced once
  p.mutable_grad() = seeded({8, 24}, 3);
  acc.accumulate(); // mid-accumulation
  torch::serialize::OutputArchive out;
  acc.save(out);
  out.save_to(dir.file("acc.pt"));

  CompressedAccumulator other({p, b}, AccumulationOptions(4).seed(7));
  torch::serialize::InputArchive in;
  in.load_from(dir.file("acc.pt"));
  other.load(in);
  EXPECT_EQ(other.buffer_bytes(), acc.buffer_bytes());
  p.mutable_grad() = seeded({8, 24}, 4);
  acc.accumulate();
  p.mutable_grad() = seeded({8, 24}, 4);
  other.accumulate();
  EXPECT_TRUE(torch::equal(acc.take(p), other.take(p)));

  CompressedAccumulator wrong_rank({p, b}, AccumulationOptions(2));
  torch::serialize::InputArchive in2;
  in2.load_from(dir.file("acc.pt"));
  expect_error([&] { wrong_rank.load(in2); }, "the checkpoint has rank 4, this accumulator 2");
  expect_error([&] { CompressedAccumulator({p}, AccumulationOptions(-1)); }, "rank must be >= 0");
  expect_error([&] { CompressedAccumulator({p, p}, AccumulationOptions(1)); }, "appears twice");
  auto stranger = torch::zeros({3}, torch::requires_grad());
  expect_error([&] { acc.accumulate(stranger); }, "is not one of its parameters");
}

// ---- parity with flora-opt's FloraAccelerator (reference mode) ----------

struct AccumulationFixture {
  c10::IValue data;
  c10::IValue get(const std::string& key) const {
    return flora::testing::fixture_get(data, key);
  }
};

AccumulationFixture load_accumulation(const std::string& name) {
  const std::string path = std::string(FLORA_FIXTURE_DIR) + "/accumulation/" + name + ".pt";
  std::ifstream file(path, std::ios::binary);
  EXPECT_TRUE(file.good()) << "missing fixture " << path;
  std::vector<char> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  return {torch::pickle_load(bytes)};
}

// The fixture's model: out = cat([net(x) * scale, z @ extra], 1),
// net = Linear(6, 10), ReLU, Linear(10, 4); loss = mse(out, y) / k.
torch::Tensor fixture_loss(const std::vector<torch::Tensor>& p, const c10::IValue& batch, double scale) {
  const auto x = flora::testing::fixture_get(batch, "x").toTensor();
  const auto z = flora::testing::fixture_get(batch, "z").toTensor();
  const auto y = flora::testing::fixture_get(batch, "y").toTensor();
  // p: extra, scale, net.0.weight, net.0.bias, net.2.weight, net.2.bias
  const auto h = torch::relu(torch::linear(x, p[2], p[3]));
  const auto out = torch::cat({torch::linear(h, p[4], p[5]) * p[1], z.matmul(p[0])}, 1);
  return torch::mse_loss(out, y) * scale;
}

class AccumulatorParity : public ::testing::TestWithParam<std::tuple<std::string, bool>> {};

TEST_P(AccumulatorParity, MatchesFloraAccelerator) {
  const auto& [name, fused] = GetParam();
  const auto fixture = load_accumulation(name);
  const int64_t k = fixture.get("gradient_accumulation_steps").toInt();
  const int64_t rank = fixture.get("accumulation_rank").toInt();
  const double scale = fixture.get("loss_scale").toDouble();
  std::vector<torch::Tensor> params;
  for (const c10::IValue p : fixture.get("params").toList()) {
    params.push_back(p.toTensor().clone().requires_grad_(true));
  }
  flora::FloraOptions options;
  flora::testing::apply_fixture_options(options, fixture.get("optimizer_options"));
  options.projection(ProjectionMode::reference);
  flora::Flora optimizer(params, options);

  std::unique_ptr<flora::FusedBackward> fused_backward;
  std::unique_ptr<CompressedAccumulator> accumulator;
  if (fused) {
    fused_backward = std::make_unique<flora::FusedBackward>(
        optimizer,
        flora::FusedBackwardOptions().accumulation_steps(k).accumulation_rank(rank).projection(ProjectionMode::reference));
  } else {
    accumulator = std::make_unique<CompressedAccumulator>(params, AccumulationOptions(rank).projection(ProjectionMode::reference));
  }

  const auto batches = fixture.get("micro_batches").toList();
  const auto micro_grads = fixture.get("micro_grads").toList();
  const auto params_after = fixture.get("params_after").toList();
  const auto state_after = fixture.get("state_after").toList();
  double worst = 0;
  for (size_t micro = 0; micro < batches.size(); ++micro) {
    auto loss = fixture_loss(params, batches.get(micro), scale);
    if (!fused) {
      // Autograd gives flora-opt's micro-batch gradients (before compression).
      const auto grads = torch::autograd::grad({loss}, params);
      const auto expected = micro_grads.get(micro).toList();
      for (size_t i = 0; i < params.size(); ++i) {
        EXPECT_LE(relative_error(grads[i], expected.get(i).toTensor()), 1e-6) << "micro " << micro << " grad " << i;
        params[i].mutable_grad() = grads[i];
      }
      accumulator->accumulate();
    } else {
      loss.backward();
    }
    if ((micro + 1) % k != 0) {
      continue;
    }
    if (!fused) {
      accumulator->restore();
      optimizer.step();
      optimizer.zero_grad();
    }
    const size_t step = micro / k;
    const auto expected_params = params_after.get(step).toList();
    const auto expected_states = state_after.get(step).toList();
    for (size_t i = 0; i < params.size(); ++i) {
      const std::string where = name + " step " + std::to_string(step + 1) + " param " + std::to_string(i);
      const double error = relative_error(params[i].detach(), expected_params.get(i).toTensor());
      worst = std::max(worst, error);
      EXPECT_LE(error, 1e-6) << where;
      EXPECT_FALSE(params[i].grad().defined()) << where;
      const auto& st = static_cast<const flora::FloraParamState&>(*optimizer.state().at(params[i].unsafeGetTensorImpl()));
      const auto expected = expected_states.get(i);
      EXPECT_EQ(st.step(), flora::testing::fixture_get(expected, "step").toInt()) << where;
      EXPECT_EQ(st.seed(), flora::testing::fixture_get(expected, "seed").toInt()) << where;
      const auto exp_avg = flora::testing::fixture_get(expected, "exp_avg");
      if (!exp_avg.isNone()) {
        EXPECT_LE(relative_error(st.exp_avg(), exp_avg.toTensor()), 1e-6) << where;
      }
    }
  }
  if (fused) {
    EXPECT_EQ(fused_backward->micro_steps(), static_cast<int64_t>(batches.size()));
    EXPECT_EQ(fused_backward->updates(), static_cast<int64_t>(batches.size()) / k);
  }
  std::cout << "[ parity   ] accumulation " << name << (fused ? " (fused)" : " (accumulate/restore/step)")
            << ": largest relative error of the parameters " << worst << std::endl;
}

INSTANTIATE_TEST_SUITE_P(
    FloraAccelerator,
    AccumulatorParity,
    ::testing::Combine(::testing::Values("no_momentum", "momentum_rank2"), ::testing::Bool()),
    [](const auto& info) { return std::get<0>(info.param) + (std::get<1>(info.param) ? "_fused" : "_plain"); });

} // namespace
