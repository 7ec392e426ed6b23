// The CUDA kernels against the CPU kernels, operator by operator, over odd
// sizes, every parameter dtype and the layouts the CPU accepts; the argument
// checks of every operator through the dispatcher (tests/op_cases.h); the
// quantization kernels inside a CUDA-graph capture. Skipped without a GPU.

#include "../cuda_util.h"
#include "../op_cases.h"
#include "../test_util.h"

#include <flora/flora.h>

#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cmath>
#include <map>

namespace {

using flora::testing::error_of;
using flora::testing::names_argument;
using flora::testing::op_cases;
using flora::testing::OpArgs;
using flora::testing::relative_error;

const std::vector<std::pair<int64_t, int64_t>> kShapes = {
    {1, 1}, {1, 4097}, {4097, 1}, {3, 5}, {64, 64}, {129, 33}, {768, 256}, {100, 1000}};

// ---------------------------------------------------------------- argument checks

TEST(CudaOpCases, ValidArgumentsRunAndWrittenArgumentsBumpTheirVersion) {
  FLORA_REQUIRE_CUDA();
  for (const auto& c : op_cases()) {
    OpArgs args = c.make(torch::kCUDA);
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
        EXPECT_EQ(args[name]._version(), before[name]) << c.name << ": " << name;
      }
    }
  }
  torch::cuda::synchronize(); // a kernel fault surfaces here, in this test
}

TEST(CudaOpCases, BadArgumentsAreRejectedByName) {
  FLORA_REQUIRE_CUDA();
  for (const auto& c : op_cases()) {
    for (const auto& name : c.make(torch::kCUDA).names()) {
      const std::string prefix = c.name + ": " + name + " ";
      OpArgs args = c.make(torch::kCUDA);
      args[name] = args[name].to(torch::kDouble);
      const auto message = error_of([&] { c.call(args); });
      EXPECT_NE(message.find(prefix + "has dtype Double"), std::string::npos) << message;
      if (std::find(c.shaped.begin(), c.shaped.end(), name) != c.shaped.end()) {
        OpArgs bad = c.make(torch::kCUDA);
        bad[name] = flora::testing::misshapen(bad[name]);
        const auto shape_message = error_of([&] { c.call(bad); });
        EXPECT_NE(shape_message.find(prefix), std::string::npos) << shape_message;
      }
    }
  }
}

// One argument on the other device (the code map, a CPU tensor, on the GPU):
// an error naming it, never an illegal memory access.
TEST(CudaOpCases, ArgumentsOnAnotherDeviceAreRejectedByName) {
  FLORA_REQUIRE_CUDA();
  for (const auto& c : op_cases()) {
    const auto names = c.make(torch::kCUDA).names();
    if (names.size() < 2) {
      continue;
    }
    for (const auto& name : names) {
      OpArgs args = c.make(torch::kCUDA);
      args[name] = args[name].is_cuda() ? args[name].cpu() : args[name].cuda();
      const auto message = error_of([&] { c.call(args); });
      EXPECT_TRUE(names_argument(message, name)) << c.name << " " << name << ": " << message;
    }
  }
  torch::cuda::synchronize();
}

// ---------------------------------------------------------------- operators

