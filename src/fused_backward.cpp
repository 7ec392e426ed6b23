#include <flora/fused_backward.h>

#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/graph_task.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/torch.h>

namespace flora {

struct FusedBackward::Hook final : torch::autograd::PostAccumulateGradHook {
  explicit Hook(FusedBackward* owner) : owner_(owner) {}
  void operator()(const torch::autograd::Variable& param) override {
    owner_->on_gradient(param);
  }

 private:
  FusedBackward* owner_;
};

FusedBackward::FusedBackward(Flora& optimizer, FusedBackwardOptions options)
    : optimizer_(optimizer), options_(options) {
  TORCH_CHECK(
      !options.max_global_norm().has_value(), "FusedBackward: max_global_norm (", options.max_global_norm().value_or(0),
      ") cannot be honoured: clipping by the global norm needs every gradient before the first update, and the fused "
      "mode updates each parameter as soon as its own gradient is ready. Use clip_value or max_parameter_norm, or "
      "train without FusedBackward (backward(), torch::nn::utils::clip_grad_norm_, step())");
  TORCH_CHECK(
      options.accumulation_steps() >= 1, "FusedBackward: accumulation_steps must be >= 1, got ",
      options.accumulation_steps());
  TORCH_CHECK(
      !options.accumulation_rank().has_value() || options.accumulation_steps() > 1,
      "FusedBackward: accumulation_rank (", options.accumulation_rank().value_or(0),
      ") needs accumulation_steps > 1: with one micro-batch nothing is accumulated");
  TORCH_CHECK(
      !options.accumulation_rank().has_value() || *options.accumulation_rank() > 0,
      "FusedBackward: accumulation_rank must be positive when given, got ", options.accumulation_rank().value_or(0));
  TORCH_CHECK(
      !options.clip_value().has_value() || *options.clip_value() > 0, "FusedBackward: clip_value must be positive, got ",
      options.clip_value().value_or(0));
  TORCH_CHECK(
      !options.max_parameter_norm().has_value() || *options.max_parameter_norm() > 0,
      "FusedBackward: max_parameter_norm must be positive, got ", options.max_parameter_norm().value_or(0));

  for (const auto& group : optimizer.param_groups()) {
    for (const auto& p : group.params()) {
      if (p.requires_grad()) {
        TORCH_CHECK(
            p.is_leaf(), "FusedBackward: a parameter of shape ", p.sizes(),
            " is not a leaf tensor; post-accumulate-grad hooks exist only on leaves");
        TORCH_CHECK(
            torch::autograd::impl::post_acc_grad_hooks(p) == nullptr, "FusedBackward: a parameter of shape ",
            p.sizes(), " already has a post-accumulate-grad hook (another FusedBackward?)");
        params_.push_back(p);
      }
    }
  }
  if (options.accumulation_steps() > 1) {
    accumulator_ = std::make_unique<CompressedAccumulator>(
        params_,
        AccumulationOptions(options.accumulation_rank().value_or(0))
            .projection(options.projection())
            .seed(options.accumulation_seed()));
  }
  for (const auto& p : params_) {
    torch::autograd::impl::set_post_acc_grad_hooks(p, std::make_unique<Hook>(this));
  }
  installed_ = true;
}

FusedBackward::~FusedBackward() {
  remove();
}

void FusedBackward::remove() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!installed_) {
    return;
  }
  for (const auto& p : params_) {
    torch::autograd::impl::set_post_acc_grad_hooks(p, nullptr);
  }
  installed_ = false;
}

void FusedBackward::set_reduction(std::shared_ptr<FusedReduction> reduction) {
  std::lock_guard<std::mutex> lock(mutex_);
  TORCH_CHECK(
      !(reduction_ && reduction), "FusedBackward: a reduction is installed already (another GradientSynchronizer?); "
                                  "one FusedBackward reduces through one");
  reduction_ = std::move(reduction);
}

int64_t FusedBackward::micro_steps() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return micro_steps_;
}

int64_t FusedBackward::updates() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return updates_;
}

void FusedBackward::on_gradient(const torch::Tensor& param) {
  std::lock_guard<std::mutex> lock(mutex_);
  const bool sync = (micro_steps_ + 1) % options_.accumulation_steps() == 0;
  const int64_t task = torch::autograd::get_current_graph_task_id();
  if (queued_task_ < 0 || queued_task_ != task) {
    // Runs once this backward pass has finished: it is one micro-batch. A
    // pass that throws (an allocation, a check, in autograd or in a hook)
    // never runs it, so the flag is the task's id, not a bool that would
    // stay set and stop every later pass from counting.
    queued_task_ = task;
    torch::autograd::Engine::get_default_engine().queue_callback([this, sync, task] {
      std::lock_guard<std::mutex> end_lock(mutex_);
      ++micro_steps_;
      updates_ += sync ? 1 : 0;
      if (queued_task_ == task) {
        queued_task_ = -1;
      }
    });
  }
  torch::NoGradGuard no_grad;
  torch::Tensor grad;
  if (accumulator_) {
    accumulator_->accumulate(param); // releases the full gradient
    if (!sync) {
      return;
    }
    if (reduction_ && accumulator_->buffer(param).defined()) {
      reduction_->reduce_accumulated(param, *accumulator_);
    }
    grad = accumulator_->take(param);
  } else {
    grad = param.grad();
    param.mutable_grad() = torch::Tensor();
    if (reduction_ && grad.defined()) {
      grad = reduction_->reduce_gradient(param, std::move(grad));
    }
  }
  if (!grad.defined()) {
    return;
  }
  if (grad.scalar_type() != param.scalar_type()) {
    grad = grad.to(param.scalar_type());
  }
  if (options_.clip_value().has_value()) {
    grad = grad.clamp(-*options_.clip_value(), *options_.clip_value());
  }
  if (options_.max_parameter_norm().has_value()) {
    // torch::nn::utils::clip_grad_norm_'s rule for one tensor, without a
    // host synchronisation: scale by min(1, max / (norm + 1e-6)).
    const auto norm = at::linalg_vector_norm(grad, 2, {}, false, torch::kFloat);
    const auto scale = (*options_.max_parameter_norm() / (norm + 1e-6)).clamp_max(1.0);
    grad = (grad.to(torch::kFloat) * scale).to(param.scalar_type());
  }
  optimizer_.step_parameter(param, grad);
}

} // namespace flora
