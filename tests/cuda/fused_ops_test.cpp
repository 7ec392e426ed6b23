// The CUDA kernels of the fused step's operators (src/fused_ops.h) against
// their CPU kernels, which define them: every operator over odd sizes (1x1,
// 4097, tall 70000x3, wide 3x70000), every parameter dtype, float32 and
// 8-bit moments, eager (host step counts and lr) and capturable (counters
// and an lr tensor on the device); lists long enough for several launches;
// alignment and repetition that must not change a bit; a capture of the
// capturable sequence whose replays read each replay's counters and lr.
// Skipped without a GPU.
//
// Tolerances: float32 states and parameters 1e-5 relative (the elementwise
// arithmetic is the CPU's, operation for operation; reductions add in
// another order), low-precision parameters one ulp of their dtype, 8-bit
// moments one code, integer and copied values exactly.

#include "../cuda_util.h"
#include "../test_util.h"
#include "cuda_agreement.h"

#include "fused_ops.h"
#include "kernels/sums_layout.h"

#include <flora/flora.h>

#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace {

using flora::detail::StepHyper;
using flora::detail::SumsLayout;
using flora::testing::Agreement;
using flora::testing::expect_within_one_code;
using flora::testing::parameter_tolerance;
using flora::testing::relative_error;

using Shapes = std::vector<std::vector<int64_t>>;
using Tensors = std::vector<torch::Tensor>;

const Shapes kMatrices = {{1, 1}, {3, 5}, {4097, 1}, {1, 4097}, {129, 33}, {70000, 3}, {3, 70000}, {768, 256}};
const Shapes kFlat = {{1}, {}, {4097}, {2, 3, 4}, {7, 9}, {70001}, {1000003}};
const torch::Dtype kDtypes[] = {torch::kFloat, torch::kHalf, torch::kBFloat16};

torch::Tensor copy_to(const torch::Tensor& t, const torch::Device& device) {
  return t.defined() ? t.to(device, /*non_blocking=*/false, /*copy=*/true) : t;
}

Tensors copy_to(const Tensors& list, const torch::Device& device) {
  Tensors out;
  for (const auto& t : list) {
    out.push_back(copy_to(t, device));
  }
  return out;
}

torch::Tensor randn(torch::IntArrayRef shape, uint64_t seed, double scale = 1.0) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return torch::randn(shape, gen) * scale;
}

torch::Tensor positive(torch::IntArrayRef shape, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return torch::rand(shape, gen) + 0.1;
}

std::string dtype_name(torch::Dtype dtype) {
  return c10::toString(dtype);
}

// The two sets of hyper-parameters the step tests use: a fixed lr with
// parameter scaling, decay and momentum; and the relative step with warm-up,
// no parameter scaling, a tighter clip and another decay rate.
StepHyper hyper(int variant, bool momentum) {
  StepHyper h;
  h.lr = 0.01;
  h.eps1 = 1e-30;
  h.eps2 = 1e-3;
  h.beta1 = momentum ? 0.9 : 0.0;
  h.weight_decay = 0.01;
  if (variant == 1) {
    h.lr = 0.0;
    h.relative_step = true;
    h.warmup_init = true;
    h.scale_parameter = false;
    h.clip_threshold = 0.5;
    h.decay_rate = -0.6;
  }
  return h;
}

enum class Moment { none, float32, codes };

std::string moment_name(Moment m) {
  return m == Moment::none ? "none" : (m == Moment::float32 ? "float32" : "8-bit");
}

// The arguments of one phase-1 + phase-2 call pair, on one device.
struct StepArgs {
  Tensors params, grads, rows, cols, second, second_absmax, momentum, momentum_absmax, rms, counters;
  torch::Tensor sums, flags, lr; // lr undefined: the hyper-parameters' lr
  std::vector<int64_t> steps;
  bool factored = true;
  int64_t block = 4096;

  StepArgs to(const torch::Device& device) const {
    StepArgs a = *this;
    for (auto* list : {&a.params, &a.grads, &a.rows, &a.cols, &a.second, &a.second_absmax, &a.momentum,
                       &a.momentum_absmax, &a.rms, &a.counters}) {
      *list = copy_to(*list, device);
    }
    a.sums = copy_to(sums, device);
    a.flags = copy_to(flags, device);
    a.lr = copy_to(lr, device);
    return a;
  }
  std::optional<torch::Tensor> lr_tensor() const {
    return lr.defined() ? std::optional<torch::Tensor>(lr) : std::nullopt;
  }
  std::optional<torch::Tensor> code_map() const {
    const bool codes = (!second.empty() && second[0].scalar_type() == torch::kByte) ||
        (!momentum.empty() && momentum[0].scalar_type() == torch::kByte);
    return codes ? std::optional<torch::Tensor>(flora::dynamic_code_map()) : std::nullopt;
  }
  std::vector<int64_t> step_list() const {
    return counters.empty() ? steps : std::vector<int64_t>{};
  }
  SumsLayout layout() const {
    return SumsLayout::of(params, factored);
  }
};

