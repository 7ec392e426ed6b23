// Modes 1 and 2: one exchange in flat buckets. Each parameter's exchanged
// tensor (its gradient, its gradient's sketch, or its accumulator buffer) is
// copied into its bucket's flat tensor together with a presence flag; a
// bucket's sum all-reduce starts as soon as it and every bucket before it are
// full, so all ranks start the same collectives in the same order whatever
// order their gradients complete in; at the end the sums are divided by the
// world size and written back.

#include "synchronizer.h"

#include "collective.h"
#include "sketch.h"

#include <flora/projection.h>

#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/torch.h>

namespace flora::distributed::detail {

namespace {

constexpr const char* kWho = "flora::distributed::GradientSynchronizer";

struct OverlapHook final : torch::autograd::PostAccumulateGradHook {
  OverlapHook(Synchronizer* owner, int64_t index) : owner_(owner), index_(index) {}
  void operator()(const torch::autograd::Variable&) override {
    owner_->on_gradient(index_);
  }

 private:
  Synchronizer* owner_;
  int64_t index_;
};

} // namespace

void Synchronizer::install_hooks() {
  std::lock_guard<std::mutex> lock(mutex_);
  for (size_t i = 0; i < entries_.size(); ++i) {
    const auto& p = entries_[i].param;
    TORCH_CHECK(
        p.is_leaf(), kWho, ": overlap needs post-accumulate-grad hooks, which exist only on leaf tensors; parameter ",
        i, " (shape ", p.sizes(), ") is not one");
    TORCH_CHECK(
        torch::autograd::impl::post_acc_grad_hooks(p) == nullptr, kWho, ": parameter ", i, " (shape ", p.sizes(),
        ") already has a post-accumulate-grad hook (a FusedBackward, or another synchroniser with overlap?)");
  }
  for (size_t i = 0; i < entries_.size(); ++i) {
    torch::autograd::impl::set_post_acc_grad_hooks(
        entries_[i].param, std::make_unique<OverlapHook>(this, static_cast<int64_t>(i)));
  }
  hooks_installed_ = true;
}

void Synchronizer::remove_hooks() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!hooks_installed_) {
    return;
  }
  for (const auto& e : entries_) {
    torch::autograd::impl::set_post_acc_grad_hooks(e.param, nullptr);
  }
  hooks_installed_ = false;
}

void Synchronizer::begin_round() {
  if (round_.active) {
    return;
  }
  round_.active = true;
  const size_t buckets = plan_.buckets.size();
  round_.flats.assign(buckets, torch::Tensor());
  round_.pending.resize(buckets);
  for (size_t b = 0; b < buckets; ++b) {
    round_.pending[b] = static_cast<int64_t>(plan_.buckets[b].items.size());
  }
  round_.filled.assign(entries_.size(), 0);
  round_.works.assign(buckets, c10::intrusive_ptr<c10d::Work>());
  round_.next_launch = 0;
}

torch::Tensor& Synchronizer::flat(size_t bucket) {
  auto& f = round_.flats[bucket];
  if (!f.defined()) {
    // Allocated per exchange and freed after it: between steps a rank holds
    // no communication buffers.
    const auto& b = plan_.buckets[bucket];
    f = torch::empty({b.flat_numel()}, torch::TensorOptions().dtype(b.dtype).device(device_));
    f.narrow(0, b.numel, static_cast<int64_t>(b.items.size())).zero_();
  }
  return f;
}

torch::Tensor Synchronizer::slice(size_t bucket, int64_t index) {
  const auto& pe = plan_.entries[index];
  return flat(bucket).narrow(0, pe.offset, pe.numel);
}

void Synchronizer::mark_filled(int64_t index, bool present) {
  const auto& pe = plan_.entries[index];
  const auto& b = plan_.buckets[pe.bucket];
  if (present) {
    flat(pe.bucket).narrow(0, b.numel + pe.position, 1).fill_(1);
  }
  round_.filled[index] = 1;
  --round_.pending[pe.bucket];
}

void Synchronizer::fill_from_local(int64_t index) {
  torch::NoGradGuard no_grad;
  Entry& e = entries_[index];
  const size_t bucket = static_cast<size_t>(plan_.entries[index].bucket);
  auto target = slice(bucket, index);
  if (mode_ == Mode::accumulator) {
    const torch::Tensor buffer = accumulator_->buffer(e.param);
    if (!buffer.defined()) {
      target.zero_(); // this rank accumulated nothing for it
      mark_filled(index, false);
      return;
    }
    target.copy_(buffer.reshape(-1));
    mark_filled(index, true);
    return;
  }
  const torch::Tensor grad = e.param.grad();
  if (!grad.defined()) {
    target.zero_(); // no gradient on this rank: a zero contribution
    mark_filled(index, false);
    return;
  }
  TORCH_CHECK(
      !grad.is_sparse(), kWho, ": the gradient of parameter ", index, " (shape ", e.param.sizes(),
      ") is sparse; only dense gradients are exchanged");
  TORCH_CHECK(
      grad.sizes() == e.param.sizes(), kWho, ": parameter ", index, " has shape ", e.param.sizes(),
      " but its gradient ", grad.sizes());
  TORCH_CHECK(
      grad.device() == device_, kWho, ": the gradient of parameter ", index, " is on ", grad.device(),
      ", the parameters on ", device_);
  if (e.compressed) {
    const auto projection = sketch_projection(e.param, e.seed, *options_.compression_rank(), options_.projection());
    target.copy_(sketch_of(projection, e.param, grad).reshape(-1));
    // The sketch is all that is needed now: free the full gradient early.
    e.param.mutable_grad() = torch::Tensor();
  } else {
    target.copy_(grad.reshape(-1));
  }
  mark_filled(index, true);
}

