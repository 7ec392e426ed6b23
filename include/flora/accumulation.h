#pragma once

// Compressed gradient accumulation (flora-opt's FloraAccelerator with
// accumulation_compression_rank), for flora::Flora or any torch::optim
// optimizer.
//
// Training with k micro-batches per optimizer step normally keeps a full
// gradient per parameter between micro-batches. Here each parameter with 2 or
// more dimensions keeps only C = sum_i down(seed, g_i), an (r, n) or (m, r)
// matrix (m x n being the parameter as a matrix: its first dimension by the
// product of the others), and its full gradient is released after every
// micro-batch. Before the optimizer step the gradient is rebuilt as
// up(seed, C), an unbiased estimate of the sum, and the seed advances, so the
// next step projects on a fresh random basis. Parameters with fewer than 2
// dimensions accumulate uncompressed. Buffers are float32.
//
//   flora::CompressedAccumulator acc(model->parameters(), flora::AccumulationOptions(64));
//   for (int i = 0; i < k; ++i) {
//     (loss_fn(model, batch[i]) / k).backward();
//     acc.accumulate();            // compress the gradients, release them
//   }
//   acc.restore();                 // p.grad = up(C), seeds advance
//   optimizer.step();
//   optimizer.zero_grad();
//
// Projections use the same generator as the optimizer (ProjectionMode), with
// flora-opt's accumulator seeding: the i-th compressed parameter (0-based, in
// the order given) starts at seed + i, and a matrix is drawn from the seed
// directly (no left/right split).

#include <flora/export.h>
#include <flora/options.h>

#include <torch/arg.h>
#include <torch/serialize/archive.h>
#include <torch/types.h>

#include <cstdint>
#include <limits>
#include <vector>

namespace flora {

struct FLORA_API AccumulationOptions {
  /// Rank of the compression; 0: accumulate uncompressed (plain sums).
  AccumulationOptions(int64_t rank = 0) : rank_(rank) {}
  TORCH_ARG(int64_t, rank);
  TORCH_ARG(ProjectionMode, projection) = ProjectionMode::philox;
  TORCH_ARG(int64_t, seed) = 0;
  /// Matrices whose larger side is more than this many times the smaller
  /// accumulate uncompressed (layout.h's rule); flora-opt's accelerator
  /// compresses every matrix (infinity, the default).
  TORCH_ARG(double, max_aspect_ratio) = std::numeric_limits<double>::infinity();
};

class FLORA_API CompressedAccumulator {
 public:
  CompressedAccumulator(std::vector<torch::Tensor> params, AccumulationOptions options = {});

  /// Adds every parameter's current gradient into its buffer and releases
  /// the gradient. Parameters without a gradient are skipped.
  void accumulate();
  /// The same for one parameter (for hooks that run as gradients complete).
  void accumulate(const torch::Tensor& param);

  /// Sets every parameter's .grad to its accumulated gradient (in the
  /// parameter's dtype), advances the seeds and empties the buffers.
  /// Parameters that accumulated nothing keep no gradient.
  void restore();
  /// The accumulated gradient of one parameter (float32), or an undefined
  /// tensor if it accumulated nothing; advances its seed, empties its buffer.
  torch::Tensor take(const torch::Tensor& param);

  /// True when the parameter's accumulation is compressed.
  bool compressed(const torch::Tensor& param) const;

  /// The parameters, in the order given.
  std::vector<torch::Tensor> parameters() const;
  /// Shape of a parameter's buffer: down(G)'s (rank, n) or (m, rank) when
  /// compressed, else the parameter's.
  std::vector<int64_t> buffer_shape(const torch::Tensor& param) const;
  /// Seed of the parameter's current projection (0 when uncompressed).
  int64_t seed(const torch::Tensor& param) const;
  /// The parameter's buffer (float32; the running sum of down(g), or of g),
  /// undefined when nothing has been accumulated since the last take(). It
  /// shares storage with the accumulator: data-parallel training
  /// (flora::distributed) all-reduces it in place between the last
  /// accumulate() and restore().
  torch::Tensor buffer(const torch::Tensor& param) const;
  /// Replaces the parameter's buffer: float32, buffer_shape(param), on the
  /// parameter's device; an undefined tensor empties it. (For a rank that
  /// accumulated nothing for a parameter that other ranks did.)
  void set_buffer(const torch::Tensor& param, torch::Tensor buffer);
  /// Bytes held by the buffers now.
  int64_t buffer_bytes() const;
  const AccumulationOptions& options() const {
    return options_;
  }

  /// Seeds and buffers, for checkpoints (also in the middle of an
  /// accumulation). load() checks everything before changing anything.
  void save(torch::serialize::OutputArchive& archive) const;
  void load(torch::serialize::InputArchive& archive);

 private:
  struct Slot {
    torch::Tensor param;
    bool compressed = false;
    int64_t seed = 0;
    torch::Tensor buffer; // undefined until something is accumulated
  };
  Slot& slot_for(const torch::Tensor& param);
  const Slot* find(const torch::Tensor& param) const;

  AccumulationOptions options_;
  std::vector<Slot> slots_;
};

} // namespace flora