TEST(CudaKernels, PhiloxBitsAreIdenticalAndNormalsAgree) {
  FLORA_REQUIRE_CUDA();
  double worst = 0.0;
  int64_t bits_checked = 0;
  for (const auto& [rows, cols] : kShapes) {
    for (int64_t seed : {int64_t{0}, int64_t{42}, static_cast<int64_t>(0xfedcba9876543210ull)}) {
      auto cpu_bits = torch::empty({rows, cols}, torch::kInt);
      auto gpu_bits = torch::empty({rows, cols}, torch::dtype(torch::kInt).device(torch::kCUDA));
      flora::ops::philox_bits_(cpu_bits, seed);
      flora::ops::philox_bits_(gpu_bits, seed);
      EXPECT_TRUE(torch::equal(cpu_bits, gpu_bits.cpu())) << rows << "x" << cols;
      bits_checked += rows * cols;

      auto cpu = torch::empty({rows, cols});
      auto gpu = torch::empty({rows, cols}, torch::device(torch::kCUDA));
      flora::ops::philox_normal_(cpu, seed, 0.5);
      flora::ops::philox_normal_(gpu, seed, 0.5);
      const double error = (cpu - gpu.cpu()).abs().max().item<double>() / 0.5;
      worst = std::max(worst, error);
      EXPECT_LE(error, 2e-6) << rows << "x" << cols;
    }
  }
  std::cout << "[ agreement ] projections: " << bits_checked << " 32-bit draws CPU == GPU: "
            << (::testing::Test::HasFailure() ? "NO" : "yes") << "; largest |normal CPU - GPU| " << worst
            << " (bound 2e-6)" << std::endl;
  for (auto dtype : {torch::kHalf, torch::kBFloat16}) {
    auto cpu = torch::empty({33, 65}, dtype);
    auto gpu = torch::empty({33, 65}, torch::dtype(dtype).device(torch::kCUDA));
    flora::ops::philox_normal_(cpu, 9, 1.0);
    flora::ops::philox_normal_(gpu, 9, 1.0);
    // Rounded from float32 values 2e-6 apart: equal or one ulp apart.
    EXPECT_LE((cpu.to(torch::kFloat) - gpu.cpu().to(torch::kFloat)).abs().max().item<double>(), 0.04) << dtype;
  }
  // A strided output: written in place, the same values.
  auto wide = torch::zeros({5, 16}, torch::dtype(torch::kInt).device(torch::kCUDA));
  auto view = wide.narrow(1, 0, 7);
  flora::ops::philox_bits_(view, 4);
  auto dense = torch::empty({5, 7}, torch::kInt);
  flora::ops::philox_bits_(dense, 4);
  EXPECT_TRUE(torch::equal(view.cpu(), dense));
}

TEST(CudaKernels, SecondMomentFactoredMatchesCpu) {
  FLORA_REQUIRE_CUDA();
  for (auto dtype : {torch::kFloat, torch::kHalf, torch::kBFloat16}) {
    for (const auto& [rows, cols] : kShapes) {
      const auto grad = torch::randn({rows, cols}).to(dtype);
      auto row = torch::rand({rows}) + 0.1;
      auto col = torch::rand({cols}) + 0.1;
      auto row_gpu = row.cuda();
      auto col_gpu = col.cuda();
      const auto u_cpu = flora::ops::second_moment_factored_(grad, row, col, 0.8, 1e-30);
      const auto u_gpu = flora::ops::second_moment_factored_(grad.cuda(), row_gpu, col_gpu, 0.8, 1e-30);
      EXPECT_LT(relative_error(row_gpu, row), 1e-5) << dtype << " " << rows << "x" << cols;
      EXPECT_LT(relative_error(col_gpu, col), 1e-5) << dtype << " " << rows << "x" << cols;
      EXPECT_LT(relative_error(u_gpu, u_cpu), 1e-5) << dtype << " " << rows << "x" << cols;
    }
  }
}

// More row tiles (of 64 rows) than a grid's y dimension holds (65,535).
TEST(CudaKernels, SecondMomentFactoredTallMatrix) {
  FLORA_REQUIRE_CUDA();
  const int64_t rows = 4194305;
  const auto grad = torch::randn({rows, 1});
  auto row = torch::rand({rows}) + 0.1, col = torch::rand({1}) + 0.1;
  auto row_gpu = row.cuda(), col_gpu = col.cuda();
  const auto u_cpu = flora::ops::second_moment_factored_(grad, row, col, 0.8, 1e-30);
  const auto u_gpu = flora::ops::second_moment_factored_(grad.cuda(), row_gpu, col_gpu, 0.8, 1e-30);
  EXPECT_LT(relative_error(row_gpu, row), 1e-5);
  EXPECT_LT(relative_error(col_gpu, col), 1e-5);
  EXPECT_LT(relative_error(u_gpu, u_cpu), 1e-5);
}

