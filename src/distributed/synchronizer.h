#pragma once

// The state behind flora::distributed::GradientSynchronizer, shared with the
// hooks that use it (overlap hooks, FusedBackward's reduction), so that it
// lives as long as anything can call into it. Its parts:
//   synchronizer.cpp   construction, agreement check, checkpoints, facade
//   bucket_round.cpp   modes 1 and 2: filling, launching and unpacking buckets
//   fused_reduction.cpp mode 3: one reduction per parameter inside backward

#include "agreement.h"
#include "exchange_plan.h"

#include <flora/distributed.h>

#include <torch/csrc/distributed/c10d/Work.hpp>

#include <atomic>
#include <mutex>
#include <unordered_map>

namespace flora::distributed::detail {

enum class Mode { gradients, accumulator, fused };

class Synchronizer final : public FusedReduction {
 public:
  Synchronizer(
      Mode mode,
      std::vector<torch::Tensor> params,
      const Group& group,
      SynchronizerOptions options,
      CompressedAccumulator* accumulator,
      const FusedBackward* fused);
  ~Synchronizer() override;

  // Mode 1 and 2 (bucket_round.cpp).
  void synchronize();
  /// The overlap hook of entry `index`.
  void on_gradient(int64_t index);
  void install_hooks();
  void remove_hooks();

  // Mode 3 (fused_reduction.cpp).
  torch::Tensor reduce_gradient(const torch::Tensor& param, torch::Tensor grad) override;
  void reduce_accumulated(const torch::Tensor& param, CompressedAccumulator& accumulator) override;

  void broadcast_parameters();
  void save(torch::serialize::OutputArchive& archive) const;
  void load(torch::serialize::InputArchive& archive);
  bool compressed(const torch::Tensor& param) const;

  Mode mode() const {
    return mode_;
  }
  const SynchronizerOptions& options() const {
    return options_;
  }
  int64_t rank() const {
    return rank_;
  }
  int64_t size() const {
    return size_;
  }
  int64_t bytes_per_exchange() const;
  int64_t bytes_exchanged() const;
  int64_t collectives() const;

  std::atomic<int> no_sync_depth{0};

 private:
  struct Entry {
    torch::Tensor param;
    /// The gradient travels as a sketch (modes 1 and 3 without accumulator:
    /// this synchroniser's rule; with an accumulator: the accumulator's).
    bool compressed = false;
    /// Current seed of the exchange's projection (compressed, no accumulator).
    int64_t seed = 0;
    std::vector<int64_t> exchange_shape;
    c10::ScalarType exchange_dtype = c10::kFloat;
  };

  // One bucketed exchange in progress (modes 1 and 2).
  struct Round {
    bool active = false;
    std::vector<torch::Tensor> flats; // per bucket; undefined until first filled
    std::vector<int64_t> pending; // per bucket: entries not yet filled
    std::vector<char> filled; // per entry
    std::vector<c10::intrusive_ptr<c10d::Work>> works; // per bucket, once launched
    size_t next_launch = 0;
  };

  Fingerprint fingerprint() const;
  void check_agreement() const;
  int64_t index_of(const torch::Tensor& param) const;
  std::string bucket_name(size_t bucket) const;

  // bucket_round.cpp
  void begin_round();
  torch::Tensor& flat(size_t bucket);
  torch::Tensor slice(size_t bucket, int64_t index);
  void fill_from_local(int64_t index);
  void mark_filled(int64_t index, bool present);
  void launch_ready();
  void unpack(const std::vector<char>& present);
  void advance_seeds();

  Mode mode_;
  SynchronizerOptions options_;
  c10::intrusive_ptr<c10d::Backend> backend_;
  int64_t rank_ = 0;
  int64_t size_ = 1;
  torch::Device device_ = torch::kCPU;
  std::vector<Entry> entries_;
  std::unordered_map<const void*, int64_t> index_;
  ExchangePlan plan_;
  CompressedAccumulator* accumulator_ = nullptr; // mode 2
  const FusedBackward* fused_ = nullptr; // mode 3
  bool hooks_installed_ = false;

  mutable std::mutex mutex_;
  Round round_;
  int64_t bytes_exchanged_ = 0;
  int64_t collectives_ = 0;
};

} // namespace flora::distributed::detail