// A moment like `like`: float32 values, or 8-bit codes and their absmax.
void add_moment(Moment kind, const torch::Tensor& values, int64_t block, Tensors& moments, Tensors& absmaxes) {
  if (kind == Moment::float32) {
    moments.push_back(values);
  } else if (kind == Moment::codes) {
    const auto q = flora::quantize_blockwise(values, block);
    moments.push_back(q.codes);
    absmaxes.push_back(q.absmax);
  }
}

// A list of parameters (CPU) in some state after a few steps: positive
// second moments, momenta of either sign, step counts from 1 to 10^4.
StepArgs make_step_args(
    const Shapes& shapes, torch::Dtype dtype, bool factored, Moment second, Moment momentum, int64_t block,
    bool capturable, uint64_t seed) {
  StepArgs a;
  a.factored = factored;
  a.block = block;
  const int64_t step_counts[] = {1, 2, 7, 10000, 3, 150};
  for (size_t i = 0; i < shapes.size(); ++i) {
    const uint64_t s = seed + 10 * i;
    const auto& shape = shapes[i];
    a.params.push_back(randn(shape, s, 0.5).to(dtype));
    a.grads.push_back(randn(shape, s + 1).to(dtype));
    if (factored) {
      a.rows.push_back(positive({shape[0]}, s + 2));
      a.cols.push_back(positive({shape[1]}, s + 3));
    } else {
      add_moment(second, positive(shape, s + 4), block, a.second, a.second_absmax);
    }
    add_moment(momentum, randn(shape, s + 5, 0.1), block, a.momentum, a.momentum_absmax);
    a.rms.push_back(torch::zeros({}));
    const int64_t step = step_counts[i % 6];
    a.steps.push_back(step);
    if (capturable) {
      a.counters.push_back(torch::tensor({step, int64_t{11} + static_cast<int64_t>(i), int64_t{11}}, torch::kLong));
    }
  }
  if (capturable) {
    a.lr = torch::full({1}, 0.02, torch::kDouble); // not hyper.lr: the tensor must be the one read
  }
  a.sums = torch::zeros({a.layout().size});
  a.flags = torch::full({static_cast<int64_t>(shapes.size())}, 7.0);
  return a;
}

void run_step(StepArgs& a, const StepHyper& h) {
  flora::ops::gradient_sums_(a.params, a.grads, a.factored, a.flags, a.sums);
  if (a.factored) {
    flora::ops::factored_step_(
        a.params, a.grads, a.rows, a.cols, a.momentum, a.momentum_absmax, a.rms, a.sums, a.step_list(), a.counters,
        a.lr_tensor(), h, a.block, a.code_map());
  } else {
    flora::ops::full_step_(
        a.params, a.grads, a.second, a.second_absmax, a.momentum, a.momentum_absmax, a.rms, a.sums, a.step_list(),
        a.counters, a.lr_tensor(), h, a.block, a.code_map());
  }
}

void expect_moments_agree(
    const Tensors& gpu, const Tensors& gpu_absmax, const Tensors& cpu, const Tensors& cpu_absmax, int64_t block,
    const std::string& where, Agreement& agreement) {
  ASSERT_EQ(gpu.size(), cpu.size()) << where;
  for (size_t i = 0; i < cpu.size(); ++i) {
    const std::string at = where + "[" + std::to_string(i) + "]";
    if (cpu[i].scalar_type() == torch::kByte) {
      expect_within_one_code(gpu[i], gpu_absmax[i], cpu[i], cpu_absmax[i], block, at, agreement);
    } else {
      const double error = relative_error(gpu[i], cpu[i]);
      agreement.worst_state = std::max(agreement.worst_state, error);
      EXPECT_LT(error, 1e-5) << at;
    }
  }
}