// A transposed view (e.g. the gradient of a weight used as W.t()).
TEST(CudaKernels, SecondMomentFactoredTransposedGradient) {
  FLORA_REQUIRE_CUDA();
  const auto grad = torch::randn({300, 129}).t();
  auto row = torch::rand({129}) + 0.1, col = torch::rand({300}) + 0.1;
  auto row_gpu = row.cuda(), col_gpu = col.cuda();
  const auto transposed_gpu = grad.t().contiguous().cuda().t(); // the same view on the GPU
  ASSERT_FALSE(transposed_gpu.is_contiguous());
  ASSERT_TRUE(torch::equal(transposed_gpu.cpu(), grad));
  const auto u_cpu = flora::ops::second_moment_factored_(grad, row, col, 0.8, 1e-30);
  const auto u_gpu = flora::ops::second_moment_factored_(transposed_gpu, row_gpu, col_gpu, 0.8, 1e-30);
  EXPECT_LT(relative_error(row_gpu, row), 1e-5);
  EXPECT_LT(relative_error(col_gpu, col), 1e-5);
  EXPECT_LT(relative_error(u_gpu, u_cpu), 1e-5);
}

TEST(CudaKernels, SecondMomentFullMatchesCpu) {
  FLORA_REQUIRE_CUDA();
  for (auto dtype : {torch::kFloat, torch::kHalf, torch::kBFloat16}) {
    for (int64_t n : {1, 3, 4095, 4097, 1000003}) {
      const auto grad = torch::randn({n}).to(dtype);
      auto v = torch::rand({n});
      auto v_gpu = v.cuda();
      const auto u_cpu = flora::ops::second_moment_full_(grad, v, 0.9, 1e-30);
      const auto u_gpu = flora::ops::second_moment_full_(grad.cuda(), v_gpu, 0.9, 1e-30);
      EXPECT_LT(relative_error(v_gpu, v), 1e-6) << dtype << " " << n;
      EXPECT_LT(relative_error(u_gpu, u_cpu), 1e-5) << dtype << " " << n;
    }
  }
}

TEST(CudaKernels, ApplyUpdateMatchesCpu) {
  FLORA_REQUIRE_CUDA();
  for (auto dtype : {torch::kFloat, torch::kHalf, torch::kBFloat16}) {
    for (int64_t n : {1, 4097, 1000003}) {
      for (bool scale : {true, false}) {
        auto param = (torch::randn({n}) * 0.2).to(dtype);
        auto param_gpu = param.cuda();
        const auto update = torch::randn({n}) * 2;
        auto u_cpu = update.clone();
        auto u_gpu = update.cuda();
        const auto rms_cpu = flora::ops::apply_update_(param, u_cpu, 0.03, 1e-3, scale, 1.0, 0.1);
        const auto rms_gpu = flora::ops::apply_update_(param_gpu, u_gpu, 0.03, 1e-3, scale, 1.0, 0.1);
        EXPECT_NEAR(rms_gpu.item<double>(), rms_cpu.item<double>(), 1e-5 * rms_cpu.item<double>());
        // Low-precision parameters may round differently by one ulp.
        const double tolerance = dtype == torch::kFloat ? 1e-5 : 1e-2;
        EXPECT_LT(relative_error(param_gpu, param), tolerance) << dtype << " " << n << " scale " << scale;
        EXPECT_EQ(param_gpu.scalar_type(), dtype);
        // ops.h: update ends holding the applied step, on both devices.
        EXPECT_LT(relative_error(u_gpu, u_cpu), 1e-5) << dtype << " " << n << " scale " << scale;
        EXPECT_FALSE(torch::equal(u_gpu.cpu(), update)) << "update was left as it was";
      }
    }
  }
}

struct FullMomentLists {
  std::vector<torch::Tensor> params, grads, exp_avg_sqs, exp_avgs;
  std::vector<double> beta2s, lrs;

