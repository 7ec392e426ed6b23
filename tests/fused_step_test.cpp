// The fused step (ProjectionMode::philox) against the algorithm written out
// in float64 with plain ATen (flora-algorithm.md, with the same Philox
// projections), over several steps and a resample, for every kind of
// parameter, odd sizes and every parameter dtype; its vectorised kernels
// against each other; its reductions against the thread count.

#include "test_util.h"

#include "cpu/fused_kernels.h"

#include <flora/flora.h>

#include <ATen/Parallel.h>

#include <cmath>

namespace {

using flora::Flora;
using flora::FloraOptions;
using flora::FloraParamState;
using flora::ProjectionMode;
using flora::testing::relative_error;

// flora-opt's step for one parameter, in float64 (the reference's rule;
// the projections are flora's philox matrices, drawn in float32 as the
// optimizer draws them).
struct Float64Flora {
  FloraOptions options;
  std::vector<int64_t> shape;
  int64_t step = 0;
  int64_t seed = 0;
  torch::Tensor param, row, col, v, m;

  Float64Flora(const torch::Tensor& p, const FloraOptions& o, int64_t index)
      : options(o), shape(p.sizes().vec()), seed(o.seed() + index), param(p.detach().to(torch::kDouble)) {}

  torch::Tensor projection(int64_t s) const {
    const int64_t rows = shape[0], cols = shape[1], r = *options.rank();
    const auto [left_seed, right_seed] = flora::split_seed(s, ProjectionMode::philox);
    const bool left = flora::projects_from_left(rows, cols);
    auto p = left ? flora::gaussian_matrix(left_seed, r, rows, ProjectionMode::philox)
                  : flora::gaussian_matrix(right_seed, cols, r, ProjectionMode::philox);
    return p.to(torch::kDouble) / std::sqrt(static_cast<double>(r));
  }
  torch::Tensor down(const torch::Tensor& p, const torch::Tensor& x) const {
    return flora::projects_from_left(shape[0], shape[1]) ? p.mm(x) : x.mm(p);
  }
  torch::Tensor up(const torch::Tensor& p, const torch::Tensor& c) const {
    return flora::projects_from_left(shape[0], shape[1]) ? p.t().mm(c) : c.mm(p.t());
  }

