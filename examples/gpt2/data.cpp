#include "data.h"

#include "file_io.h"

#include <c10/util/Exception.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>

namespace flora::gpt2 {
namespace {

// Uniform integer in [0, n) without modulo bias (the same on every platform,
// unlike std::uniform_int_distribution).
uint64_t uniform_below(std::mt19937_64& rng, uint64_t n) {
  const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  while (true) {
    const uint64_t x = rng();
    if (x < limit) {
      return x % n;
    }
  }
}

torch::Tensor to_tensor(const std::vector<int64_t>& ids) {
  return torch::tensor(c10::ArrayRef<int64_t>(ids), torch::kLong);
}

} // namespace

torch::Tensor encode_files(const Tokenizer& tokenizer, const std::vector<std::string>& paths) {
  TORCH_CHECK(!paths.empty(), "encode_files: no files");
  std::vector<int64_t> ids;
  for (size_t i = 0; i < paths.size(); ++i) {
    if (i > 0 && tokenizer.eos_id() >= 0) {
      ids.push_back(tokenizer.eos_id());
    }
    const auto text = read_file(paths[i]);
    try {
      const auto part = tokenizer.encode(text);
      ids.insert(ids.end(), part.begin(), part.end());
    } catch (const c10::Error& e) {
      TORCH_CHECK(false, "encoding '", paths[i], "': ", e.what_without_backtrace());
    }
  }
  return to_tensor(ids);
}

TokenSplit make_split(
    const Tokenizer& tokenizer,
    const std::vector<std::string>& train_files,
    const std::string& valid_file,
    double valid_fraction) {
  auto train = encode_files(tokenizer, train_files);
  auto valid = valid_file.empty() ? torch::Tensor() : encode_files(tokenizer, {valid_file});
  return split_tokens(train, valid, valid_file, valid_fraction);
}

TokenSplit split_tokens(torch::Tensor train, torch::Tensor valid, const std::string& valid_file, double valid_fraction) {
  TokenSplit split;
  if (valid.defined()) {
    split.train = train;
    split.valid = valid;
    split.valid_source = valid_file;
  } else {
    TORCH_CHECK(
        valid_fraction > 0 && valid_fraction < 1, "the held-out fraction must be in (0, 1), got ", valid_fraction);
    const int64_t n = train.numel();
    const int64_t n_valid = static_cast<int64_t>(std::llround(static_cast<double>(n) * valid_fraction));
    split.train = train.slice(0, 0, n - n_valid).clone();
    split.valid = train.slice(0, n - n_valid).clone();
    char text[96];
    std::snprintf(text, sizeof(text), "the last %g%% of the training tokens", valid_fraction * 100.0);
    split.valid_source = text;
  }
  return split;
}

int64_t min_training_tokens(int64_t block_size, int64_t batch_size) {
  // At epoch offset block_size - 1, n tokens hold (n - block_size) / block_size
  // blocks of block_size + 1 tokens.
  return (batch_size + 1) * block_size;
}

BatchSampler::BatchSampler(torch::Tensor tokens, int64_t block_size, int64_t batch_size, uint64_t seed,
                           int64_t shard, int64_t shards)
    : tokens_(tokens.to(torch::kCPU, torch::kLong).contiguous()),
      block_size_(block_size),
      batch_size_(batch_size),
      shard_(shard),
      shards_(shards),
      rng_(seed) {
  TORCH_CHECK(tokens_.dim() == 1, "BatchSampler: tokens must be 1-d");
  TORCH_CHECK(
      shards >= 1 && shard >= 0 && shard < shards, "BatchSampler: shard must be in [0, shards), got shard ", shard,
      " of ", shards);
  TORCH_CHECK(block_size > 0 && batch_size > 0, "BatchSampler: block_size and batch_size must be positive");
  // The worst epoch offset (block_size - 1) must still give a full batch.
  TORCH_CHECK(
      tokens_.numel() >= min_training_tokens(block_size, batch_size), "the training text is too short: ",
      tokens_.numel(),
      " tokens do not give a batch of ", batch_size, " blocks of ", block_size + 1,
      " tokens; lower --block-size or --batch-size, or add text");
}

int64_t BatchSampler::batches_per_epoch() const {
  return (tokens_.numel() - 1) / block_size_ / batch_size_;
}

void BatchSampler::start_epoch() {
  ++epoch_;
  const int64_t offset = static_cast<int64_t>(uniform_below(rng_, static_cast<uint64_t>(block_size_)));
  const int64_t n_blocks = (tokens_.numel() - 1 - offset) / block_size_;
  starts_.resize(static_cast<size_t>(n_blocks));
  for (int64_t i = 0; i < n_blocks; ++i) {
    starts_[i] = offset + i * block_size_;
  }
  for (size_t i = starts_.size(); i > 1; --i) {
    std::swap(starts_[i - 1], starts_[uniform_below(rng_, i)]);
  }
  cursor_ = 0;
}

size_t BatchSampler::advance() {
  if (epoch_ < 0 || cursor_ + static_cast<size_t>(batch_size_) > starts_.size()) {
    start_epoch();
  }
  const size_t first = cursor_;
  cursor_ += static_cast<size_t>(batch_size_);
  return first;
}

std::pair<torch::Tensor, torch::Tensor> BatchSampler::next() {
  // The other shards' batches of this round are passed over (the random
  // stream advances exactly as if they were read). This shard's block
  // starts are copied when chosen: a later shard's batch may start a new
  // epoch, which reshuffles starts_.
  std::vector<int64_t> mine;
  for (int64_t k = 0; k < shards_; ++k) {
    const size_t first = advance();
    if (k == shard_) {
      mine.assign(starts_.begin() + static_cast<std::ptrdiff_t>(first),
                  starts_.begin() + static_cast<std::ptrdiff_t>(first) + batch_size_);
    }
  }
  auto inputs = torch::empty({batch_size_, block_size_}, torch::kLong);
  auto targets = torch::empty({batch_size_, block_size_}, torch::kLong);
  const int64_t* src = tokens_.data_ptr<int64_t>();
  int64_t* x = inputs.data_ptr<int64_t>();
  int64_t* y = targets.data_ptr<int64_t>();
  for (int64_t b = 0; b < batch_size_; ++b) {
    const int64_t s = mine[static_cast<size_t>(b)];
    std::copy(src + s, src + s + block_size_, x + b * block_size_);
    std::copy(src + s + 1, src + s + 1 + block_size_, y + b * block_size_);
  }
  return {inputs, targets};
}

void BatchSampler::skip(int64_t calls) {
  for (int64_t i = 0; i < calls * shards_; ++i) {
    advance();
  }
}

std::pair<torch::Tensor, torch::Tensor> eval_blocks(const torch::Tensor& tokens, int64_t block_size, int64_t max_blocks) {
  TORCH_CHECK(tokens.dim() == 1, "eval_blocks: tokens must be 1-d");
  int64_t n = (tokens.numel() - 1) / block_size;
  if (max_blocks > 0) {
    n = std::min(n, max_blocks);
  }
  TORCH_CHECK(
      n > 0, "the held-out text is too short: ", tokens.numel(), " tokens do not make one block of ", block_size + 1);
  auto t = tokens.to(torch::kCPU, torch::kLong);
  auto inputs = t.slice(0, 0, n * block_size).view({n, block_size}).clone();
  auto targets = t.slice(0, 1, n * block_size + 1).view({n, block_size}).clone();
  return {inputs, targets};
}

} // namespace flora::gpt2