  FullMomentLists on(const torch::Device& device) const {
    FullMomentLists out{{}, {}, {}, {}, beta2s, lrs};
    for (size_t i = 0; i < params.size(); ++i) {
      out.params.push_back(params[i].to(device, /*non_blocking=*/false, /*copy=*/true));
      out.grads.push_back(grads[i].to(device, false, true));
      out.exp_avg_sqs.push_back(exp_avg_sqs[i].to(device, false, true));
      out.exp_avgs.push_back(exp_avgs[i].to(device, false, true));
    }
    return out;
  }
  std::vector<torch::Tensor> step(bool momentum) {
    return flora::ops::full_moment_step_(
        params, grads, exp_avg_sqs, momentum ? exp_avgs : std::vector<torch::Tensor>{}, beta2s, lrs, 1e-30, 1e-3,
        0.9, true, 1.0, 0.01);
  }
};

void expect_full_moment_step_matches(const FullMomentLists& lists, bool momentum, double state_bound) {
  auto cpu = lists.on(torch::kCPU);
  auto gpu = lists.on(torch::kCUDA);
  const auto rms_cpu = cpu.step(momentum);
  const auto rms_gpu = gpu.step(momentum);
  ASSERT_EQ(rms_gpu.size(), rms_cpu.size());
  for (size_t i = 0; i < cpu.params.size(); ++i) {
    const double tolerance = cpu.params[i].scalar_type() == torch::kFloat ? 1e-5 : 1e-2;
    EXPECT_LT(relative_error(gpu.params[i], cpu.params[i]), tolerance) << i;
    EXPECT_LT(relative_error(gpu.exp_avg_sqs[i], cpu.exp_avg_sqs[i]), state_bound) << i;
    if (momentum) {
      EXPECT_LT(relative_error(gpu.exp_avgs[i], cpu.exp_avgs[i]), 1e-5) << i;
    }
    EXPECT_NEAR(rms_gpu[i].item<double>(), rms_cpu[i].item<double>(), 1e-5 * rms_cpu[i].item<double>()) << i;
  }
}

// Many tensors of many sizes: several launch groups, tensors whose chunks
// span groups, one tensor of thousands of chunks, with and without momentum.
TEST(CudaKernels, FullMomentStepMatchesCpu) {
  FLORA_REQUIRE_CUDA();
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    for (bool momentum : {false, true}) {
      FullMomentLists lists;
      for (int i = 0; i < 140; ++i) {
        const int64_t n = i == 60 ? 5000011 : (i % 7 == 0) ? 50000 + i : 1 + (i * 37) % 3000;
        lists.params.push_back((torch::randn({n}) * 0.3).to(dtype));
        lists.grads.push_back(torch::randn({n}).to(dtype));
        lists.exp_avg_sqs.push_back(torch::rand({n}));
        lists.exp_avgs.push_back(torch::randn({n}) * 0.1);
        lists.beta2s.push_back(0.5 + 0.003 * i);
        lists.lrs.push_back(1e-2 * (1 + i % 3));
      }
      expect_full_moment_step_matches(lists, momentum, 1e-5);
    }
  }
}

// beta2_t = 1 - t^-0.8 late in training: 1 - beta2_t must be rounded from
// double (~3e-5 relative error at t = 1e4 otherwise). With v = 0 the error
// would be all of the new v.
TEST(CudaKernels, FullMomentStepKeepsOneMinusBeta2Exact) {
  FLORA_REQUIRE_CUDA();
  FullMomentLists lists;
  for (double step : {1e4, 1e5, 1e6}) {
    lists.params.push_back(torch::randn({4099}) * 0.3);
    lists.grads.push_back(torch::randn({4099}));
    lists.exp_avg_sqs.push_back(torch::zeros({4099}));
    lists.exp_avgs.push_back(torch::zeros({4099}));
    lists.beta2s.push_back(1.0 - std::pow(step, -0.8));
    lists.lrs.push_back(1e-2);
  }
  expect_full_moment_step_matches(lists, /*momentum=*/false, 1e-6);

  auto v = torch::zeros({4099});
  auto v_gpu = v.cuda();
  const auto grad = torch::randn({4099});
  flora::ops::second_moment_full_(grad, v, lists.beta2s[0], 1e-30);
  flora::ops::second_moment_full_(grad.cuda(), v_gpu, lists.beta2s[0], 1e-30);
  EXPECT_LT(relative_error(v_gpu, v), 1e-6);
}

