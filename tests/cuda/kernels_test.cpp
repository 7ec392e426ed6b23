// The CUDA kernels against the CPU kernels, operator by operator, over odd
// sizes and every parameter dtype. Skipped without a GPU.

#include "../cuda_util.h"
#include "../test_util.h"

#include <flora/flora.h>

namespace {

using flora::testing::relative_error;

const std::vector<std::pair<int64_t, int64_t>> kShapes = {
    {1, 1}, {1, 4097}, {4097, 1}, {3, 5}, {64, 64}, {129, 33}, {768, 256}, {100, 1000}};

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
      }
    }
  }
}

// Many tensors of many sizes: several launch groups, tensors whose chunks
// span groups, with and without momentum.
TEST(CudaKernels, FullMomentStepMatchesCpu) {
  FLORA_REQUIRE_CUDA();
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    for (bool momentum : {false, true}) {
      std::vector<torch::Tensor> p_cpu, g_cpu, v_cpu, m_cpu, p_gpu, g_gpu, v_gpu, m_gpu;
      std::vector<double> beta2s, lrs;
      for (int i = 0; i < 120; ++i) {
        const int64_t n = (i % 7 == 0) ? 50000 + i : 1 + (i * 37) % 3000;
        p_cpu.push_back((torch::randn({n}) * 0.3).to(dtype));
        g_cpu.push_back(torch::randn({n}).to(dtype));
        v_cpu.push_back(torch::rand({n}));
        m_cpu.push_back(torch::randn({n}) * 0.1);
        beta2s.push_back(0.5 + 0.004 * i);
        lrs.push_back(1e-2 * (1 + i % 3));
      }
      for (size_t i = 0; i < p_cpu.size(); ++i) {
        p_gpu.push_back(p_cpu[i].cuda());
        g_gpu.push_back(g_cpu[i].cuda());
        v_gpu.push_back(v_cpu[i].cuda());
        m_gpu.push_back(m_cpu[i].cuda());
      }
      const std::vector<torch::Tensor> none;
      const auto rms_cpu = flora::ops::full_moment_step_(
          p_cpu, g_cpu, v_cpu, momentum ? m_cpu : none, beta2s, lrs, 1e-30, 1e-3, 0.9, true, 1.0, 0.01);
      const auto rms_gpu = flora::ops::full_moment_step_(
          p_gpu, g_gpu, v_gpu, momentum ? m_gpu : none, beta2s, lrs, 1e-30, 1e-3, 0.9, true, 1.0, 0.01);
      ASSERT_EQ(rms_gpu.size(), rms_cpu.size());
      for (size_t i = 0; i < p_cpu.size(); ++i) {
        const double tolerance = dtype == torch::kFloat ? 1e-5 : 1e-2;
        EXPECT_LT(relative_error(p_gpu[i], p_cpu[i]), tolerance) << i;
        EXPECT_LT(relative_error(v_gpu[i], v_cpu[i]), 1e-5) << i;
        if (momentum) {
          EXPECT_LT(relative_error(m_gpu[i], m_cpu[i]), 1e-5) << i;
        }
        EXPECT_NEAR(rms_gpu[i].item<double>(), rms_cpu[i].item<double>(), 1e-5 * rms_cpu[i].item<double>()) << i;
      }
    }
  }
}

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
}

} // namespace
