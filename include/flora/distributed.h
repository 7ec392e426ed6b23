#pragma once

// Data-parallel training on PyTorch's c10d (Gloo on the CPU, NCCL on GPUs):
// every rank trains a replica of the model on its own batches, and after
// backward the gradients are averaged across ranks, so the replicas stay
// identical.
//
// Compressed exchange. A seeded Gaussian projection is linear: when every
// rank draws the same P for a matrix, mean_k down(G_k) = down(mean_k G_k).
// So ranks all-reduce the (r, n) or (m, r) sketch down(G) instead of the
// (m, n) gradient and rebuild up(mean sketch) (an unbiased estimate of the
// mean gradient): the traffic of every compressed matrix falls by
// min(m, n) / r (the smaller side shrinks to r, projects_from_left). Which
// matrices: the rule of Flora's momentum (layout.h,
// compresses_momentum: the smaller side at least r, the aspect ratio at most
// max_aspect_ratio, 4 as in flora-opt), on the parameter viewed as a
// (size(0), numel / size(0)) matrix; vectors, embeddings and the rest go
// plain. The i-th compressed parameter (0-based, in the order given) starts
// at seed + i and its seed advances (next_seed) after every exchange, as
// CompressedAccumulator's seeds do, so a fresh basis is drawn each step.
// Compressed accumulation over micro-batches and compressed exchange over
// ranks are the same sum, so the two compose:
//
// 1. Gradients (DDP's place): after backward, synchronize() averages every
//    .grad: plain tensors in flat buckets of bucket_bytes, compressed
//    matrices as sketches.
//
//      auto world = flora::distributed::init_from_env();
//      flora::distributed::GradientSynchronizer sync(model->parameters(), world.process_group,
//          flora::distributed::SynchronizerOptions().compression_rank(64));
//      sync.broadcast_parameters();                 // rank 0's initial values
//      for (...) { optimizer.zero_grad(); loss.backward(); sync.synchronize(); optimizer.step(); }
//
//    With overlap(true), post-accumulate-grad hooks copy each gradient (or
//    its sketch) into its bucket while backward runs, release the full
//    gradient, and start a bucket's all-reduce as soon as it is full (in
//    bucket order, the same on every rank, as DDP's reducer does);
//    synchronize() finishes and writes the averaged gradients back. Inside
//    no_sync() the hooks stand aside, so .grad accumulates locally.
//
// 2. CompressedAccumulator: k micro-batches are accumulated locally, then
//    synchronize() all-reduces the accumulator's buffers once (its sketches
//    and plain sums), before restore(): one exchange of r-sized tensors per
//    optimizer step.
//
//      flora::CompressedAccumulator acc(model->parameters(), flora::AccumulationOptions(64));
//      flora::distributed::GradientSynchronizer sync(acc, world.process_group);
//      for (i < k) { (loss(i) / k).backward(); acc.accumulate(); }
//      sync.synchronize(); acc.restore(); optimizer.step();
//
// 3. FusedBackward: layer-by-layer synchronisation. Each parameter's
//    gradient (or sketch, or accumulated sketch) is all-reduced inside its
//    hook, right before its fused update, so no full set of gradients ever
//    exists on any rank. No synchronize() call: backward() does it all.
//
//      flora::FusedBackward fused(optimizer);
//      flora::distributed::GradientSynchronizer sync(fused, world.process_group,
//          flora::distributed::SynchronizerOptions().compression_rank(64));
//      for (...) loss.backward();
//
// Agreement. The constructor is a collective: every rank all-gathers a
// fingerprint of its parameters' shapes and dtypes, its options and its
// seeds (and its accumulator's or fused backward's), and if any rank differs,
// every rank throws an error naming the first difference and both values.
// A collective that fails (a rank exited, or stalled past the process
// group's timeout) throws on the other ranks, naming what was being
// exchanged; nothing waits for ever.
//
// Every rank must call the collectives (constructor, broadcast_parameters,
// synchronize, load) in the same order, and in modes 1 (overlap) and 3 its
// backward passes must produce gradients for the same parameters in the same
// order, as DDP requires.

#include <flora/accumulation.h>
#include <flora/export.h>
#include <flora/fused_backward.h>
#include <flora/options.h>
#include <flora/process_group.h>

#include <torch/arg.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/serialize/archive.h>
#include <torch/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