// A conv weight in channels_last (4-d: the full second-moment path), its
// gradient and states too: the CPU accepts it, so must the GPU.
TEST(CudaKernels, ChannelsLastConvWeight) {
  FLORA_REQUIRE_CUDA();
  const auto cl = torch::MemoryFormat::ChannelsLast;
  const auto p0 = torch::randn({64, 32, 3, 3}) * 0.2;
  const auto g0 = torch::randn({64, 32, 3, 3});
  const auto v0 = torch::rand({64, 32, 3, 3}) + 0.1;
  const auto m0 = torch::randn({64, 32, 3, 3}) * 0.1;
  const auto on = [&](const torch::Tensor& t, const torch::Device& d) { return t.to(d).contiguous(cl); };

  for (const auto& device : {torch::Device(torch::kCPU), torch::Device(torch::kCUDA)}) {
    ASSERT_FALSE(on(p0, device).is_contiguous());
  }
  auto v_cpu = on(v0, torch::kCPU), v_gpu = on(v0, torch::kCUDA);
  auto u_cpu = flora::ops::second_moment_full_(on(g0, torch::kCPU), v_cpu, 0.9, 1e-30).contiguous(cl);
  auto u_gpu = flora::ops::second_moment_full_(on(g0, torch::kCUDA), v_gpu, 0.9, 1e-30).contiguous(cl);
  EXPECT_TRUE(v_gpu.is_contiguous(cl));
  EXPECT_LT(relative_error(v_gpu, v_cpu), 1e-6);
  EXPECT_LT(relative_error(u_gpu, u_cpu), 1e-5);
  auto p_cpu = on(p0, torch::kCPU), p_gpu = on(p0, torch::kCUDA);
  flora::ops::apply_update_(p_cpu, u_cpu, 0.05, 1e-3, true, 1.0, 0.1);
  flora::ops::apply_update_(p_gpu, u_gpu, 0.05, 1e-3, true, 1.0, 0.1);
  EXPECT_TRUE(p_gpu.is_contiguous(cl));
  EXPECT_LT(relative_error(p_gpu, p_cpu), 1e-5);
  EXPECT_LT(relative_error(u_gpu, u_cpu), 1e-5);

  for (bool momentum : {false, true}) {
    std::vector<torch::Tensor> ps_c = {on(p0, torch::kCPU)}, gs_c = {on(g0, torch::kCPU)}, vs_c = {on(v0, torch::kCPU)},
                               ms_c = {on(m0, torch::kCPU)};
    std::vector<torch::Tensor> ps_g = {on(p0, torch::kCUDA)}, gs_g = {on(g0, torch::kCUDA)},
                               vs_g = {on(v0, torch::kCUDA)}, ms_g = {on(m0, torch::kCUDA)};
    const std::vector<torch::Tensor> none;
    const auto rms_c = flora::ops::full_moment_step_(
        ps_c, gs_c, vs_c, momentum ? ms_c : none, {0.9}, {0.05}, 1e-30, 1e-3, 0.9, true, 1.0, 0.1);
    const auto rms_g = flora::ops::full_moment_step_(
        ps_g, gs_g, vs_g, momentum ? ms_g : none, {0.9}, {0.05}, 1e-30, 1e-3, 0.9, true, 1.0, 0.1);
    EXPECT_TRUE(ps_g[0].is_contiguous(cl));
    EXPECT_LT(relative_error(ps_g[0], ps_c[0]), 1e-5) << "momentum " << momentum;
    EXPECT_LT(relative_error(vs_g[0], vs_c[0]), 1e-6) << "momentum " << momentum;
    EXPECT_LT(relative_error(ms_g[0], ms_c[0]), 1e-5) << "momentum " << momentum;
    EXPECT_NEAR(rms_g[0].item<double>(), rms_c[0].item<double>(), 1e-5 * rms_c[0].item<double>());
  }
}

