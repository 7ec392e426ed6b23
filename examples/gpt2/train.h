#pragma once

// The training loop: learning-rate schedule, micro-batch gradient
// accumulation, periodic evaluation, progress lines and the measurements of
// a run (loss curve, peak memory, optimizer-state bytes, speed).

#include "data.h"
#include "data_parallel.h"
#include "memory.h"
#include "model.h"
#include "stepper.h"
#include "update_statistics.h"

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

namespace flora::gpt2 {

struct TrainOptions {
  int64_t steps = 1000;
  int64_t batch_size = 16; // sequences per micro-batch
  int64_t block_size = 64;
  int64_t grad_accum = 1; // micro-batches per step
  int64_t warmup_steps = 50;
  /// Evaluate every this many steps (and after the last); 0: only at the end.
  int64_t eval_every = 100;
  /// Evaluate on at most this many held-out blocks (0: all).
  int64_t eval_max_blocks = 0;
  /// Sequences per evaluation batch; 0: batch_size (which the user sized to
  /// fit memory: the logits of a real GPT-2 are big).
  int64_t eval_batch_size = 0;
  /// Print a progress line every this many steps (0: never).
  int64_t log_every = 100;
  uint64_t seed = 0;
  bool activation_checkpointing = false;
  /// Average the last this many steps' losses for "final train loss".
  int64_t final_loss_window = 20;
  /// Checkpoint file of the run (empty: none): written (by rank 0, atomically)
  /// every checkpoint_every steps (0: only when this invocation ends) and
  /// after the last step; with `resume`, the run continues from it.
  std::string checkpoint_file;
  int64_t checkpoint_every = 0;
  bool resume = false;
  /// End this invocation after this step (0: run to `steps`); the schedule
  /// is still that of `steps` steps, so a resumed run continues it.
  int64_t stop_after = 0;
  /// Flora: sample the update statistics every this many steps (and at
  /// step 1) into RunResult::statistics; 0: never.
  int64_t stats_every = 0;
};

/// Linear warm-up from 0 to base_lr over warmup_steps, then cosine decay to
/// 10% of base_lr at total_steps. step is 1-based.
double scheduled_lr(double base_lr, int64_t step, int64_t warmup_steps, int64_t total_steps);

/// One row of metrics.csv.
struct StepRecord {
  int64_t step = 0;
  double train_loss = 0;
  double eval_loss = std::numeric_limits<double>::quiet_NaN(); // NaN: not measured at this step
  double lr = 0;
  double elapsed_s = 0; // training time so far (evaluation excluded)
};

struct RunResult {
  std::string name;  // e.g. "flora"
  std::string label; // e.g. "flora(lr=0.1,rank=32,...)"
  std::vector<StepRecord> records;
  double initial_eval_loss = 0;
  double final_train_loss = 0; // mean of the last final_loss_window steps
  double eval_loss = 0;
  double eval_perplexity = 0;
  PeakMemory peak;
  int64_t state_bytes = 0;
  double ms_per_step = 0;
  double tokens_per_s = 0;
  double train_seconds = 0;
  /// The step the run resumed after (0: it started from scratch); the
  /// speed figures cover the steps of this invocation only.
  int64_t resumed_at = 0;
  /// Data-parallel runs: the number of ranks (1: one process), the bytes
  /// each rank handed to the process group per optimizer step (the
  /// gradient exchange; NaN when not data-parallel), and the digest of the
  /// final parameters, which train() has checked to be the same on every
  /// rank (a difference is a failure).
  int64_t world_size = 1;
  double bytes_per_step = std::numeric_limits<double>::quiet_NaN();
  uint64_t parameter_digest = 0;
  /// Empty when the run finished; else why it stopped early (e.g. the loss
  /// or a gradient became NaN: learning rate too high). The numbers then
  /// describe the steps completed.
  std::string failure;
  /// --stats-every: the sampled update statistics (flora only).
  std::vector<UpdateStatistics> statistics;
};

/// Mean next-token cross-entropy over the held-out blocks (eval mode, no
/// grad), weighting every token equally.
double evaluate(GPT2LMHeadModel& model, const torch::Tensor& inputs, const torch::Tensor& targets,
                int64_t batch_size, const torch::Device& device);

/// Trains `model` (already on `device`) on `split` with the optimizer of
/// `spec`; `log` receives the progress lines. The sampler is seeded with
/// options.seed, so runs with the same seed see the same batches. Invalid
/// options throw; a step that fails (non-finite loss or gradient) ends the
/// run early with RunResult::failure set, so that a comparison goes on.
///
/// With `parallel` (every rank calls train() with the same arguments): each
/// rank reads its shard of the batches (so a step sees world_size times as
/// many sequences), the gradients are averaged across ranks, the reported
/// training loss is the mean over ranks, rank 0 alone evaluates, and at the
/// end the ranks compare their parameters' digests.
RunResult train(
    GPT2LMHeadModel& model,
    const TokenSplit& split,
    const OptimizerSpec& spec,
    const TrainOptions& options,
    const torch::Device& device,
    const std::function<void(const std::string&)>& log = nullptr,
    const DataParallel* parallel = nullptr);

} // namespace flora::gpt2
