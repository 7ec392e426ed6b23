// The GPU paths, for a machine with CUDA (skipped without one): NCCL with
// one rank, and Gloo reducing CUDA tensors with two ranks sharing one GPU
// (NCCL refuses two ranks on one device). scripts/gpu-check.sh can run them:
//   build/tests/flora_distributed_tests --gtest_filter='DataParallelGpu.*'

#include "spawn.h"
#include "test_util.h"
#include "training.h"

#include <flora/distributed.h>

#include <torch/csrc/distributed/c10d/HashStore.hpp>
#include <torch/cuda.h>

namespace flora::dist_test {
namespace {

using flora::distributed::GradientSynchronizer;
using flora::distributed::SynchronizerOptions;
using flora::testing::relative_error;
using flora::testing::TempDir;

TEST(DataParallelGpu, NcclWithOneRankKeepsGradientsAndCompressesOnTheDevice) {
  if (!torch::cuda::is_available()) {
    GTEST_SKIP() << "no CUDA device";
  }
  if (!flora::distributed::nccl_available()) {
    GTEST_SKIP() << "flora was built without NCCL";
  }
  auto group = flora::distributed::make_process_group(
      c10::make_intrusive<c10d::HashStore>(), 0, 1, 0,
      flora::distributed::InitOptions()
          .backend(flora::distributed::BackendKind::nccl)
          .gloo_hostname("127.0.0.1")
          .timeout(std::chrono::seconds(60)));
  const torch::Device cuda(torch::kCUDA, 0);
  // Plain: one rank's mean is its own gradient.
  {
    Model m = make_model(1, cuda);
    GradientSynchronizer sync(m.params(), group, SynchronizerOptions().bucket_bytes(kBucketBytes).overlap(true));
    loss(m, make_batch(0, 0, 0, cuda)).backward();
    sync.synchronize();
    Model ref = make_model(1, cuda);
    loss(ref, make_batch(0, 0, 0, cuda)).backward();
    for (size_t i = 0; i < ref.params().size(); ++i) {
      EXPECT_TRUE(torch::equal(m.params()[i].grad(), ref.params()[i].grad())) << "parameter " << i;
    }
  }
  // Compressed: the accumulator's sketch of the same gradient, on the GPU.
  {
    Model m = make_model(1, cuda);
    Model ref = make_model(1, cuda);
    GradientSynchronizer sync(m.params(), group, SynchronizerOptions().compression_rank(kRank));
    CompressedAccumulator acc({ref.w1, ref.w2}, AccumulationOptions(kRank));
    loss(m, make_batch(0, 0, 0, cuda)).backward();
    loss(ref, make_batch(0, 0, 0, cuda)).backward();
    sync.synchronize();
    acc.accumulate();
    acc.restore();
    EXPECT_LT(relative_error(m.w1.grad(), ref.w1.grad()), 1e-6);
    EXPECT_LT(relative_error(m.w2.grad(), ref.w2.grad()), 1e-6);
    EXPECT_TRUE(m.w1.grad().is_cuda());
  }
}

TEST(DataParallelGpu, GlooOnCudaTensorsWithTwoRanksOnOneGpu) {
  if (!torch::cuda::is_available()) {
    GTEST_SKIP() << "no CUDA device";
  }
  TempDir dir;
  SpawnOptions options;
  options.world = 2;
  options.worker = "train";
  options.out_dir = dir.path();
  options.env["FLORA_TEST_DEVICE"] = "cuda:0";
  options.deadline = std::chrono::seconds(240);
  const auto result = run_ranks(options);
  ASSERT_TRUE(result.all_ok()) << result.describe();
  for (const Scenario scenario : all_scenarios()) {
    SCOPED_TRACE(name(scenario));
    std::vector<torch::Tensor> rank0, rank1;
    torch::load(rank0, dir.file(name(scenario) + ".rank0.pt"));
    torch::load(rank1, dir.file(name(scenario) + ".rank1.pt"));
    const auto reference = run_reference(scenario, 2); // on the CPU
    for (size_t i = 0; i < reference.size(); ++i) {
      EXPECT_TRUE(torch::equal(rank0[i], rank1[i])) << "parameter " << i << " differs between the ranks";
      // GPU and CPU kernels sum in other orders.
      EXPECT_LT(relative_error(rank0[i], reference[i]), 1e-4) << "parameter " << i;
    }
  }
}

} // namespace
} // namespace flora::dist_test
