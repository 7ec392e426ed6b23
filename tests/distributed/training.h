#pragma once

// The small training job that the data-parallel tests run on several ranks
// (workers.cpp) and, as a reference, in one process (the tests): a model
// with two compressible matrices, two biases and an embedding-shaped table
// that the compression rule leaves plain, trained with Flora.

#include <flora/distributed.h>
#include <flora/flora.h>

#include <torch/torch.h>

#include <string>
#include <vector>

namespace flora::dist_test {

/// Rank of the compressed exchange and of the accumulators.
constexpr int64_t kRank = 4;
/// Optimizer steps per run, and micro-batches per step where accumulating.
constexpr int64_t kSteps = 3;
constexpr int64_t kMicroBatches = 2;
/// Small buckets, so that an exchange uses several.
constexpr int64_t kBucketBytes = 1024;
/// Base seed of the accumulators.
constexpr int64_t kAccumulationSeed = 7;
/// FusedBackward's elementwise clip: about half the gradient elements exceed
/// it, which makes the fused runs depend on the gradients' scale (Flora's
/// update alone does not: it is normalised), so a wrong mean would show.
constexpr double kFusedClip = 0.03;

struct Model {
  torch::Tensor w1; // (24, 16): compressed at rank 4 (sketch (24, 4))
  torch::Tensor b1; // (24)
  torch::Tensor w2; // (12, 24): compressed (sketch (4, 24))
  torch::Tensor b2; // (12)
  torch::Tensor emb; // (60, 12): aspect ratio 5 > 4, plain
  std::vector<torch::Tensor> params() const {
    return {w1, b1, w2, b2, emb};
  }
};

/// Values drawn from `seed` (each rank starts from its own, so that
/// broadcast_parameters() is what makes them agree).
Model make_model(uint64_t seed, const torch::Device& device = torch::kCPU);

struct Batch {
  torch::Tensor x; // (8, 16)
  torch::Tensor tokens; // (8), into emb
  torch::Tensor target; // (8, 12)
};

/// The batch of (step, rank, micro-batch): the same on every process.
Batch make_batch(int64_t step, int64_t rank, int64_t micro, const torch::Device& device = torch::kCPU);
Batch concat(const std::vector<Batch>& batches);
/// Mean squared error of tanh(x W1^T + b1) W2^T + b2 + emb[tokens].
torch::Tensor loss(const Model& model, const Batch& batch);

FloraOptions optimizer_options();

enum class Scenario {
  plain, // synchronize() after backward, flat buckets
  plain_sum, // the same with Reduction::sum
  plain_overlap, // the same, all-reduces started from hooks during backward
  compressed, // compression_rank 4
  compressed_overlap,
  accumulator, // CompressedAccumulator (rank 4) over 2 micro-batches, its buffers exchanged
  fused_plain, // FusedBackward, each gradient all-reduced in its hook
  fused_compressed, // FusedBackward, each sketch all-reduced in its hook
  fused_accumulator, // FusedBackward accumulating 2 micro-batches at rank 4
};
std::vector<Scenario> all_scenarios();
std::string name(Scenario scenario);

struct RunStats {
  int64_t bytes_per_exchange = 0;
  int64_t bytes_exchanged = 0;
  int64_t collectives = 0;
  /// The gradients the first optimizer step used (not in fused scenarios,
  /// where no gradient outlives its update).
  std::vector<torch::Tensor> first_gradients;
};

bool fused(Scenario scenario);

/// This rank's part of a data-parallel run; returns the final parameters.
std::vector<torch::Tensor> run_rank(
    Scenario scenario,
    const flora::distributed::Group& group,
    const torch::Device& device,
    RunStats* stats);

/// One process doing what `world_size` ranks do together; the gradients of
/// its first step go to `first_gradients` when given.
std::vector<torch::Tensor> run_reference(
    Scenario scenario,
    int64_t world_size,
    std::vector<torch::Tensor>* first_gradients = nullptr);

} // namespace flora::dist_test
