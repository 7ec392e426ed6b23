// Blockwise 8-bit quantization: the code map and rounding of bitsandbytes
// (fixtures/quantization/blockwise.pt, written from the real package), error
// bounds on odd sizes and special values, and the quantized optimizer.

#include "parity_fixture.h"
#include "test_util.h"
#include "kernels/code_lookup.h"
#include "cpu/fused_kernels.h"

#include <cstring>
#include <limits>
#include <random>

#include <flora/flora.h>

namespace {

using flora::QuantizedTensor;
using flora::testing::fixture_get;
using flora::testing::relative_error;

c10::IValue load_blockwise() {
  const std::string path = std::string(FLORA_FIXTURE_DIR) + "/quantization/blockwise.pt";
  std::ifstream file(path, std::ios::binary);
  EXPECT_TRUE(file.good()) << "missing fixture " << path;
  std::vector<char> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  return torch::pickle_load(bytes);
}

TEST(Quantization, CodeMapIsBitsandbytesDynamicMap) {
  const auto fixture = load_blockwise();
  const auto code = flora::dynamic_code_map();
  EXPECT_TRUE(torch::equal(code, fixture_get(fixture, "code").toTensor()));
  // Only the first entry differs from create_dynamic_map(): bitsandbytes' CPU
  // kernel sets it to -1.
  const auto built = fixture_get(fixture, "dynamic_map").toTensor();
  EXPECT_TRUE(torch::equal(code.slice(0, 1), built.slice(0, 1)));
  EXPECT_EQ(code[0].item<float>(), -1.0f);
  EXPECT_EQ(code[127].item<float>(), 0.0f);
  EXPECT_EQ(code[255].item<float>(), 1.0f);
}

TEST(Quantization, MatchesBitsandbytesOnEveryCase) {
  const auto fixture = load_blockwise();
  int checked = 0;
  for (const c10::IValue c : fixture_get(fixture, "cases").toList()) {
    const auto name = fixture_get(c, "name").toStringRef();
    const auto input = fixture_get(c, "input").toTensor();
    for (const c10::IValue r : fixture_get(c, "results").toList()) {
      const int64_t block = fixture_get(r, "blocksize").toInt();
      const auto q = flora::quantize_blockwise(input, block);
      EXPECT_TRUE(torch::equal(q.codes, fixture_get(r, "codes").toTensor())) << name << " block " << block;
      EXPECT_TRUE(torch::equal(q.absmax, fixture_get(r, "absmax").toTensor())) << name << " block " << block;
      const auto back = flora::dequantize_blockwise(q, block);
      const auto expected = fixture_get(r, "dequantized").toTensor();
      // Equal as values, NaN (none expected) excluded; -0.0 == 0.0.
      EXPECT_TRUE(torch::equal(back, expected)) << name << " block " << block;
      ++checked;
    }
  }
  EXPECT_GE(checked, 8);
}

// Every element gets the nearest code to x / absmax: no other entry is
// strictly nearer; so the error is at most half the gap around the value.
void expect_nearest(const torch::Tensor& x, int64_t block) {
  const auto q = flora::quantize_blockwise(x, block);
  const auto code = flora::dynamic_code_map();
  const int64_t n = x.numel();
  const auto xs = x.flatten();
  const auto absmax = q.absmax.repeat_interleave(block).narrow(0, 0, n);
  const auto v = (xs * absmax.reciprocal()).clamp(-1, 1);
  const auto chosen = code.index({q.codes.flatten().to(torch::kLong)});
  const auto best = (v.unsqueeze(1) - code.unsqueeze(0)).abs().min(1);
  const auto chosen_distance = (v - chosen).abs();
  EXPECT_TRUE(torch::equal(chosen_distance, std::get<0>(best))) << "size " << n << " block " << block;
  // Block absmax is exact and the error bound holds after dequantization.
  const auto back = flora::dequantize_blockwise(q, block).flatten();
  const double max_gap = (code.slice(0, 1) - code.slice(0, 0, -1)).max().item<double>();
  EXPECT_LE(((back - xs).abs() / absmax).max().item<double>(), max_gap / 2 + 1e-6) << "size " << n;
}

TEST(Quantization, NearestCodeOnOddSizes) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  for (int64_t n : {1, 4095, 4097, 1000003}) {
    for (int64_t block : {4096, 256}) {
      if (n > 100000 && block == 256) {
        continue; // the O(n * 256) check is slow; the 4096 run covers the size
      }
      expect_nearest(torch::randn({n}, gen), block);
    }
  }
  // Heavy tails and shapes that are not flat.
  expect_nearest(torch::randn({37, 129}, gen).pow(3), 4096);
}