// Each parameter's slices of `sums`: sum p^2, sum update^2, and the row and
// column values (phase 1: sums of g^2; phase 2: the factors).
void expect_sums_agree(const StepArgs& gpu, const StepArgs& cpu, const std::string& where) {
  const auto layout = cpu.layout();
  const auto g = gpu.sums.cpu();
  const auto n = static_cast<int64_t>(cpu.params.size());
  EXPECT_LT(relative_error(g.narrow(0, 0, n), cpu.sums.narrow(0, 0, n)), 1e-5) << where << " sum p^2";
  EXPECT_LT(relative_error(g.narrow(0, n, n), cpu.sums.narrow(0, n, n)), 1e-5) << where << " sum update^2";
  if (!cpu.factored) {
    return;
  }
  for (size_t i = 0; i < cpu.params.size(); ++i) {
    const int64_t rows = cpu.params[i].size(0), cols = cpu.params[i].size(1);
    if (rows * cols == 0) {
      continue; // nothing to compare (and no maximum to scale by)
    }
    EXPECT_LT(
        relative_error(g.narrow(0, layout.row_offset[i], rows), cpu.sums.narrow(0, layout.row_offset[i], rows)), 1e-5)
        << where << " rows of " << i;
    EXPECT_LT(
        relative_error(g.narrow(0, layout.col_offset[i], cols), cpu.sums.narrow(0, layout.col_offset[i], cols)), 1e-5)
        << where << " cols of " << i;
  }
}

void expect_step_agrees(const StepArgs& gpu, const StepArgs& cpu, const std::string& where, Agreement& agreement) {
  EXPECT_TRUE(torch::equal(gpu.flags.cpu(), cpu.flags)) << where << " flags";
  expect_sums_agree(gpu, cpu, where);
  for (size_t i = 0; i < cpu.params.size(); ++i) {
    const std::string at = where + " param " + std::to_string(i);
    ASSERT_EQ(gpu.params[i].scalar_type(), cpu.params[i].scalar_type()) << at;
    const double error = relative_error(gpu.params[i], cpu.params[i]);
    if (cpu.params[i].scalar_type() == torch::kFloat) {
      agreement.worst_param = std::max(agreement.worst_param, error);
    }
    EXPECT_LT(error, parameter_tolerance(cpu.params[i].scalar_type())) << at;
    EXPECT_LT(relative_error(gpu.rms[i], cpu.rms[i]), 1e-5) << at << " rms";
  }
  expect_moments_agree(gpu.rows, {}, cpu.rows, {}, cpu.block, where + " exp_avg_sq_row", agreement);
  expect_moments_agree(gpu.cols, {}, cpu.cols, {}, cpu.block, where + " exp_avg_sq_col", agreement);
  expect_moments_agree(gpu.second, gpu.second_absmax, cpu.second, cpu.second_absmax, cpu.block, where + " exp_avg_sq", agreement);
  expect_moments_agree(
      gpu.momentum, gpu.momentum_absmax, cpu.momentum, cpu.momentum_absmax, cpu.block, where + " exp_avg", agreement);
  if (!cpu.counters.empty()) {
    for (size_t i = 0; i < cpu.counters.size(); ++i) {
      EXPECT_TRUE(torch::equal(gpu.counters[i].cpu(), cpu.counters[i])) << where << " counters " << i << " changed";
    }
  }
}

class FusedOpsSummary : public ::testing::Test {
 public:
  static void TearDownTestSuite() {
    if (agreement_.worst_state > 0 || agreement_.worst_param > 0 || agreement_.codes_compared > 0) {
      std::cout << "[ agreement ] fused operators CUDA vs CPU: largest relative error of state "
                << agreement_.worst_state << ", of float32 parameters " << agreement_.worst_param
                << " (bound 1e-5); 8-bit codes: " << agreement_.code_flips << " of " << agreement_.codes_compared
                << " differ by one code (bound: one code)" << std::endl;
    }
  }
  static inline Agreement agreement_;
};

using CudaFusedOps = FusedOpsSummary;

// ---------------------------------------------------------------- phase 1