// ---------------------------------------------------------------- quantization

TEST(CudaKernels, QuantizationCodesAreIdentical) {
  FLORA_REQUIRE_CUDA();
  auto gen = at::make_generator<at::CPUGeneratorImpl>(2);
  for (int64_t n : {1, 4095, 4097, 1000003}) {
    for (int64_t block : {4096, 256}) {
      auto x = torch::randn({n}, gen);
      if (n > 10) {
        x[7] = 1e30f;
        x.narrow(0, 0, 4).zero_();
      }
      const auto cpu = flora::quantize_blockwise(x, block);
      const auto gpu = flora::quantize_blockwise(x.cuda(), block);
      EXPECT_TRUE(torch::equal(cpu.codes, gpu.codes.cpu())) << n << " block " << block;
      EXPECT_TRUE(torch::equal(cpu.absmax, gpu.absmax.cpu())) << n << " block " << block;
      EXPECT_TRUE(torch::equal(flora::dequantize_blockwise(cpu, block), flora::dequantize_blockwise(gpu, block).cpu()));
    }
  }
  EXPECT_TRUE(torch::equal(flora::dynamic_code_map(torch::kCUDA).cpu(), flora::dynamic_code_map()));
  // Strided outputs: written in place.
  const auto x = torch::randn({5000});
  auto codes_storage = torch::zeros({10000}, torch::dtype(torch::kUInt8).device(torch::kCUDA));
  auto absmax_storage = torch::zeros({4}, torch::device(torch::kCUDA));
  auto codes = codes_storage.slice(0, 0, 10000, 2);
  auto absmax = absmax_storage.slice(0, 0, 4, 2);
  flora::ops::quantize_blockwise_(x.cuda(), codes, absmax, flora::dynamic_code_map(), 4096);
  const auto expected = flora::quantize_blockwise(x, 4096);
  EXPECT_TRUE(torch::equal(codes.cpu(), expected.codes));
  EXPECT_TRUE(torch::equal(absmax.cpu(), expected.absmax));
}

// Quantizing, dequantizing and making a device copy of the code map issue no
// host copy, so they can be captured in a CUDA graph; a replay reproduces the
// eager results.
TEST(CudaGraphQuantization, IsCapturable) {
  FLORA_REQUIRE_CUDA();
  const auto x = torch::randn({100003}, torch::device(torch::kCUDA));
  flora::QuantizedTensor eager{
      torch::empty({100003}, torch::dtype(torch::kUInt8).device(torch::kCUDA)),
      torch::empty({flora::quantization_blocks(100003, 4096)}, torch::device(torch::kCUDA))};
  flora::QuantizedTensor captured{torch::empty_like(eager.codes), torch::empty_like(eager.absmax)};
  auto side = c10::cuda::getStreamFromPool();
  torch::cuda::synchronize();
  at::cuda::CUDAGraph graph; // declared first: outlives the tensors made in its capture
  torch::Tensor eager_back, captured_back, captured_map;
  {
    c10::cuda::CUDAStreamGuard guard(side);
    flora::quantize_blockwise_into(x, eager, 4096); // warm-up: kernels loaded
    eager_back = flora::dequantize_blockwise(eager, 4096);
    flora::dynamic_code_map(torch::kCUDA);
    graph.capture_begin();
    flora::quantize_blockwise_into(x, captured, 4096);
    captured_back = flora::dequantize_blockwise(captured, 4096);
    captured_map = flora::dynamic_code_map(torch::kCUDA);
    graph.capture_end();
    graph.replay();
  }
  torch::cuda::synchronize();
  EXPECT_TRUE(torch::equal(captured.codes, eager.codes));
  EXPECT_TRUE(torch::equal(captured.absmax, eager.absmax));
  EXPECT_TRUE(torch::equal(captured_back, eager_back));
  EXPECT_TRUE(torch::equal(captured_map.cpu(), flora::dynamic_code_map()));
}

} // namespace
