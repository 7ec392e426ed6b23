#include "stepper.h"

#include <flora/flora.h>

#include <c10/util/Exception.h>
#include <torch/torch.h>

#include <sstream>

namespace flora::gpt2 {
namespace {

std::string number(double v) {
  std::ostringstream out;
  out << v;
  return out.str();
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

void validate(const OptimizerSpec& spec) {
  TORCH_CHECK(
      spec.name == "adam" || spec.name == "adamw" || spec.name == "flora", "unknown optimizer '", spec.name,
      "' (expected adam, adamw or flora)");
  TORCH_CHECK(spec.lr > 0, "--lr must be positive, got ", spec.lr);
  TORCH_CHECK(spec.weight_decay >= 0, "--weight-decay must be >= 0, got ", spec.weight_decay);
  const bool flora = spec.name == "flora";
  TORCH_CHECK(
      spec.quantization == "none" || spec.quantization.empty(), "--quantization ", spec.quantization,
      ": 8-bit optimizer states are not available yet");
  TORCH_CHECK(
      spec.accumulation_rank == 0, "--accumulation-rank ", spec.accumulation_rank,
      ": compressed gradient accumulation is not available yet");
  TORCH_CHECK(!spec.fused_backward, "--fused-backward: the update fused into backward is not available yet");
  if (flora) {
    TORCH_CHECK(!spec.rank || *spec.rank > 0, "--rank must be positive, got ", *spec.rank);
    TORCH_CHECK(spec.kappa > 0, "--kappa must be positive, got ", spec.kappa);
    TORCH_CHECK(
        !spec.beta1 || (*spec.beta1 >= 0 && *spec.beta1 < 1), "--beta1 must be in [0, 1), got ", *spec.beta1);
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
    FloraOptions options(spec.lr);
    options.rank(spec.rank)
        .kappa(spec.kappa)
        .beta1(spec.beta1)
        .seed(spec.seed)
        .projection(spec.projection)
        .weight_decay(spec.weight_decay);
    optimizer = std::make_unique<Flora>(params, options);
  }
  return std::make_unique<OptimizerStepper>(spec, std::move(optimizer));
}

} // namespace flora::gpt2