TEST(Quantization, SpecialValues) {
  // A block of zeros: codes 0, absmax 0, dequantized to zero.
  {
    const auto q = flora::quantize_blockwise(torch::zeros({5000}), 4096);
    EXPECT_TRUE(q.codes.eq(0).all().item<bool>());
    EXPECT_TRUE(q.absmax.eq(0).all().item<bool>());
    EXPECT_TRUE(flora::dequantize_blockwise(q, 4096).eq(0).all().item<bool>());
  }
  // One huge element: it is the block's absmax and round-trips exactly, of
  // either sign; the small ones around it collapse towards 0.
  for (float sign : {1.0f, -1.0f}) {
    auto x = torch::randn({4096});
    x[100] = sign * 1e30f;
    const auto back = flora::dequantize_blockwise(flora::quantize_blockwise(x, 4096), 4096);
    EXPECT_EQ(back[100].item<float>(), sign * 1e30f);
    EXPECT_LE(back.narrow(0, 0, 100).abs().max().item<double>(), 1e30 * 1e-6);
  }
  // Denormals next to normal values: below the code map's resolution, 0.
  {
    auto x = torch::full({64}, 1e-40f);
    x[0] = 1.0f;
    const auto back = flora::dequantize_blockwise(flora::quantize_blockwise(x, 4096), 4096);
    EXPECT_EQ(back[0].item<float>(), 1.0f);
    EXPECT_TRUE(back.narrow(0, 1, 63).abs().le(1e-6).all().item<bool>());
  }
  // NaN does not count toward absmax (and gets code 0).
  {
    auto x = torch::ones({8});
    x[3] = std::numeric_limits<float>::quiet_NaN();
    const auto q = flora::quantize_blockwise(x, 4096);
    EXPECT_EQ(q.absmax[0].item<float>(), 1.0f);
    EXPECT_EQ(q.codes[3].item<uint8_t>(), 0);
  }
}

TEST(Quantization, BadInputIsRejected) {
  flora::testing::expect_error([] { flora::quantize_blockwise(torch::ones({4}), 0); }, "block size must be positive, got 0");
  QuantizedTensor wrong{torch::zeros({4}, torch::kUInt8), torch::zeros({2})};
  flora::testing::expect_error(
      [&] { flora::quantize_blockwise_into(torch::ones({4}), wrong, 4096); }, "quantize_blockwise_: absmax has 2 elements, expected 1");
  flora::testing::expect_error(
      [&] { flora::dequantize_blockwise(QuantizedTensor{torch::zeros({4}), torch::zeros({1})}, 4096); }, "dequantize_blockwise: codes has dtype Float, expected Byte");
}

// A block size beyond the tensor is one block, up to INT64_MAX (the fuzz
// target loaded that and the block count overflowed int64): the same codes
// as a block size equal to the tensor's length, standalone and in a step.
TEST(Quantization, ABlockSizeNearInt64MaxIsOneBlock) {
  constexpr int64_t kHuge = std::numeric_limits<int64_t>::max();
  const auto x = torch::randn({1000});
  const auto huge = flora::quantize_blockwise(x, kHuge);
  const auto exact = flora::quantize_blockwise(x, 1000);
  EXPECT_EQ(huge.absmax.numel(), 1);
  EXPECT_TRUE(torch::equal(huge.codes, exact.codes));
  EXPECT_TRUE(torch::equal(huge.absmax, exact.absmax));
  EXPECT_TRUE(torch::equal(flora::dequantize_blockwise(huge, kHuge), flora::dequantize_blockwise(exact, 1000)));

  std::vector<torch::Tensor> runs;
  for (const int64_t block : {kHuge, int64_t{96}}) { // 96: the whole 8 x 12 matrix
    torch::manual_seed(3);
    std::vector<torch::Tensor> params = {torch::randn({8, 12}, torch::requires_grad())};
    flora::Flora opt(params, flora::FloraOptions(1e-2).beta1(0.9).rank(2).quantization(true).quantization_min_size(0)
                                 .quantization_block_size(block));
    for (int step = 0; step < 3; ++step) {
      params[0].mutable_grad() = torch::randn({8, 12});
      opt.step();
    }
    runs.push_back(params[0].detach().clone());
  }
  EXPECT_TRUE(torch::equal(runs[0], runs[1]));
}