  void apply(const torch::Tensor& grad_in) {
    const auto g = grad_in.to(torch::kDouble);
    const auto layout = flora::ParamLayout::of(shape, options);
    const auto [eps1, eps2] = options.eps();
    ++step;
    const double rms = param.norm().item<double>() / std::sqrt(static_cast<double>(param.numel()));
    const double base = options.relative_step()
        ? std::min(options.warmup_init() ? 1e-6 * step : 1e-2, 1.0 / std::sqrt(static_cast<double>(step)))
        : *options.lr();
    const double lr_t = base * (options.scale_parameter() ? std::max(eps2, rms) : 1.0);
    const double b2 = 1.0 - std::pow(static_cast<double>(step), options.decay_rate());
    const auto u2 = g * g + eps1;
    torch::Tensor update;
    if (layout.factored) {
      if (!row.defined()) {
        row = torch::zeros({shape[0]}, torch::kDouble);
        col = torch::zeros({shape[1]}, torch::kDouble);
      }
      row = b2 * row + (1 - b2) * u2.mean(-1);
      col = b2 * col + (1 - b2) * u2.mean(-2);
      update = (row / row.mean()).rsqrt().unsqueeze(-1) * col.rsqrt().unsqueeze(0) * g;
    } else {
      if (!v.defined()) {
        v = torch::zeros_like(g);
      }
      v = b2 * v + (1 - b2) * u2;
      update = v.rsqrt() * g;
    }
    if (layout.momentum) {
      const double b1 = *options.beta1();
      if (!layout.compressed) {
        m = m.defined() ? b1 * m + (1 - b1) * update : (1 - b1) * update;
        update = m;
      } else {
        if (!m.defined()) {
          m = torch::zeros(flora::compressed_shape(shape[0], shape[1], *options.rank()), torch::kDouble);
        }
        const auto p = projection(seed);
        const auto raw = update;
        update = (1 - b1) * raw + b1 * up(p, m);
        auto pn = p;
        if (step % options.kappa() == 0) {
          seed = flora::next_seed(seed, ProjectionMode::philox);
          pn = projection(seed);
          m = down(pn, up(p, m));
        }
        m = b1 * m + (1 - b1) * down(pn, raw);
      }
    }
    const double update_rms = update.norm().item<double>() / std::sqrt(static_cast<double>(update.numel()));
    update = update / std::max(1.0, update_rms / options.clip_threshold()) * lr_t;
    param = param - options.weight_decay() * lr_t * param - update;
  }
};

struct Case {
  std::string name;
  std::vector<std::vector<int64_t>> shapes;
  FloraOptions options;
  torch::Dtype dtype = torch::kFloat;
};

std::vector<Case> cases() {
  const auto momentum = FloraOptions(1e-2).beta1(0.9).rank(4).kappa(3).weight_decay(0.01);
  return {
      {"compressed_left_right_resample", {{8, 24}, {24, 8}, {33, 65}, {65, 33}}, momentum},
      {"compressed_kappa1", {{9, 12}, {12, 9}}, FloraOptions(momentum).kappa(1)},
      // A shape group over the CPU's 16 MiB chunk budget (five 4.3 MB
      // matrices: chunks of three and two) and a matrix larger than the
      // budget alone (a chunk of one).
      {"compressed_in_chunks",
       {{1024, 1040}, {1024, 1040}, {1024, 1040}, {1024, 1040}, {1024, 1040}, {2100, 2050}},
       momentum},
      {"uncompressed_momentum", {{40, 6}, {6, 40}, {3, 4097}}, momentum},
      {"no_momentum", {{8, 24}, {1, 1}, {4097, 3}, {5, 1}}, FloraOptions(1e-2)},
      {"full_second_moment", {{4097}, {7}, {}, {3, 4, 5}, {1}}, momentum},
      {"unfactored_matrices", {{16, 16}, {33, 7}}, FloraOptions(momentum).factorize_second_moment(false)},
      {"relative_step", {{8, 24}, {17}}, FloraOptions().relative_step(true).warmup_init(true).beta1(0.5).rank(4)},
      {"no_scale_no_clip", {{8, 24}, {17}}, FloraOptions(momentum).scale_parameter(false).clip_threshold(1e9)},
      {"bfloat16", {{8, 24}, {40, 6}, {17}}, momentum, torch::kBFloat16},
      {"float16", {{8, 24}, {40, 6}, {17}}, momentum, torch::kHalf},
  };
}

class FusedStep : public ::testing::TestWithParam<Case> {};

TEST_P(FusedStep, MatchesTheAlgorithmInFloat64) {
  const auto& c = GetParam();
  std::vector<torch::Tensor> params;
  std::vector<Float64Flora> reference;
  for (size_t i = 0; i < c.shapes.size(); ++i) {
    params.push_back(flora::testing::param(c.shapes[i], 10 + i, c.dtype));
    reference.emplace_back(params.back(), c.options, static_cast<int64_t>(i) + 1);
  }
  Flora opt(params, c.options);
  for (int s = 1; s <= 7; ++s) {
    for (size_t i = 0; i < params.size(); ++i) {
      const auto g = flora::testing::randn_like_seeded(params[i], 1000 * s + i);
      params[i].mutable_grad() = g;
      reference[i].apply(g);
      // Low-precision parameters are stored rounded: so is the reference.
      reference[i].param = reference[i].param.to(c.dtype).to(torch::kDouble);
    }
    opt.step();
  }
  const double bound = c.dtype == torch::kFloat ? 2e-5 : (c.dtype == torch::kBFloat16 ? 1e-2 : 2e-3);
  for (size_t i = 0; i < params.size(); ++i) {
    const auto where = c.name + " param " + std::to_string(i) + " " + c10::str(params[i].sizes());
    EXPECT_LT(relative_error(params[i].detach(), reference[i].param), bound) << where;
    const auto* st = flora::testing::state_of<FloraParamState>(opt, params[i]);
    ASSERT_NE(st, nullptr) << where;
    EXPECT_EQ(st->step(), 7) << where;
    EXPECT_EQ(st->seed(), reference[i].seed) << where;
    if (reference[i].m.defined()) {
      EXPECT_LT(relative_error(st->exp_avg(), reference[i].m), c.dtype == torch::kFloat ? 1e-4 : 2e-2) << where;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Kinds, FusedStep, ::testing::ValuesIn(cases()), [](const auto& info) { return info.param.name; });

// The step's own reductions are cut by shape, not by thread: one thread and
// two give the same bits (parameters without compressed momentum: no GEMM).
TEST(FusedStep, ResultsDoNotDependOnTheThreadCount) {
  auto run = [](int threads) {
    const int before = at::get_num_threads();
    at::set_num_threads(threads);
    std::vector<torch::Tensor> params = {
        flora::testing::param({300, 200}, 1), flora::testing::param({5000}, 2), flora::testing::param({64, 700}, 3)};
    Flora opt(
        params,
        FloraOptions(1e-2).beta1(0.9).quantization(true).quantization_min_size(0).quantization_block_size(256));
    for (int s = 1; s <= 3; ++s) {
      for (size_t i = 0; i < params.size(); ++i) {
        params[i].mutable_grad() = flora::testing::randn_like_seeded(params[i], 10 * s + i);
      }
      opt.step();
    }
    at::set_num_threads(before);
    return params;
  };
  const auto one = run(1);
  const auto two = run(2);
  for (size_t i = 0; i < one.size(); ++i) {
    EXPECT_TRUE(torch::equal(one[i], two[i])) << i;
  }
}

// projection_precision: tf32 is float32 on a CPU, bit for bit; bfloat16
// products move the parameters by nearly the float32 step (their operands
// and products keep 8 significant bits) and not by exactly it; in every
// momentum rule and across a resample. The reference projection refuses it.
TEST(FusedStep, ProjectionPrecisionRoundsOnlyTheProducts) {
  using flora::MomentumProjection;
  using flora::ProjectionPrecision;
  for (const auto rule : {MomentumProjection::gaussian, MomentumProjection::subspace}) {
    auto run = [&](ProjectionPrecision precision) {
      std::vector<torch::Tensor> params = {
          flora::testing::param({48, 96}, 1), flora::testing::param({96, 40}, 2), flora::testing::param({40, 48}, 3)};
      const auto start = torch::cat({params[0].detach().flatten(), params[1].detach().flatten(),
                                     params[2].detach().flatten()});
      Flora opt(
          params,
          FloraOptions(1e-2).beta1(0.9).rank(8).kappa(2).momentum_projection(rule).projection_precision(precision));
      for (int s = 1; s <= 5; ++s) { // resamples at 2 and 4
        for (size_t i = 0; i < params.size(); ++i) {
          params[i].mutable_grad() = flora::testing::randn_like_seeded(params[i], 10 * s + i);
        }
        opt.step();
      }
      return (torch::cat({params[0].detach().flatten(), params[1].detach().flatten(), params[2].detach().flatten()}) -
              start);
    };
    const auto f32 = run(ProjectionPrecision::float32);
    const auto tf32 = run(ProjectionPrecision::tf32);
    const auto bf16 = run(ProjectionPrecision::bfloat16);
    EXPECT_TRUE(torch::equal(tf32, f32)) << flora::to_string(rule);
    const double error = relative_error(bf16, f32);
    std::cout << "[ bf16     ] " << flora::to_string(rule) << ": 5 steps of bfloat16 products move the parameters "
              << error << " (relative) away from float32's" << std::endl;
    EXPECT_GT(error, 0.0);
    EXPECT_LT(error, 2e-2);
  }
  std::vector<torch::Tensor> params = {flora::testing::param({8, 8}, 1)};
  try {
    Flora opt(params, FloraOptions(1e-2).projection(ProjectionMode::reference)
                          .projection_precision(ProjectionPrecision::bfloat16));
    ADD_FAILURE() << "reference mode took projection_precision(bfloat16)";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("projection_precision(bfloat16) needs the philox projection"),
              std::string::npos)
        << e.what();
  }
}

// A parameter that is not contiguous (a channels_last convolution weight, a
// transposed view) is updated exactly like its contiguous copy.
TEST(FusedStep, NonContiguousParametersEqualContiguousOnes) {
  auto conv = flora::testing::param({8, 3, 5, 5}, 4);
  auto conv_last = conv.detach().clone().contiguous(torch::MemoryFormat::ChannelsLast).requires_grad_(true);
  auto base = flora::testing::param({24, 16}, 5);
  auto transposed = base.detach().clone().t().contiguous().t().requires_grad_(true); // column-major storage
  ASSERT_FALSE(conv_last.is_contiguous());
  ASSERT_FALSE(transposed.is_contiguous());
  const auto options = FloraOptions(1e-2).beta1(0.9).rank(4);
  Flora a({conv, base}, options);
  Flora b({conv_last, transposed}, options);
  for (int s = 1; s <= 3; ++s) {
    const auto g1 = flora::testing::randn_like_seeded(conv, s);
    const auto g2 = flora::testing::randn_like_seeded(base, 100 + s);
    conv.mutable_grad() = g1;
    base.mutable_grad() = g2;
    conv_last.mutable_grad() = g1.contiguous(torch::MemoryFormat::ChannelsLast);
    transposed.mutable_grad() = g2.t().contiguous().t();
    a.step();
    b.step();
  }
  EXPECT_TRUE(torch::equal(conv, conv_last));
  EXPECT_TRUE(torch::equal(base, transposed));
  EXPECT_FALSE(conv_last.is_contiguous()) << "the parameter keeps its layout";
}

// The instruction-set variants of the kernels compute the same function:
// integer work (Philox counters, 8-bit codes of the same floats) exactly,
// float work to a few ulps (SLEEF's log/sin/cos against the C library's).
TEST(FusedKernels, EveryInstructionSetAgreesWithTheBaseline) {
  using flora::cpu::Kernels;
  std::vector<const Kernels*> variants = {flora::cpu::kernels_avx2(), flora::cpu::kernels_avx512()};
  const Kernels& base = flora::cpu::kernels_default();
  int compared = 0;
  for (const Kernels* k : variants) {
    if (k == nullptr) {
      continue;
    }
    ++compared;
    for (const auto& [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {3, 4097}, {256, 768}, {7, 5}}) {
      auto a = torch::empty({rows, cols}), b = torch::empty({rows, cols});
      base.philox_normal(a.data_ptr<float>(), rows, cols, 12345, 0.5f);
      k->philox_normal(b.data_ptr<float>(), rows, cols, 12345, 0.5f);
      EXPECT_LT(relative_error(b, a), 1e-6) << k->name << " philox " << rows << "x" << cols;
      // And the baseline is the optimizer's own generator (the philox_normal_ op).
      auto op = torch::empty({rows, cols});
      flora::ops::philox_normal_(op, 12345, 0.5);
      EXPECT_LT(relative_error(a, op), 1e-6) << "baseline philox vs philox_normal_";
    }
    // The factored sums and a full apply on odd sizes, three dtypes.
    for (const auto dtype : {torch::kFloat, torch::kBFloat16, torch::kHalf}) {
      for (const auto& [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {3, 4097}, {65, 33}}) {
        const auto p = torch::randn({rows, cols}).to(dtype);
        const auto g = torch::randn({rows, cols}).to(dtype);
        flora::cpu::TensorView view{p.data_ptr(), g.data_ptr(), dtype, rows, cols};
        auto r1 = torch::empty({rows}), c1 = torch::empty({cols}), r2 = torch::empty({rows}), c2 = torch::empty({cols});
        const auto s1 = base.gradient_sums(view, true, r1.data_ptr<float>(), c1.data_ptr<float>());
        const auto s2 = k->gradient_sums(view, true, r2.data_ptr<float>(), c2.data_ptr<float>());
        EXPECT_NEAR(s2.param_sq, s1.param_sq, 1e-5 * s1.param_sq) << k->name;
        EXPECT_LT(relative_error(r2, r1), 1e-5) << k->name;
        EXPECT_LT(relative_error(c2, c1), 1e-5) << k->name;
        const auto g64 = g.to(torch::kDouble);
        EXPECT_LT(relative_error(r1, (g64 * g64).sum(1)), 1e-5);
        EXPECT_LT(relative_error(c1, (g64 * g64).sum(0)), 1e-5);
      }
    }
    // 8-bit codes of the same floats are the same codes.
    const auto x = torch::randn({10000});
    const auto map = flora::dynamic_code_map();
    for (const Kernels* q : {&base, k}) {
      auto codes = torch::empty({10000}, torch::kUInt8);
      auto absmax = torch::empty({(10000 + 255) / 256});
      flora::cpu::Moment m;
      m.codes = codes.data_ptr<uint8_t>();
      m.absmax = absmax.data_ptr<float>();
      m.block = 256;
      m.code_map = map.data_ptr<float>();
      q->quantize(x.data_ptr<float>(), 10000, m);
      const auto expected = flora::quantize_blockwise(x, 256);
      EXPECT_TRUE(torch::equal(codes, expected.codes)) << q->name;
      EXPECT_TRUE(torch::equal(absmax, expected.absmax)) << q->name;
    }
  }
  std::cout << "[ kernels  ] baseline " << base.name << " compared with " << compared << " wider instruction set(s); in use: "
            << flora::cpu::kernels().name << std::endl;
}

} // namespace

namespace {

// A capturable step takes the path a GPU replays (counts and seeds from the
// device counters, the learning rate from its device copy, the basis change
// computed every step and blended to the identity unless due); on the CPU
// it must give the eager step's bits, over resamples and an lr schedule.
TEST(CapturableStep, EqualsTheEagerStepBitForBit) {
  for (const bool quantized : {false, true}) {
    auto make = [] {
      return std::vector<torch::Tensor>{
          flora::testing::param({8, 24}, 1), flora::testing::param({24, 8}, 2),
          flora::testing::param({40, 6}, 3), flora::testing::param({17}, 4),
          flora::testing::param({12, 10}, 5, torch::kBFloat16), flora::testing::param({3, 4, 5}, 6)};
    };
    auto eager_params = make();
    auto captured_params = make();
    const auto options = FloraOptions(1e-2)
                             .beta1(0.9)
                             .rank(4)
                             .kappa(4)
                             .weight_decay(0.01)
                             .check_finite(false)
                             .quantization(quantized).quantization_min_size(0)
                             .quantization_block_size(64);
    Flora eager(eager_params, options);
    Flora capturable(captured_params, FloraOptions(options).capturable(true));
    for (int s = 1; s <= 30; ++s) {
      const double lr = 1e-2 * std::pow(0.9, s / 5); // a step schedule, through set_lr
      eager.param_groups()[0].options().set_lr(lr);
      capturable.param_groups()[0].options().set_lr(lr);
      for (size_t i = 0; i < eager_params.size(); ++i) {
        const auto g = flora::testing::randn_like_seeded(eager_params[i], 100 * s + i);
        eager_params[i].mutable_grad() = g;
        captured_params[i].mutable_grad() = g.clone();
      }
      eager.step();
      capturable.step();
    }
    for (size_t i = 0; i < eager_params.size(); ++i) {
      const auto where = std::string(quantized ? "8-bit " : "") + "param " + std::to_string(i);
      EXPECT_TRUE(torch::equal(eager_params[i], captured_params[i])) << where;
      const auto* a = flora::testing::state_of<FloraParamState>(eager, eager_params[i]);
      const auto* b = flora::testing::state_of<FloraParamState>(capturable, captured_params[i]);
      ASSERT_TRUE(a != nullptr && b != nullptr) << where;
      EXPECT_TRUE(*a == *b) << where;
      ASSERT_TRUE(b->counters().defined()) << where;
      EXPECT_FALSE(a->counters().defined()) << where;
      // The device counters hold the host's counts.
      EXPECT_EQ(b->counters()[0].item<int64_t>(), 30) << where;
      EXPECT_EQ(b->counters()[1].item<int64_t>(), a->seed()) << where;
    }
  }
}

// The counts a capturable step keeps on the device are what its checkpoint
// holds, and a resumed run continues exactly.
TEST(CapturableStep, CheckpointsWriteTheDeviceCounts) {
  flora::testing::TempDir dir;
  auto p = flora::testing::param({8, 24}, 7);
  const auto options = FloraOptions(1e-2).beta1(0.9).rank(4).kappa(3).check_finite(false).capturable(true);
  Flora opt({p}, options);
  for (int s = 1; s <= 5; ++s) {
    p.mutable_grad() = flora::testing::randn_like_seeded(p, s);
    opt.step();
  }
  // What a graph replay does: the device counters move, the host's do not.
  auto& state = static_cast<FloraParamState&>(*opt.state().at(p.unsafeGetTensorImpl()));
  const int64_t host_step = state.step();
  state.step(0);
  torch::save(opt, dir.file("opt.pt"));
  state.step(host_step);
  auto q = p.detach().clone().requires_grad_(true);
  Flora resumed({q}, options);
  torch::load(resumed, dir.file("opt.pt"));
  const auto& loaded = static_cast<const FloraParamState&>(*resumed.state().at(q.unsafeGetTensorImpl()));
  EXPECT_EQ(loaded.step(), 5);
  EXPECT_EQ(loaded.seed(), state.seed());
  for (int s = 6; s <= 9; ++s) {
    p.mutable_grad() = flora::testing::randn_like_seeded(p, s);
    q.mutable_grad() = p.grad().clone();
    opt.step();
    resumed.step();
  }
  EXPECT_TRUE(torch::equal(p, q));
}

TEST(CapturableStep, NeedsPhiloxAndNoFiniteCheck) {
  auto p = flora::testing::param({4, 4}, 1);
  flora::testing::expect_error(
      [&] { Flora({p}, FloraOptions(1e-2).capturable(true)); }, "capturable(true) needs check_finite(false)");
  flora::testing::expect_error(
      [&] {
        Flora({p}, FloraOptions(1e-2).capturable(true).check_finite(false).projection(ProjectionMode::reference));
      },
      "capturable(true) needs the philox projection");
}

} // namespace