TEST_F(CudaFusedOps, GradientSumsMatchCpu) {
  FLORA_REQUIRE_CUDA();
  const Shapes matrices = {{1, 1}, {3, 5}, {4097, 1}, {1, 4097}, {64, 64}, {129, 33},
                           {768, 256}, {50, 768}, {70000, 3}, {3, 70000}, {0, 5}};
  const Shapes flat = {{1}, {}, {0}, {4097}, {2, 3, 4}, {1000003}};
  for (const auto dtype : kDtypes) {
    for (const bool factored : {true, false}) {
      for (const bool nonfinite : {false, true}) {
        auto cpu = make_step_args(factored ? matrices : flat, dtype, factored, Moment::float32, Moment::none, 4096, false, 1);
        if (nonfinite) {
          // One NaN and one Inf, in two parameters.
          cpu.grads[3].view(-1)[0] = std::numeric_limits<float>::quiet_NaN();
          cpu.grads[4].view(-1)[cpu.grads[4].numel() - 1] = std::numeric_limits<float>::infinity();
        }
        auto gpu = cpu.to(torch::kCUDA);
        flora::ops::gradient_sums_(cpu.params, cpu.grads, factored, cpu.flags, cpu.sums);
        flora::ops::gradient_sums_(gpu.params, gpu.grads, factored, gpu.flags, gpu.sums);
        const std::string where = dtype_name(dtype) + (factored ? " factored" : " flat") + (nonfinite ? " nonfinite" : "");
        EXPECT_TRUE(torch::equal(gpu.flags.cpu(), cpu.flags)) << where << ": " << gpu.flags.cpu() << " vs " << cpu.flags;
        EXPECT_EQ(cpu.flags.sum().item<float>(), nonfinite ? 2.0f : 0.0f) << where;
        if (!nonfinite) {
          expect_sums_agree(gpu, cpu, where);
        }
      }
    }
  }
}

// ---------------------------------------------------------------- factored_step_, full_step_

// The block size of 8-bit moments per dtype: the default, a small one, and
// one that is not a multiple of 4 (the element-by-element path).
int64_t block_for(torch::Dtype dtype) {
  return dtype == torch::kFloat ? 4096 : (dtype == torch::kHalf ? 10 : 16);
}

TEST_F(CudaFusedOps, FactoredStepMatchesCpu) {
  FLORA_REQUIRE_CUDA();
  int variant = 0;
  for (const auto dtype : kDtypes) {
    for (const auto momentum : {Moment::none, Moment::float32, Moment::codes}) {
      for (const bool capturable : {false, true}) {
        const int h = variant++ % 2;
        auto cpu = make_step_args(kMatrices, dtype, true, Moment::none, momentum, block_for(dtype), capturable, 100);
        auto gpu = cpu.to(torch::kCUDA);
        run_step(cpu, hyper(h, momentum != Moment::none));
        run_step(gpu, hyper(h, momentum != Moment::none));
        expect_step_agrees(
            gpu, cpu,
            dtype_name(dtype) + " momentum " + moment_name(momentum) + (capturable ? " capturable" : " eager") +
                " hyper " + std::to_string(h),
            agreement_);
      }
    }
  }
}

TEST_F(CudaFusedOps, FullStepMatchesCpu) {
  FLORA_REQUIRE_CUDA();
  int variant = 0;
  for (const auto dtype : kDtypes) {
    for (const auto second : {Moment::float32, Moment::codes}) {
      for (const auto momentum : {Moment::none, Moment::float32, Moment::codes}) {
        for (const bool capturable : {false, true}) {
          const int h = variant++ % 2;
          auto cpu = make_step_args(kFlat, dtype, false, second, momentum, block_for(dtype), capturable, 200);
          auto gpu = cpu.to(torch::kCUDA);
          run_step(cpu, hyper(h, momentum != Moment::none));
          run_step(gpu, hyper(h, momentum != Moment::none));
          expect_step_agrees(
              gpu, cpu,
              dtype_name(dtype) + " second " + moment_name(second) + " momentum " + moment_name(momentum) +
                  (capturable ? " capturable" : " eager") + " hyper " + std::to_string(h),
              agreement_);
        }
      }
    }
  }
}

// More tensors than one launch's table holds, tensors of thousands of
// chunks among tiny ones.
TEST_F(CudaFusedOps, ManyTensorsSpanSeveralLaunches) {
  FLORA_REQUIRE_CUDA();
  Shapes flat, matrices;
  for (int i = 0; i < 90; ++i) {
    flat.push_back({i == 40 ? 2000003 : 1 + (i * 37) % 3000});
    matrices.push_back({1 + (i % 7) * 13, i == 50 ? 40000 : 1 + (i % 5) * 17});
  }
  for (const auto dtype : {torch::kFloat, torch::kBFloat16}) {
    auto cpu = make_step_args(flat, dtype, false, Moment::float32, Moment::codes, 256, false, 300);
    auto gpu = cpu.to(torch::kCUDA);
    run_step(cpu, hyper(0, true));
    run_step(gpu, hyper(0, true));
    expect_step_agrees(gpu, cpu, dtype_name(dtype) + " 90 flat", agreement_);

    auto cpu_m = make_step_args(matrices, dtype, true, Moment::none, Moment::float32, 4096, true, 400);
    auto gpu_m = cpu_m.to(torch::kCUDA);
    run_step(cpu_m, hyper(0, true));
    run_step(gpu_m, hyper(0, true));
    expect_step_agrees(gpu_m, cpu_m, dtype_name(dtype) + " 90 matrices", agreement_);
  }
}