// ---- the optimizer with 8-bit states --------------------------------------

using Mlp = flora::testing::TanhMlp;

// The 8-bit optimizer follows the float32 one over 100 steps of a real
// problem: its loss stays within 10% of the float32 run's at every step, and
// the two trained models agree on held-out inputs to 5% (relative L2 of the
// outputs), for full and compressed momentum. (Parameters themselves drift
// apart along directions the loss does not see, so they are not compared.)
TEST(QuantizedFlora, TracksTheFloat32OptimizerOver100Steps) {
  torch::manual_seed(0);
  Mlp teacher(32, 64, 8);
  const auto x = torch::randn({256, 32});
  torch::Tensor y;
  {
    torch::NoGradGuard no_grad;
    y = teacher.forward(x);
  }
  for (const auto& base : {flora::FloraOptions(3e-2).beta1(0.9).factorize_second_moment(false),
                           flora::FloraOptions(3e-2).beta1(0.9).rank(8)}) {
    auto run = [&](bool quantized) {
      torch::manual_seed(1);
      auto student = std::make_shared<Mlp>(32, 64, 8);
      flora::Flora opt(
          student->parameters(), flora::FloraOptions(base).quantization(quantized).quantization_min_size(0));
      std::vector<double> losses;
      for (int s = 0; s < 100; ++s) {
        opt.zero_grad();
        auto loss = torch::mse_loss(student->forward(x), y);
        loss.backward();
        opt.step();
        losses.push_back(loss.item<double>());
      }
      return std::make_pair(student, losses);
    };
    const auto [fp32, fp32_losses] = run(false);
    const auto [int8, int8_losses] = run(true);
    EXPECT_LT(fp32_losses.back(), fp32_losses.front() / 5) << "the float32 run learns";
    for (size_t s = 0; s < fp32_losses.size(); ++s) {
      EXPECT_NEAR(int8_losses[s], fp32_losses[s], 0.1 * fp32_losses[s]) << "step " << s;
    }
    torch::NoGradGuard no_grad;
    const auto held_out = torch::randn({512, 32});
    const auto out32 = fp32->forward(held_out);
    const double disagreement =
        (int8->forward(held_out) - out32).norm().item<double>() / out32.norm().item<double>();
    EXPECT_LT(disagreement, 0.05);
    std::cout << "[ 8-bit    ] rank " << base.rank().value_or(0) << ": final loss " << int8_losses.back()
              << " (float32 " << fp32_losses.back() << "), held-out outputs differ by " << disagreement << std::endl;
  }
}

TEST(QuantizedFlora, StateBytesFallToAboutAQuarter) {
  // Full second moment and full momentum: all state is quantizable.
  const auto options = flora::FloraOptions(1e-2).beta1(0.9).factorize_second_moment(false);
  auto bytes_of = [&](bool quantized) {
    std::vector<torch::Tensor> params = {
        torch::randn({512, 384}, torch::requires_grad()), torch::randn({4097}, torch::requires_grad())};
    flora::Flora opt(params, flora::FloraOptions(options).quantization(quantized).quantization_min_size(0));
    for (auto& p : params) {
      p.mutable_grad() = torch::randn_like(p);
    }
    opt.step();
    return opt.state_bytes();
  };
  const double ratio = static_cast<double>(bytes_of(true)) / static_cast<double>(bytes_of(false));
  std::cout << "[ 8-bit    ] state bytes, 8-bit / float32: " << ratio << std::endl;
  EXPECT_GT(ratio, 0.25); // one byte per element plus one float per 4096 and the RMS
  EXPECT_LT(ratio, 0.252);
}

