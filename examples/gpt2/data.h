#pragma once

// Training data: text -> token ids (encoded once) -> blocks of
// block_size + 1 consecutive tokens (inputs = the first block_size, targets =
// the last block_size) -> shuffled batches.

#include "tokenizer.h"

#include <torch/types.h>

#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace flora::gpt2 {

/// Encodes the files' texts, in order, into one 1-d int64 tensor; with
/// several files, the tokenizer's "<|endoftext|>" (if it has one) separates
/// them, as GPT-2 separates documents.
torch::Tensor encode_files(const Tokenizer& tokenizer, const std::vector<std::string>& paths);

/// Training and held-out token streams.
struct TokenSplit {
  torch::Tensor train; // 1-d int64
  torch::Tensor valid; // 1-d int64
  std::string valid_source; // e.g. "valid.txt" or "last 10% of the training text"
};

/// The held-out split comes from `valid_file` when it is not empty, else the
/// last `valid_fraction` of the training tokens (which are then not trained
/// on).
TokenSplit make_split(
    const Tokenizer& tokenizer,
    const std::vector<std::string>& train_files,
    const std::string& valid_file,
    double valid_fraction);

/// make_split of tokens already encoded: `valid` (from `valid_file`) when
/// it is defined, else the last `valid_fraction` of `train`.
TokenSplit split_tokens(torch::Tensor train, torch::Tensor valid, const std::string& valid_file, double valid_fraction);

/// The fewest training tokens that give BatchSampler one full batch at any
/// epoch offset.
int64_t min_training_tokens(int64_t block_size, int64_t batch_size);

/// Batches of random blocks, epoch after epoch. Each epoch starts the block
/// grid at a random offset in [0, block_size) (so that successive epochs see
/// different cuts of the text), takes every block of block_size + 1 tokens
/// with stride block_size, and visits them in a seeded random order. Batches
/// never straddle epochs; the incomplete last batch of an epoch is dropped.
/// Deterministic for a seed, on every platform (own Fisher-Yates shuffle
/// over std::mt19937_64).
///
/// Data-parallel training: with `shards` W > 1, shard k returns batches k,
/// k + W, k + 2W, ... of that one sequence (it steps over the others'
/// batches without building them), so W ranks with the same seed read
/// disjoint batches, and together exactly the batches one process would
/// read in W times as many calls.
class BatchSampler {
 public:
  BatchSampler(torch::Tensor tokens, int64_t block_size, int64_t batch_size, uint64_t seed, int64_t shard = 0,
               int64_t shards = 1);

  /// (inputs, targets), each (batch_size, block_size) int64 on the CPU.
  std::pair<torch::Tensor, torch::Tensor> next();
  /// Passes over the next `calls` batches of next() (to resume a run).
  void skip(int64_t calls);

  int64_t epoch() const {
    return epoch_;
  }
  /// Full batches per epoch (at offset 0).
  int64_t batches_per_epoch() const;

 private:
  void start_epoch();
  /// Positions of the sequence's next batch (starting an epoch if needed).
  size_t advance();

  torch::Tensor tokens_;
  int64_t block_size_;
  int64_t batch_size_;
  int64_t shard_;
  int64_t shards_;
  std::mt19937_64 rng_;
  std::vector<int64_t> starts_; // block start positions of this epoch, shuffled
  size_t cursor_ = 0;
  int64_t epoch_ = -1;
};

/// Evaluation blocks: every non-overlapping block of block_size + 1 tokens
/// (stride block_size, from the start; at most max_blocks if > 0) as
/// (inputs, targets), each (n_blocks, block_size).
std::pair<torch::Tensor, torch::Tensor> eval_blocks(const torch::Tensor& tokens, int64_t block_size, int64_t max_blocks = 0);

} // namespace flora::gpt2