void Synchronizer::launch_ready() {
  while (round_.next_launch < plan_.buckets.size() && round_.pending[round_.next_launch] == 0) {
    const size_t b = round_.next_launch;
    auto& f = flat(b);
    round_.works[b] = start_sum(*backend_, f, options_.timeout(), bucket_name(b));
    bytes_exchanged_ += static_cast<int64_t>(f.nbytes());
    ++collectives_;
    ++round_.next_launch;
  }
}

void Synchronizer::on_gradient(int64_t index) {
  if (no_sync_depth.load() > 0) {
    return; // the gradient accumulates in .grad until a synchronised pass
  }
  std::lock_guard<std::mutex> lock(mutex_);
  begin_round();
  const auto& p = entries_[index].param;
  TORCH_CHECK(
      !round_.filled[index], kWho, ": the gradient of parameter ", index, " (shape ", p.sizes(),
      ") completed twice before synchronize(): call synchronize() after every backward(), or run the "
      "accumulating backward passes inside no_sync()");
  fill_from_local(index);
  // Its values now travel in the bucket and come back in synchronize().
  entries_[index].param.mutable_grad() = torch::Tensor();
  launch_ready();
}

void Synchronizer::synchronize() {
  TORCH_CHECK(
      mode_ != Mode::fused, kWho,
      ": with a FusedBackward, gradients are reduced inside backward(), right before each update; do not call "
      "synchronize()");
  std::lock_guard<std::mutex> lock(mutex_);
  torch::NoGradGuard no_grad;
  begin_round();
  std::vector<char> present(entries_.size(), 0);
  try {
    for (size_t b = 0; b < plan_.buckets.size(); ++b) {
      for (const int64_t index : plan_.buckets[b].items) {
        if (!round_.filled[index]) {
          fill_from_local(index);
        }
      }
      launch_ready();
    }
    for (size_t b = 0; b < plan_.buckets.size(); ++b) {
      finish(round_.works[b], rank_, bucket_name(b));
    }
    // The presence flags of all buckets, read on the host at once.
    std::vector<torch::Tensor> flags;
    for (size_t b = 0; b < plan_.buckets.size(); ++b) {
      const auto& bucket = plan_.buckets[b];
      flags.push_back(
          round_.flats[b].narrow(0, bucket.numel, static_cast<int64_t>(bucket.items.size())).to(torch::kFloat));
    }
    if (!flags.empty()) {
      const auto host = torch::cat(flags).cpu();
      const float* f = host.data_ptr<float>();
      int64_t k = 0;
      for (size_t b = 0; b < plan_.buckets.size(); ++b) {
        for (const int64_t index : plan_.buckets[b].items) {
          present[index] = f[k++] > 0.5f;
        }
      }
    }
    if (options_.reduction() == Reduction::mean && size_ > 1) {
      for (size_t b = 0; b < plan_.buckets.size(); ++b) {
        round_.flats[b].narrow(0, 0, plan_.buckets[b].numel).div_(size_);
      }
    }
    unpack(present);
  } catch (...) {
    round_ = Round(); // a failed exchange leaves nothing half-done behind
    throw;
  }
  advance_seeds();
  round_ = Round();
}

void Synchronizer::unpack(const std::vector<char>& present) {
  for (size_t i = 0; i < entries_.size(); ++i) {
    if (!present[i]) {
      continue; // no rank had it: it keeps no gradient
    }
    Entry& e = entries_[i];
    const auto& pe = plan_.entries[i];
    const auto reduced = round_.flats[pe.bucket].narrow(0, pe.offset, pe.numel).view(e.exchange_shape);
    if (mode_ == Mode::accumulator) {
      auto buffer = accumulator_->buffer(e.param);
      if (buffer.defined()) {
        buffer.copy_(reduced);
      } else {
        accumulator_->set_buffer(e.param, reduced.clone());
      }
      continue;
    }
    if (e.compressed) {
      const auto projection = sketch_projection(e.param, e.seed, *options_.compression_rank(), options_.projection());
      e.param.mutable_grad() = gradient_from_sketch(projection, e.param, reduced);
      continue;
    }
    auto grad = e.param.grad();
    if (grad.defined() && grad.scalar_type() == e.param.scalar_type() && !grad.is_sparse()) {
      grad.copy_(reduced); // in place: the gradient tensor stays the same object, as under DDP
    } else {
      e.param.mutable_grad() = reduced.to(e.param.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
    }
  }
}

void Synchronizer::advance_seeds() {
  if (mode_ != Mode::gradients) {
    return; // an accumulator advances its own seeds in take()
  }
  for (auto& e : entries_) {
    if (e.compressed) {
      e.seed = next_seed(e.seed, options_.projection());
    }
  }
}

} // namespace flora::distributed::detail