TEST(QuantizedFlora, CheckpointsHoldTheCodesAndResumeExactly) {
  flora::testing::TempDir dir;
  const auto options = flora::FloraOptions(1e-2)
                           .beta1(0.9)
                           .rank(4)
                           .kappa(3)
                           .quantization(true)
                           .quantization_min_size(0)
                           .quantization_block_size(64);
  auto make = [] {
    torch::manual_seed(3);
    return std::vector<torch::Tensor>{
        torch::randn({8, 40}, torch::requires_grad()), torch::randn({100}, torch::requires_grad()),
        torch::randn({3, 4, 5}, torch::requires_grad())};
  };
  auto grads = [](std::vector<torch::Tensor>& ps, int step) {
    for (size_t i = 0; i < ps.size(); ++i) {
      ps[i].mutable_grad() = flora::testing::randn_like_seeded(ps[i], 100 * step + i);
    }
  };
  auto straight = make();
  flora::Flora a(straight, options);
  for (int s = 0; s < 8; ++s) {
    grads(straight, s);
    a.step();
  }
  auto resumed = make();
  {
    flora::Flora first(resumed, options);
    for (int s = 0; s < 4; ++s) {
      grads(resumed, s);
      first.step();
    }
    flora::save_atomic(first, dir.file("q.pt"));
  }
  flora::Flora second(resumed, options);
  torch::load(second, dir.file("q.pt"));
  const auto& loaded = static_cast<const flora::FloraParamState&>(*second.state().at(resumed[1].unsafeGetTensorImpl()));
  EXPECT_EQ(loaded.exp_avg().scalar_type(), torch::kUInt8);
  EXPECT_EQ(loaded.exp_avg_absmax().numel(), 2); // 100 elements, blocks of 64
  for (int s = 4; s < 8; ++s) {
    grads(resumed, s);
    second.step();
  }
  for (size_t i = 0; i < straight.size(); ++i) {
    EXPECT_TRUE(torch::equal(straight[i], resumed[i])) << i;
  }

}

} // namespace

namespace {

// The CPU kernels' table-driven search gives nearest_code's answer: at both
// ends of every 16-bit bucket of floats, in the middle, and at a million
// random patterns (and every input maps as the rule says, NaN included).
TEST(CodeLookup, EqualsTheBinarySearchEverywhere) {
  const auto map = flora::dynamic_code_map();
  const float* m = map.data_ptr<float>();
  const auto lookup = flora::detail::CodeLookup::of(m);
  auto check = [&](uint32_t bits) {
    float v;
    std::memcpy(&v, &bits, sizeof v);
    ASSERT_EQ(lookup->nearest(v), flora::detail::nearest_code(m, v)) << std::hex << bits;
  };
  for (uint32_t top = 0; top < 65536; ++top) {
    for (const uint32_t low : {0x0000u, 0x0001u, 0x7FFFu, 0x8000u, 0xFFFEu, 0xFFFFu}) {
      check((top << 16) | low);
    }
  }
  std::mt19937 gen(7);
  for (int i = 0; i < 1000000; ++i) {
    check(static_cast<uint32_t>(gen()));
  }
  // Every code's own value maps to that code (ties go low, as the rule says).
  for (int c = 0; c < 256; ++c) {
    EXPECT_EQ(lookup->nearest(m[c]), flora::detail::nearest_code(m, m[c]));
  }
}

} // namespace