// The same tensors at an address that is not a multiple of a quad (element
// by element) and at an aligned one (whole quads), and a second run: the
// results are the same to the last bit, so neither alignment nor the run
// decides a result (reductions are a function of the shapes only).
TEST_F(CudaFusedOps, AlignmentAndRepetitionChangeNoBit) {
  FLORA_REQUIRE_CUDA();
  // A contiguous copy of `t` that starts one element into its storage.
  const auto misaligned = [](const torch::Tensor& t) {
    auto storage = torch::empty({t.numel() + 1}, t.options());
    auto view = storage.narrow(0, 1, t.numel()).view(t.sizes());
    view.copy_(t);
    return view;
  };
  for (const auto dtype : {torch::kFloat, torch::kBFloat16}) {
    for (const bool factored : {true, false}) {
      const auto base = make_step_args(
          factored ? Shapes{{129, 36}, {64, 64}} : Shapes{{4100}, {37}}, dtype, factored, Moment::codes, Moment::codes,
          16, true, 500);
      auto aligned = base.to(torch::kCUDA);
      auto again = base.to(torch::kCUDA);
      auto shifted = base.to(torch::kCUDA);
      for (auto* list : {&shifted.params, &shifted.grads, &shifted.second, &shifted.momentum}) {
        for (auto& t : *list) {
          t = misaligned(t);
          ASSERT_TRUE(t.is_contiguous());
        }
      }
      for (auto* args : {&aligned, &again, &shifted}) {
        run_step(*args, hyper(0, true));
      }
      const std::string where = dtype_name(dtype) + (factored ? " factored" : " full");
      for (const auto* other : {&again, &shifted}) {
        EXPECT_TRUE(torch::equal(other->sums, aligned.sums)) << where;
        for (size_t i = 0; i < base.params.size(); ++i) {
          EXPECT_TRUE(torch::equal(other->params[i], aligned.params[i])) << where << " param " << i;
          EXPECT_TRUE(torch::equal(other->momentum[i], aligned.momentum[i])) << where << " momentum " << i;
          EXPECT_TRUE(torch::equal(other->momentum_absmax[i], aligned.momentum_absmax[i])) << where << " absmax " << i;
          EXPECT_TRUE(torch::equal(other->rms[i], aligned.rms[i])) << where << " rms " << i;
          if (!factored) {
            EXPECT_TRUE(torch::equal(other->second[i], aligned.second[i])) << where << " second " << i;
            EXPECT_TRUE(torch::equal(other->second_absmax[i], aligned.second_absmax[i])) << where << " second absmax " << i;
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------- compressed momentum

TEST_F(CudaFusedOps, FactoredNormalizeMatchesCpu) {
  FLORA_REQUIRE_CUDA();
  for (const auto dtype : kDtypes) {
    for (const auto& shape : kMatrices) {
      for (const bool capturable : {false, true}) {
        auto cpu = make_step_args({shape, shape, shape}, dtype, true, Moment::none, Moment::none, 4096, capturable, 600);
        auto out_cpu = torch::zeros({3, shape[0], shape[1]});
        auto gpu = cpu.to(torch::kCUDA);
        auto out_gpu = out_cpu.cuda();
        for (auto* a : {&cpu, &gpu}) {
          flora::ops::gradient_sums_(a->params, a->grads, true, a->flags, a->sums);
          flora::ops::factored_normalize_(
              a->grads, a->rows, a->cols, a->sums, a->step_list(), a->counters, 1e-30, -0.8, a == &cpu ? out_cpu : out_gpu);
        }
        const std::string where = dtype_name(dtype) + " " + std::to_string(shape[0]) + "x" + std::to_string(shape[1]) +
            (capturable ? " capturable" : " eager");
        expect_sums_agree(gpu, cpu, where);
        expect_moments_agree(gpu.rows, {}, cpu.rows, {}, 0, where + " rows", agreement_);
        expect_moments_agree(gpu.cols, {}, cpu.cols, {}, 0, where + " cols", agreement_);
        EXPECT_LT(relative_error(out_gpu, out_cpu), 1e-5) << where << " out";
      }
    }
  }
}

TEST_F(CudaFusedOps, ApplyUpdatesMatchesCpu) {
  FLORA_REQUIRE_CUDA();
  int variant = 0;
  for (const auto dtype : kDtypes) {
    for (const auto& shape : kMatrices) {
      for (const bool capturable : {false, true}) {
        const int h = variant++ % 2;
        auto cpu = make_step_args({shape, shape, shape}, dtype, true, Moment::none, Moment::none, 4096, capturable, 700);
        auto updates_cpu = randn({3, shape[0], shape[1]}, 701, 2.0);
        auto gpu = cpu.to(torch::kCUDA);
        auto updates_gpu = updates_cpu.cuda();
        for (auto* a : {&cpu, &gpu}) {
          flora::ops::gradient_sums_(a->params, a->grads, true, a->flags, a->sums);
          flora::ops::apply_updates_(
              a->params, a == &cpu ? updates_cpu : updates_gpu, a->rms, a->sums, a->step_list(), a->counters,
              a->lr_tensor(), hyper(h, true));
        }
        const std::string where = dtype_name(dtype) + " " + std::to_string(shape[0]) + "x" + std::to_string(shape[1]) +
            (capturable ? " capturable" : " eager") + " hyper " + std::to_string(h);
        expect_step_agrees(gpu, cpu, where, agreement_);
        EXPECT_TRUE(torch::equal(updates_gpu.cpu(), updates_cpu)) << where << ": updates are an input";
      }
    }
  }
}

TEST_F(CudaFusedOps, PhiloxNormalBatchMatchesCpuAndPhiloxNormal) {
  FLORA_REQUIRE_CUDA();
  const Shapes batches = {{3, 5, 7}, {2, 256, 768}, {1, 1, 1}, {2, 4097, 3}, {2, 3, 4097}, {40, 16, 16}};
  const int64_t seeds[] = {0, 42, static_cast<int64_t>(0xfedcba9876543210ull), -5};
  double worst = 0.0;
  for (const auto& shape : batches) {
    const int64_t count = shape[0];
    const double scale = 1.0 / std::sqrt(static_cast<double>(shape[1]));
    std::vector<int64_t> current, previous;
    Tensors counters_cpu;
    for (int64_t g = 0; g < count; ++g) {
      current.push_back(seeds[g % 4] + g);
      previous.push_back(seeds[(g + 1) % 4] - g);
      counters_cpu.push_back(torch::tensor({int64_t{3}, current.back(), previous.back()}, torch::kLong));
    }
    const auto counters_gpu = copy_to(counters_cpu, torch::kCUDA);
    for (const auto side : {flora::ops::SeedSide::direct, flora::ops::SeedSide::left, flora::ops::SeedSide::right}) {
      for (const int64_t slot : {1, 2}) {
        const auto& seeds_of = slot == 1 ? current : previous;
        auto cpu = torch::empty(shape);
        auto gpu = torch::empty(shape, torch::device(torch::kCUDA));
        auto gpu_counted = torch::empty(shape, torch::device(torch::kCUDA));
        flora::ops::philox_normal_batch_(cpu, seeds_of, {}, 0, side, scale);
        flora::ops::philox_normal_batch_(gpu, seeds_of, {}, 0, side, scale);
        flora::ops::philox_normal_batch_(gpu_counted, {}, counters_gpu, slot, side, scale);
        const std::string where = std::to_string(shape[0]) + "x" + std::to_string(shape[1]) + "x" +
            std::to_string(shape[2]) + " side " + std::to_string(static_cast<int>(side)) + " slot " + std::to_string(slot);
        const double error = (gpu.cpu() - cpu).abs().max().item<double>() / scale;
        worst = std::max(worst, error);
        EXPECT_LE(error, 2e-6) << where;
        EXPECT_TRUE(torch::equal(gpu_counted, gpu)) << where << ": seeds from the counters";
        // Each matrix is philox_normal_'s for the projection's seed
        // (split_seed's half, projection.h), bit for bit on the GPU.
        for (int64_t g = 0; g < count; ++g) {
          const auto halves = flora::split_seed(seeds_of[g], flora::ProjectionMode::philox);
          const int64_t stream = side == flora::ops::SeedSide::direct
              ? seeds_of[g]
              : (side == flora::ops::SeedSide::left ? halves.first : halves.second);
          auto single = torch::empty({shape[1], shape[2]}, torch::device(torch::kCUDA));
          flora::ops::philox_normal_(single, stream, scale);
          EXPECT_TRUE(torch::equal(gpu[g], single)) << where << " matrix " << g;
        }
      }
    }
  }
  std::cout << "[ agreement ] batched projections: largest |normal CPU - GPU| " << worst << " (bound 2e-6)" << std::endl;
}

TEST_F(CudaFusedOps, GatherAndScatterMomentsMatchCpu) {
  FLORA_REQUIRE_CUDA();
  const Shapes shapes = {{1, 1}, {3, 5}, {256, 768}, {3, 4097}};
  for (const auto& shape : shapes) {
    for (const int64_t block : {int64_t{0}, int64_t{16}, int64_t{10}, int64_t{4096}}) {
      const bool codes = block > 0;
      const int64_t b = codes ? block : 4096;
      Tensors moments, absmaxes;
      for (int g = 0; g < 3; ++g) {
        add_moment(codes ? Moment::codes : Moment::float32, randn(shape, 800 + g, 0.1), b, moments, absmaxes);
      }
      const auto map = codes ? std::optional<torch::Tensor>(flora::dynamic_code_map()) : std::nullopt;
      const std::string where = std::to_string(shape[0]) + "x" + std::to_string(shape[1]) + " block " + std::to_string(block);
      // Gather: the same values, bit for bit (a copy, or code value x absmax).
      auto out_cpu = torch::empty({3, shape[0], shape[1]});
      auto out_gpu = torch::empty({3, shape[0], shape[1]}, torch::device(torch::kCUDA));
      const auto moments_gpu = copy_to(moments, torch::kCUDA);
      const auto absmaxes_gpu = copy_to(absmaxes, torch::kCUDA);
      flora::ops::gather_moments_(moments, absmaxes, b, map, out_cpu);
      flora::ops::gather_moments_(moments_gpu, absmaxes_gpu, b, map, out_gpu);
      EXPECT_TRUE(torch::equal(out_gpu.cpu(), out_cpu)) << where << " gather";
      // Scatter: the same codes and absmax (the same rule on the same floats).
      const auto src = randn({3, shape[0], shape[1]}, 810, 0.2);
      auto back_cpu = copy_to(moments, torch::kCPU), back_abs_cpu = copy_to(absmaxes, torch::kCPU);
      auto back_gpu = copy_to(moments, torch::kCUDA), back_abs_gpu = copy_to(absmaxes, torch::kCUDA);
      flora::ops::scatter_moments_(src, back_cpu, back_abs_cpu, b, map);
      flora::ops::scatter_moments_(src.cuda(), back_gpu, back_abs_gpu, b, map);
      for (size_t g = 0; g < 3; ++g) {
        EXPECT_TRUE(torch::equal(back_gpu[g].cpu(), back_cpu[g])) << where << " scatter " << g;
        if (codes) {
          EXPECT_TRUE(torch::equal(back_abs_gpu[g].cpu(), back_abs_cpu[g])) << where << " scatter absmax " << g;
        }
      }
      // Scatter with a mix (the optimizer's b1 T(M) + (1 - b1) down'(u)):
      // the same products in the same order on both devices.
      const auto mix = randn({3, shape[0], shape[1]}, 811, 0.3);
      flora::ops::scatter_moments_(src, back_cpu, back_abs_cpu, b, map, mix, 0.9);
      flora::ops::scatter_moments_(src.cuda(), back_gpu, back_abs_gpu, b, map, mix.cuda(), 0.9);
      for (size_t g = 0; g < 3; ++g) {
        EXPECT_TRUE(torch::equal(back_gpu[g].cpu(), back_cpu[g])) << where << " scatter with mix " << g;
        if (codes) {
          EXPECT_TRUE(torch::equal(back_abs_gpu[g].cpu(), back_abs_cpu[g])) << where << " scatter with mix absmax " << g;
        }
      }
    }
  }
}

// ---------------------------------------------------------------- capturable counters

TEST_F(CudaFusedOps, AdvanceCountersAndKeepUnlessResampledMatchCpu) {
  FLORA_REQUIRE_CUDA();
  Tensors cpu;
  for (int64_t i = 0; i < 300; ++i) { // more than one launch's table
    cpu.push_back(torch::tensor({i % 9, 1000 * i - 3, int64_t{0}}, torch::kLong));
  }
  auto gpu = copy_to(cpu, torch::kCUDA);
  for (int round = 0; round < 4; ++round) {
    const int64_t kappa = 3;
    const auto before = copy_to(cpu, torch::kCPU);
    flora::ops::advance_counters_(cpu, kappa);
    flora::ops::advance_counters_(gpu, kappa);
    for (size_t i = 0; i < cpu.size(); ++i) {
      EXPECT_TRUE(torch::equal(gpu[i].cpu(), cpu[i])) << "round " << round << " counters " << i;
      // The definition (fused_ops.h, projection.h), independently.
      const auto* b = before[i].data_ptr<int64_t>();
      const auto* a = cpu[i].data_ptr<int64_t>();
      EXPECT_EQ(a[0], b[0] + 1);
      EXPECT_EQ(a[2], b[1]);
      EXPECT_EQ(a[1], a[0] % kappa == 0 ? flora::next_seed(b[1], flora::ProjectionMode::philox) : b[1]);
    }
    for (const int64_t r : {int64_t{1}, int64_t{5}, int64_t{64}}) {
      auto transforms = randn({static_cast<int64_t>(cpu.size()), r, r}, 900 + r);
      auto transforms_gpu = transforms.cuda();
      flora::ops::keep_unless_resampled_(transforms, cpu, kappa);
      flora::ops::keep_unless_resampled_(transforms_gpu, gpu, kappa);
      EXPECT_TRUE(torch::equal(transforms_gpu.cpu(), transforms)) << "round " << round << " r " << r;
    }
  }
}

// The capturable sequence of one factored group (advance the counters,
// phase 1, phase 2 with counters and the lr tensor) captured once and
// replayed: every replay reads that replay's counters, lr and gradients,
// exactly as the same calls made eagerly.
TEST_F(CudaFusedOps, CapturedCallsReadEachReplaysCountersAndLr) {
  FLORA_REQUIRE_CUDA();
  const Shapes shapes = {{64, 256}, {129, 33}, {3, 5}};
  const auto h = hyper(0, true);
  const int64_t kappa = 2;
  auto base = make_step_args(shapes, torch::kFloat, true, Moment::none, Moment::codes, 64, true, 1000);
  auto captured = base.to(torch::kCUDA);
  auto eager = base.to(torch::kCUDA);
  const auto sequence = [&](StepArgs& a) {
    flora::ops::advance_counters_(a.counters, kappa);
    run_step(a, h);
  };
  auto side = c10::cuda::getStreamFromPool();
  torch::cuda::synchronize();
  at::cuda::CUDAGraph graph;
  {
    c10::cuda::CUDAStreamGuard guard(side);
    auto warm = base.to(torch::kCUDA);
    sequence(warm); // kernels loaded before the capture
    graph.capture_begin();
    sequence(captured);
    graph.capture_end();
    for (int replay = 0; replay < 5; ++replay) {
      const double lr = 0.05 / (1 + replay);
      for (auto* a : {&captured, &eager}) {
        a->lr.fill_(lr);
        for (size_t i = 0; i < a->grads.size(); ++i) {
          a->grads[i].copy_(randn(shapes[i], 2000 + 10 * replay + i));
        }
      }
      graph.replay();
      sequence(eager);
      side.synchronize();
      const std::string where = "replay " + std::to_string(replay);
      EXPECT_TRUE(torch::equal(captured.sums, eager.sums)) << where;
      for (size_t i = 0; i < shapes.size(); ++i) {
        EXPECT_TRUE(torch::equal(captured.counters[i], eager.counters[i])) << where << " counters " << i;
        EXPECT_TRUE(torch::equal(captured.params[i], eager.params[i])) << where << " param " << i;
        EXPECT_TRUE(torch::equal(captured.momentum[i], eager.momentum[i])) << where << " momentum " << i;
        EXPECT_TRUE(torch::equal(captured.momentum_absmax[i], eager.momentum_absmax[i])) << where << " absmax " << i;
        EXPECT_TRUE(torch::equal(captured.rows[i], eager.rows[i])) << where << " rows " << i;
        EXPECT_TRUE(torch::equal(captured.rms[i], eager.rms[i])) << where << " rms " << i;
      }
    }
  }
  // The counters moved on by one per replay (not frozen at the capture's).
  EXPECT_EQ(captured.counters[0][0].item<int64_t>(), base.counters[0][0].item<int64_t>() + 5);
}

} // namespace
