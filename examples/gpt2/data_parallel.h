#pragma once

// Data-parallel training of the example: the program started by torchrun
// (scripts/torchrun.sh --standalone --nproc-per-node N gpt2-finetune ...)
// runs as N ranks. Each rank trains a replica on its own shard of the
// batches (BatchSampler's shards), the gradients are averaged across ranks
// by a flora::distributed::GradientSynchronizer (the stepper's, see
// stepper.h), and only rank 0 prints, writes the report and saves models.
//
// The launcher's variables are read before anything else (launch_from_env,
// errors naming the variable); joining the job (connecting to the store and
// building the process group) is DataParallel::join, a collective, done when
// training starts. A build of flora without c10d (FLORA_WITH_DISTRIBUTED 0)
// refuses a data-parallel launch with that reason.

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include <flora/version.h>
#if FLORA_WITH_DISTRIBUTED
#include <flora/distributed.h>
#endif

namespace flora::gpt2 {

/// What the launcher told this process.
struct Launch {
  int64_t rank = 0;
  int64_t world_size = 1;
  int64_t local_rank = 0;
};

/// The launcher's variables when this process was started by one (RANK or
/// WORLD_SIZE set), else nothing. Throws UsageError naming a variable that
/// is missing or malformed, or when this build cannot train data-parallel.
std::optional<Launch> launch_from_env();

/// This rank's place in a data-parallel job.
class DataParallel {
 public:
  /// Joins the job (a collective: every rank calls it): Gloo for CPU
  /// training; NCCL for CUDA training when flora has it (the rank's device
  /// is then cuda:LOCAL_RANK), else Gloo.
  static std::unique_ptr<DataParallel> join(const Launch& launch, const torch::Device& requested);
  ~DataParallel();

  int64_t rank() const;
  int64_t size() const;
  /// Where this rank's replica lives.
  torch::Device device() const;
  /// "gloo" or "nccl".
  std::string backend() const;

  /// The mean of `value` over the ranks (a collective).
  double mean(double value) const;
  /// Whether every rank passed the same value (a collective).
  bool all_equal(uint64_t value) const;

#if FLORA_WITH_DISTRIBUTED
  flora::distributed::Group group() const;
#endif

 private:
  DataParallel();
  struct State;
  std::unique_ptr<State> state_;
};

/// A 64-bit digest (FNV-1a) of the tensors' values, dtypes and shapes, in
/// order: equal on two processes exactly when their parameters are equal
/// bit for bit (up to a hash collision).
uint64_t tensor_digest(const std::vector<torch::Tensor>& tensors);

} // namespace flora::gpt2
