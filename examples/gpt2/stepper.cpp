#include "stepper.h"

#include <flora/flora.h>

#include <c10/util/Exception.h>
#include <torch/torch.h>

#include <cmath>
#include <sstream>

namespace flora::gpt2 {
namespace {

std::string number(double v) {
  std::ostringstream out;
  out << v;
  return out.str();
}

// torch's Adam and AdamW create their moments lazily, in the parameter's
// dtype; for bfloat16 parameters they are created here in float32 instead,
// as Flora keeps its own (the update is then computed in float32 and
// rounded once into the parameter). Both look a parameter's state up by its
// TensorImpl, and create none where one exists.
void float32_adam_states(torch::optim::Optimizer& optimizer) {
  const bool adamw = dynamic_cast<torch::optim::AdamW*>(&optimizer) != nullptr;
  if (!adamw && dynamic_cast<torch::optim::Adam*>(&optimizer) == nullptr) {
    return;
  }
  for (auto& group : optimizer.param_groups()) {
    for (const auto& p : group.params()) {
      if (p.scalar_type() == torch::kFloat || !at::isFloatingType(p.scalar_type())) {
        continue;
      }
      auto zeros = [&] { return torch::zeros_like(p, torch::TensorOptions().dtype(torch::kFloat)); };
      std::unique_ptr<torch::optim::OptimizerParamState> state;
      if (adamw) {
        auto s = std::make_unique<torch::optim::AdamWParamState>();
        s->step(0).exp_avg(zeros()).exp_avg_sq(zeros());
        state = std::move(s);
      } else {
        auto s = std::make_unique<torch::optim::AdamParamState>();
        s->step(0).exp_avg(zeros()).exp_avg_sq(zeros());
        state = std::move(s);
      }
      optimizer.state()[p.unsafeGetTensorImpl()] = std::move(state);
    }
  }
}

/// Gradients summed by autograd in .grad, then one optimizer.step().
class OptimizerStepper : public TrainStepper {
 public:
  OptimizerStepper(OptimizerSpec spec, std::unique_ptr<torch::optim::Optimizer> optimizer)
      : TrainStepper(std::move(spec)), optimizer_(std::move(optimizer)) {}

  void begin_step() override {
    optimizer_->zero_grad();
  }
  void backward(const torch::Tensor& loss, bool /*last*/) override {
    loss.backward();
  }
  void finish_step() override {
    optimizer_->step();
  }
  void set_lr(double lr) override {
    for (auto& group : optimizer_->param_groups()) {
      group.options().set_lr(lr);
    }
  }
  int64_t state_bytes() const override {
    return flora::optimizer_state_bytes(*optimizer_);
  }
  torch::optim::Optimizer& optimizer() override {
    return *optimizer_;
  }

 private:
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
};

/// Gradients folded into a flora::CompressedAccumulator after each
/// micro-batch and released; restored before optimizer.step().
class AccumulatingStepper : public OptimizerStepper {
 public:
  AccumulatingStepper(
      OptimizerSpec spec, std::unique_ptr<torch::optim::Optimizer> optimizer, const std::vector<torch::Tensor>& params)
      : OptimizerStepper(spec, std::move(optimizer)),
        accumulator_(
            params,
            AccumulationOptions(spec.accumulation_rank).projection(spec.projection).seed(spec.seed)) {}

  void backward(const torch::Tensor& loss, bool /*last*/) override {
    loss.backward();
    accumulator_.accumulate();
  }
  void finish_step() override {
    accumulator_.restore();
    OptimizerStepper::finish_step();
  }

 private:
  CompressedAccumulator accumulator_;
};

/// Each parameter updated inside backward by a flora::FusedBackward.
class FusedStepper : public TrainStepper {
 public:
  FusedStepper(OptimizerSpec spec, std::unique_ptr<Flora> optimizer)
      : TrainStepper(spec), optimizer_(std::move(optimizer)) {
    auto options = FusedBackwardOptions().accumulation_steps(spec.micro_batches).projection(spec.projection);
    if (spec.accumulation_rank > 0) {
      options.accumulation_rank(spec.accumulation_rank).accumulation_seed(spec.seed);
    }
    fused_ = std::make_unique<FusedBackward>(*optimizer_, options);
  }

  void begin_step() override {} // gradients are released inside backward
  void backward(const torch::Tensor& loss, bool /*last*/) override {
    loss.backward();
  }
  void finish_step() override {}
  void set_lr(double lr) override {
    for (auto& group : optimizer_->param_groups()) {
      group.options().set_lr(lr);
    }
  }
  int64_t state_bytes() const override {
    return optimizer_->state_bytes();
  }
  torch::optim::Optimizer& optimizer() override {
    return *optimizer_;
  }