namespace {

const flora::FloraParamState& state_of(const flora::Flora& opt, const torch::Tensor& p) {
  return static_cast<const flora::FloraParamState&>(*opt.state().at(p.unsafeGetTensorImpl()));
}

// quantization_min_size: parameters below it keep float32 moments and step
// exactly as without quantization (both projection modes, so the fused and
// the reference step); those at or above it are 8-bit; state_bytes and the
// estimate agree.
TEST(QuantizedFlora, SmallParametersKeepFloat32Moments) {
  for (const auto mode : {flora::ProjectionMode::philox, flora::ProjectionMode::reference}) {
    const auto options = flora::FloraOptions(1e-2).beta1(0.9).rank(8).kappa(2).projection(mode);
    auto make = [] {
      torch::manual_seed(4);
      // 4096 elements (quantized at the default), 4032, a bias, a 3-d tensor of 4096.
      return std::vector<torch::Tensor>{
          torch::randn({64, 64}, torch::requires_grad()), torch::randn({63, 64}, torch::requires_grad()),
          torch::randn({64}, torch::requires_grad()), torch::randn({16, 16, 16}, torch::requires_grad())};
    };
    auto mixed = make();
    auto plain = make();
    flora::Flora a(mixed, flora::FloraOptions(options).quantization(true));
    flora::Flora b(plain, options);
    for (int s = 0; s < 5; ++s) {
      for (size_t i = 0; i < mixed.size(); ++i) {
        mixed[i].mutable_grad() = flora::testing::randn_like_seeded(mixed[i], 10 * s + i);
        plain[i].mutable_grad() = mixed[i].grad().clone();
      }
      a.step();
      b.step();
    }
    EXPECT_EQ(state_of(a, mixed[0]).exp_avg().scalar_type(), torch::kUInt8);
    EXPECT_EQ(state_of(a, mixed[3]).exp_avg_sq().scalar_type(), torch::kUInt8);
    EXPECT_EQ(state_of(a, mixed[1]).exp_avg().scalar_type(), torch::kFloat);
    EXPECT_EQ(state_of(a, mixed[2]).exp_avg().scalar_type(), torch::kFloat);
    EXPECT_EQ(state_of(a, mixed[2]).exp_avg_sq().scalar_type(), torch::kFloat);
    EXPECT_FALSE(state_of(a, mixed[2]).exp_avg_sq_absmax().defined());
    for (const size_t i : {1, 2}) {
      EXPECT_TRUE(torch::equal(mixed[i], plain[i])) << "parameter " << i;
    }
    EXPECT_FALSE(torch::equal(mixed[0], plain[0])) << "the 8-bit parameter steps on 8-bit moments";
    std::vector<std::vector<int64_t>> shapes;
    for (const auto& p : mixed) {
      shapes.push_back(p.sizes().vec());
    }
    EXPECT_EQ(a.state_bytes(), flora::estimate_state_bytes(shapes, flora::FloraOptions(options).quantization(true)));
  }
}

// Why small parameters stay float32: a second moment far below its block's
// absmax (an element whose gradient is rounding noise, as an attention key
// bias's is) rounds to 0 in 8 bits, so its next update is
// g / sqrt((1 - beta2_t) g^2) instead of about g / sqrt(v): the bias of the
// soak benchmark grew without bound from this. With min_size 0 (flora-opt's
// rule) the moment is lost and the element moves far more than in float32;
// with the default it is kept and the step is float32's exactly.
TEST(QuantizedFlora, TinySecondMomentsSurviveOnlyBelowTheMinimumSize) {
  auto run = [](const flora::FloraOptions& options) {
    auto bias = torch::ones({192}).requires_grad_();
    flora::Flora opt({bias}, options);
    std::vector<torch::Tensor> moves;
    for (int s = 0; s < 20; ++s) {
      auto g = flora::testing::randn_like_seeded(bias, s);
      g.narrow(0, 64, 64).mul_(1e-9); // the "key" third: noise-sized gradients
      bias.mutable_grad() = g;
      const auto before = bias.detach().clone();
      opt.step();
      moves.push_back((bias.detach() - before).narrow(0, 64, 64).abs().mean());
    }
    return std::make_pair(torch::stack(moves), state_of(opt, bias).exp_avg_sq().clone());
  };
  const auto base = flora::FloraOptions(1e-2).beta1(0.9).scale_parameter(false);
  const auto [fp32_moves, fp32_v] = run(base);
  const auto [kept_moves, kept_v] = run(flora::FloraOptions(base).quantization(true));
  const auto [lost_moves, lost_codes] = run(flora::FloraOptions(base).quantization(true).quantization_min_size(0));
  EXPECT_TRUE(torch::equal(kept_moves, fp32_moves));
  EXPECT_TRUE(torch::equal(kept_v, fp32_v));
  EXPECT_GT(fp32_v.narrow(0, 64, 64).min().item<double>(), 0.0);
  // 8-bit: the noise third's moves grow with 1 / sqrt(1 - beta2_t) once its
  // moment rounds to 0 (from the second step on).
  const double ratio = (lost_moves.narrow(0, 10, 10).mean() / fp32_moves.narrow(0, 10, 10).mean()).item<double>();
  std::cout << "[ 8-bit    ] noise-gradient elements, steps 11-20: moved " << ratio
            << "x as far as in float32 with quantization_min_size 0" << std::endl;
  EXPECT_GT(ratio, 2.0);
}

// Every instruction set's quantiser (the vectorised ones gather from the
// lookup's tables) gives each element the rule's code, nearest_code's binary
// search, and its dequantiser map[code] * absmax exactly: over both ends and
// the middle of every 16-bit bucket of [-1, 1], random patterns, NaN, and
// blocks whose length is not a multiple of any vector width.
TEST(CodeLookup, EveryInstructionSetQuantizesAsTheRule) {
  const auto map = flora::dynamic_code_map();
  const float* m = map.data_ptr<float>();
  std::vector<float> values;
  auto add = [&](uint32_t bits) {
    float v;
    std::memcpy(&v, &bits, sizeof v);
    if (v != v || std::fabs(v) <= 1.0f) {
      values.push_back(v);
    }
  };
  for (uint32_t top = 0; top < 65536; ++top) {
    for (const uint32_t low : {0x0000u, 0x0001u, 0x7FFFu, 0x8000u, 0xFFFEu, 0xFFFFu}) {
      add((top << 16) | low);
    }
  }
  std::mt19937 gen(11);
  for (int i = 0; i < 200000; ++i) {
    add(static_cast<uint32_t>(gen()));
  }
  for (int c = 0; c < 256; ++c) {
    values.push_back(m[c]);
  }
  // Each block starts with 1, so its absmax is 1 and x / absmax is x itself.
  constexpr int64_t block = 4093;
  std::vector<float> x;
  for (size_t i = 0; i < values.size(); ++i) {
    if (x.size() % block == 0) {
      x.push_back(1.0f);
    }
    x.push_back(values[i]);
  }
  const auto n = static_cast<int64_t>(x.size());
  const int64_t blocks = (n + block - 1) / block;
  std::vector<uint8_t> expected(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    expected[i] = flora::detail::nearest_code(m, x[i]);
  }
  int compared = 0;
  for (const flora::cpu::Kernels* k :
       {&flora::cpu::kernels_default(), flora::cpu::kernels_avx2(), flora::cpu::kernels_avx512()}) {
    if (k == nullptr) {
      continue;
    }
    ++compared;
    std::vector<uint8_t> codes(x.size());
    std::vector<float> absmax(blocks);
    flora::cpu::Moment moment;
    moment.codes = codes.data();
    moment.absmax = absmax.data();
    moment.block = block;
    moment.code_map = m;
    k->quantize(x.data(), n, moment);
    int64_t wrong = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      wrong += codes[i] != expected[i] ? 1 : 0;
    }
    EXPECT_EQ(wrong, 0) << k->name << " of " << n;
    for (const float a : absmax) {
      ASSERT_EQ(a, 1.0f) << k->name;
    }
    // Dequantised from an odd offset too (a chunk of the fused step).
    for (const int64_t begin : {int64_t{0}, int64_t{4093 * 3}}) {
      std::vector<float> out(n - begin);
      flora::cpu::Moment from = moment;
      from.codes = codes.data() + begin;
      from.absmax = absmax.data() + begin / block;
      k->dequantize(from, n - begin, out.data());
      int64_t off = 0;
      for (int64_t i = begin; i < n; ++i) {
        off += out[i - begin] == m[codes[i]] * absmax[i / block] ? 0 : 1;
      }
      EXPECT_EQ(off, 0) << k->name << " dequantized from " << begin;
    }
  }
  EXPECT_GE(compared, 1);
}

} // namespace