namespace flora::distributed {

enum class Reduction {
  /// Average over ranks (DDP's): each rank's loss is a mean over its batch.
  mean,
  /// Sum over ranks.
  sum,
};

struct FLORA_API SynchronizerOptions {
  TORCH_ARG(Reduction, reduction) = Reduction::mean;
  /// Exchange compressible matrices as rank-r sketches; unset: every
  /// gradient goes plain. (With a CompressedAccumulator or a FusedBackward
  /// that accumulates, the accumulator's rank decides, and this stays unset.)
  TORCH_ARG(std::optional<int64_t>, compression_rank);
  /// Largest aspect ratio of a compressed matrix (flora-opt's limit: 4).
  TORCH_ARG(double, max_aspect_ratio) = 4.0;
  /// Capacity of a flat bucket (DDP's default: 25 MiB). A tensor larger than
  /// this gets a bucket of its own.
  TORCH_ARG(int64_t, bucket_bytes) = 25 * 1024 * 1024;
  /// Start each bucket's all-reduce from post-accumulate-grad hooks while
  /// backward still runs (mode 1 only).
  TORCH_ARG(bool, overlap) = false;
  /// Base seed and generator of the compressed exchange's projections.
  TORCH_ARG(int64_t, seed) = 0;
  TORCH_ARG(ProjectionMode, projection) = ProjectionMode::philox;
  /// Limit on each collective; unset: the process group's timeout.
  TORCH_ARG(std::optional<std::chrono::milliseconds>, timeout);
};

/// A process group, or one backend of one (c10d::ProcessGroupGloo or
/// c10d::ProcessGroupNCCL built by hand). Converts from either.
class FLORA_API Group {
 public:
  Group(c10::intrusive_ptr<c10d::ProcessGroup> process_group);
  Group(c10::intrusive_ptr<c10d::Backend> backend);
  Group(const World& world);

  int64_t rank() const;
  int64_t size() const;
  /// The backend that handles tensors of `device`'s type.
  c10::intrusive_ptr<c10d::Backend> backend_for(const torch::Device& device) const;

 private:
  c10::intrusive_ptr<c10d::ProcessGroup> process_group_;
  c10::intrusive_ptr<c10d::Backend> backend_;
};

namespace detail {
class Synchronizer;
} // namespace detail

class FLORA_API GradientSynchronizer {
 public:
  /// Mode 1: averages the .grad of `params` (those that require a gradient;
  /// all on one device) in synchronize().
  GradientSynchronizer(std::vector<torch::Tensor> params, Group group, SynchronizerOptions options = {});
  /// Mode 2: all-reduces the accumulator's buffers in synchronize(). The
  /// accumulator must outlive this object.
  GradientSynchronizer(CompressedAccumulator& accumulator, Group group, SynchronizerOptions options = {});
  /// Mode 3: reduces inside the fused backward's hooks, from now on and as
  /// long as its hooks are installed (it keeps what it needs alive).
  GradientSynchronizer(FusedBackward& fused, Group group, SynchronizerOptions options = {});
  ~GradientSynchronizer();
  GradientSynchronizer(const GradientSynchronizer&) = delete;
  GradientSynchronizer& operator=(const GradientSynchronizer&) = delete;

  /// Copies rank 0's parameter values to every rank (a collective): at the
  /// start of training and after loading a checkpoint.
  void broadcast_parameters();

  /// Mode 1: leaves every rank with the same reduced .grad for every
  /// parameter that had a gradient on some rank (a zero contribution from
  /// ranks without one). Mode 2: the same for the accumulator's buffers.
  /// Throws in mode 3, where backward() synchronises.
  void synchronize();

  /// While the returned guard lives, the overlap hooks leave gradients alone
  /// (they accumulate in .grad, as under DDP's no_sync()).
  class FLORA_API NoSync {
   public:
    ~NoSync();
    NoSync(NoSync&& other) noexcept;
    NoSync(const NoSync&) = delete;
    NoSync& operator=(const NoSync&) = delete;
    NoSync& operator=(NoSync&&) = delete;

   private:
    friend class GradientSynchronizer;
    explicit NoSync(std::shared_ptr<detail::Synchronizer> state);
    std::shared_ptr<detail::Synchronizer> state_;
  };
  NoSync no_sync();

  int64_t rank() const;
  int64_t world_size() const;
  const SynchronizerOptions& options() const;
  /// Whether `param`'s gradient is exchanged as a sketch.
  bool compressed(const torch::Tensor& param) const;
  /// Bytes handed to the process group by one full exchange (all buckets,
  /// or all per-parameter reductions in mode 3).
  int64_t bytes_per_exchange() const;
  /// Bytes handed to the process group so far.
  int64_t bytes_exchanged() const;
  /// All-reduces started so far: one per bucket in modes 1 and 2, one per
  /// parameter in mode 3.
  int64_t collectives() const;

  /// The compressed exchange's seeds, for checkpoints (together with the
  /// model, the optimizer and any accumulator). load() is a collective: it
  /// checks the archive against this synchroniser, then that every rank
  /// loaded the same seeds.
  void save(torch::serialize::OutputArchive& archive) const;
  void load(torch::serialize::InputArchive& archive);

 private:
  std::shared_ptr<detail::Synchronizer> state_;
};

/// Bytes that one exchange hands to the process group for parameters of
/// these shapes and this dtype (mode 1, without allocating anything): the
/// basis of the bytes-per-step figures.
FLORA_API int64_t bytes_per_exchange(
    const std::vector<std::vector<int64_t>>& shapes,
    torch::ScalarType dtype,
    const SynchronizerOptions& options);

} // namespace flora::distributed
