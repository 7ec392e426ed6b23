#include "checkpoint.h"

#include <torch/torch.h>

namespace flora::gpt2 {
namespace {

struct FunctionHolder : torch::CustomClassHolder {
  explicit FunctionHolder(std::function<torch::Tensor(const torch::Tensor&)> f) : fn(std::move(f)) {}
  std::function<torch::Tensor(const torch::Tensor&)> fn;
};

struct CheckpointFunction : torch::autograd::Function<CheckpointFunction> {
  static torch::Tensor forward(
      torch::autograd::AutogradContext* ctx,
      const torch::Tensor& x,
      torch::TensorList params,
      c10::intrusive_ptr<FunctionHolder> holder) {
    ctx->save_for_backward({x});
    ctx->saved_data["fn"] = c10::IValue::make_capsule(holder);
    // The parameters are leaves: holding them here keeps nothing else alive.
    ctx->saved_data["params"] = params.vec();
    // Function::apply runs forward under no-grad already: no graph is kept.
    return holder->fn(x);
  }

  static torch::autograd::variable_list backward(
      torch::autograd::AutogradContext* ctx,
      torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    auto holder = c10::static_intrusive_pointer_cast<FunctionHolder>(ctx->saved_data["fn"].toCapsule());
    const auto params = ctx->saved_data["params"].toTensorVector();
    // Recompute with grad enabled and differentiate with respect to x and
    // every parameter that requires grad.
    torch::Tensor x = saved[0].detach().requires_grad_(saved[0].requires_grad());
    torch::Tensor y;
    {
      torch::AutoGradMode enable(true);
      y = holder->fn(x);
    }
    std::vector<torch::Tensor> inputs;
    if (x.requires_grad()) {
      inputs.push_back(x);
    }
    for (const auto& p : params) {
      if (p.requires_grad()) {
        inputs.push_back(p);
      }
    }
    torch::autograd::variable_list grads;
    if (!inputs.empty() && y.requires_grad()) {
      grads = torch::autograd::grad({y}, inputs, {grad_outputs[0]}, /*retain_graph=*/false,
                                    /*create_graph=*/false, /*allow_unused=*/true);
    }
    // One gradient per forward input: x, each parameter, the holder (none).
    torch::autograd::variable_list out;
    out.reserve(params.size() + 2);
    size_t k = 0;
    out.push_back(x.requires_grad() && k < grads.size() ? grads[k++] : torch::Tensor());
    for (const auto& p : params) {
      out.push_back(p.requires_grad() && k < grads.size() ? grads[k++] : torch::Tensor());
    }
    out.emplace_back();
    return out;
  }
};

} // namespace

torch::Tensor checkpoint(
    std::function<torch::Tensor(const torch::Tensor&)> fn,
    const torch::Tensor& x,
    const std::vector<torch::Tensor>& params) {
  bool needs_grad = torch::GradMode::is_enabled() && x.requires_grad();
  for (const auto& p : params) {
    needs_grad = needs_grad || (torch::GradMode::is_enabled() && p.requires_grad());
  }
  if (!needs_grad) {
    return fn(x);
  }
  return CheckpointFunction::apply(x, torch::TensorList(params), c10::make_intrusive<FunctionHolder>(std::move(fn)));
}

} // namespace flora::gpt2