 private:
  std::unique_ptr<Flora> optimizer_;
  std::unique_ptr<FusedBackward> fused_; // declared last: its hooks go first
};

} // namespace

std::string OptimizerSpec::label() const {
  std::string s = name + "(lr=" + number(lr);
  if (name == "flora") {
    s += ",rank=" + (rank ? std::to_string(*rank) : std::string("none"));
    s += ",kappa=" + std::to_string(kappa);
    s += ",b1=" + (beta1 ? number(*beta1) : std::string("none"));
    if (projection == ProjectionMode::reference) {
      s += ",reference";
    }
    if (quantization == "8bit") {
      s += ",8bit";
    }
    if (fused_backward) {
      s += ",fused";
    }
  }
  if (accumulation_rank > 0) {
    s += ",acc_rank=" + std::to_string(accumulation_rank);
  }
  if (weight_decay != 0.0) {
    s += ",wd=" + number(weight_decay);
  }
  return s + ")";
}

ProjectionMode parse_projection(const std::string& name) {
  if (name == "philox") {
    return ProjectionMode::philox;
  }
  if (name == "reference") {
    return ProjectionMode::reference;
  }
  TORCH_CHECK(false, "--projection must be philox or reference, got '", name, "'");
}

FloraOptions flora_options(const OptimizerSpec& spec) {
  FloraOptions options(spec.lr);
  options.rank(spec.rank)
      .kappa(spec.kappa)
      .beta1(spec.beta1)
      .seed(spec.seed)
      .projection(spec.projection)
      .weight_decay(spec.weight_decay)
      .quantization(spec.quantization == "8bit");
  return options;
}

// Only what is the example's own; Flora's options are flora::validate's,
// and torch's Adam checks its own (but accepts lr = 0 and a NaN weight
// decay, which are refused here).
void validate(const OptimizerSpec& spec) {
  TORCH_CHECK(
      spec.name == "adam" || spec.name == "adamw" || spec.name == "flora", "unknown optimizer '", spec.name,
      "' (expected adam, adamw or flora)");
  const bool flora = spec.name == "flora";
  TORCH_CHECK(
      spec.quantization == "none" || spec.quantization == "8bit", "--quantization must be none or 8bit, got '",
      spec.quantization, "'");
  TORCH_CHECK(
      flora || spec.quantization != "8bit", "--quantization 8bit applies to flora only, not ", spec.name);
  TORCH_CHECK(flora || !spec.fused_backward, "--fused-backward applies to flora only, not ", spec.name);
  TORCH_CHECK(spec.micro_batches >= 1, "--grad-accum must be positive, got ", spec.micro_batches);
  TORCH_CHECK(spec.accumulation_rank >= 0, "--accumulation-rank must be >= 0, got ", spec.accumulation_rank);
  TORCH_CHECK(
      spec.accumulation_rank == 0 || spec.micro_batches > 1, "--accumulation-rank ", spec.accumulation_rank,
      " needs --grad-accum > 1: with one micro-batch there is nothing to accumulate");
  if (flora) {
    flora::validate(flora_options(spec), "flora");
  } else {
    TORCH_CHECK(std::isfinite(spec.lr) && spec.lr > 0, spec.name, ": lr must be positive and finite, got ", spec.lr);
    TORCH_CHECK(
        std::isfinite(spec.weight_decay) && spec.weight_decay >= 0, spec.name,
        ": weight_decay must be non-negative and finite, got ", spec.weight_decay);
  }
}

std::unique_ptr<TrainStepper> make_stepper(const OptimizerSpec& spec, const std::vector<torch::Tensor>& params) {
  validate(spec);
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  if (spec.name == "adam") {
    optimizer = std::make_unique<torch::optim::Adam>(
        params, torch::optim::AdamOptions(spec.lr)
                    .betas({spec.adam_beta1, spec.adam_beta2})
                    .eps(spec.adam_eps)
                    .weight_decay(spec.weight_decay));
  } else if (spec.name == "adamw") {
    optimizer = std::make_unique<torch::optim::AdamW>(
        params, torch::optim::AdamWOptions(spec.lr)
                    .betas({spec.adam_beta1, spec.adam_beta2})
                    .eps(spec.adam_eps)
                    .weight_decay(spec.weight_decay));
  } else {
    const auto options = flora_options(spec);
    if (spec.fused_backward) {
      return std::make_unique<FusedStepper>(spec, std::make_unique<Flora>(params, options));
    }
    optimizer = std::make_unique<Flora>(params, options);
  }
  float32_adam_states(*optimizer);
  if (spec.accumulation_rank > 0) {
    return std::make_unique<AccumulatingStepper>(spec, std::move(optimizer), params);
  }
  return std::make_unique<OptimizerStepper>(spec, std::move(optimizer));
}

} // namespace flora::gpt2
