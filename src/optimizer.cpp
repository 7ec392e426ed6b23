// flora::Flora: construction, and the step's checks before anything is
// changed (the arithmetic is in update.cpp, checkpoints in
// optimizer_checkpoint.cpp).

#include "kernels/dtypes.h"
#include "param_state.h"
#include "state_fields.h"
#include "step.h"

#include <flora/optimizer.h>

#include <torch/torch.h>

#include <limits>
#include <map>
#include <string>

namespace flora {

namespace {

using detail::PendingUpdate;

void check_gradient(
    const torch::Tensor& param, const torch::Tensor& grad, const std::string& who, const FloraOptions& options) {
  TORCH_CHECK(!grad.is_sparse(), "Flora: the gradient of ", who, " is sparse; Flora does not support sparse gradients");
  TORCH_CHECK(
      !param.is_complex() && !grad.is_complex(),
      "Flora: ", who, " or its gradient is complex (", param.scalar_type(), "); Flora supports real parameters only");
  const auto dtype = param.scalar_type();
  TORCH_CHECK(
      detail::is_parameter_dtype(dtype), "Flora: ", who, " has dtype ", dtype, "; Flora supports ",
      detail::parameter_dtype_names(), " parameters");
  TORCH_CHECK(
      grad.sizes() == param.sizes(),
      "Flora: the gradient of ", who, " has shape ", grad.sizes(), ", different from the parameter's");
  TORCH_CHECK(
      grad.scalar_type() == dtype,
      "Flora: the gradient of ", who, " has dtype ", grad.scalar_type(), ", the parameter ", dtype);
  TORCH_CHECK(
      grad.device() == param.device(),
      "Flora: the gradient of ", who, " is on ", grad.device(), ", the parameter on ", param.device());
  TORCH_CHECK(
      !options.stochastic_rounding() || dtype != torch::kHalf, "Flora: ", who,
      " is float16: stochastic_rounding(true) is for bfloat16 parameters (float16 has its own rounding)");
}

// One reduction per gradient and, per device, one read of all the results
// on the host: a single synchronisation per step on a GPU.
void check_all_finite(const std::vector<PendingUpdate>& pending) {
  std::map<std::string, std::vector<const PendingUpdate*>> by_device;
  for (const auto& p : pending) {
    if (p.options->check_finite()) {
      by_device[p.grad.device().str()].push_back(&p);
    }
  }
  for (const auto& [device, owners] : by_device) {
    std::vector<torch::Tensor> grads;
    grads.reserve(owners.size());
    for (const auto* p : owners) {
      grads.push_back(p->grad);
    }
    const auto norms = torch::_foreach_norm(grads, std::numeric_limits<double>::infinity());
    const auto finite = torch::stack(norms).isfinite().cpu();
    const bool* ok = finite.data_ptr<bool>();
    for (size_t i = 0; i < owners.size(); ++i) {
      TORCH_CHECK(
          ok[i], "Flora: the gradient of ", owners[i]->who,
          " contains NaN or Inf; no parameter or state was changed. Skip this step (e.g. after an fp16 "
          "overflow), or set check_finite(false) to let non-finite values propagate as torch::optim::Adam does");
    }
  }
}

// What flora-opt's sequence (reference mode) changes, copied before it runs:
// that sequence allocates as it goes, so a failure half-way (out of memory,
// say) is undone from here rather than prevented. The fused step needs no
// copy: it allocates and checks everything before its first write.
class ReferenceUndo {
 public:
  ReferenceUndo(detail::StateMap& states, const std::vector<PendingUpdate>& pending) : states_(states) {
    for (const auto& p : pending) {
      params_.emplace_back(p.param, p.param.detach().clone());
      void* key = p.param.unsafeGetTensorImpl();
      const auto found = states.find(key);
      std::unique_ptr<FloraParamState> copy;
      if (found != states.end()) {
        copy = std::make_unique<FloraParamState>(static_cast<const FloraParamState&>(*found->second));
        detail::for_each_state_tensor(
            [](const detail::FieldInfo&, torch::Tensor& t) {
              if (t.defined()) {
                t = t.clone();
              }
            },
            *copy);
      }
      states_before_.emplace_back(key, std::move(copy));
    }
  }

  void restore() {
    torch::NoGradGuard no_grad;
    for (auto& [param, copy] : params_) {
      param.copy_(copy);
    }
    for (auto& [key, copy] : states_before_) {
      if (copy) {
        states_[key] = std::move(copy);
      } else {
        states_.erase(key);
      }
    }
  }

 private:
  detail::StateMap& states_;
  std::vector<std::pair<torch::Tensor, torch::Tensor>> params_;
  std::vector<std::pair<void*, std::unique_ptr<FloraParamState>>> states_before_;
};

// A step past detail::kMaxStepCount would leave a state that no checkpoint
// holds (the fuzz target loaded 2^62 and saved 2^62 + 1). A capturable
// state on a GPU counts on the device, which a step does not read back; it
// reaches the bound only after 2^62 replays.
void check_step_counts(const detail::StateMap& states, const std::vector<PendingUpdate>& pending) {
  for (const auto& p : pending) {
    const auto it = states.find(p.param.unsafeGetTensorImpl());
    if (it == states.end()) {
      continue;
    }
    const auto& s = static_cast<const FloraParamState&>(*it->second);
    int64_t step = s.step();
    if (s.counters().defined()) {
      if (!s.counters().is_cpu()) {
        continue;
      }
      step = s.counters().data_ptr<int64_t>()[0];
    }
    TORCH_CHECK(
        step < detail::kMaxStepCount, "Flora: ", p.who, " has taken ", step,
        " steps, the most a Flora state counts (2^62); a checkpoint of one more would not load");
  }
}

// Reference-mode parameters go through flora-opt's sequence, the others
// through the fused step. An error anywhere leaves the parameters and the
// state as they were.
void run_step(
    detail::StateMap& states,
    std::vector<PendingUpdate>& pending,
    std::map<int64_t, ParameterStatistics>* statistics) {
  check_step_counts(states, pending);
  std::vector<PendingUpdate> reference, fused;
  for (auto& p : pending) {
    (p.options->projection() == ProjectionMode::reference ? reference : fused).push_back(std::move(p));
  }
  check_all_finite(reference);
  if (reference.empty()) {
    detail::fused_step(states, fused, statistics); // checks and allocates everything before its first write
    return;
  }
  ReferenceUndo undo(states, reference);
  try {
    detail::reference_step(states, reference);
    detail::fused_step(states, fused, statistics);
  } catch (...) {
    undo.restore();
    throw;
  }
}

} // namespace

Flora::Flora(const std::vector<torch::optim::OptimizerParamGroup>& param_groups, FloraOptions defaults)
    : Optimizer(param_groups, std::make_unique<FloraOptions>(defaults)) {
  validate(defaults, "Flora");
  for (size_t g = 0; g < param_groups_.size(); ++g) {
    const std::string where = "Flora: " + detail::group_name(g);
    validate(static_cast<const FloraOptions&>(param_groups_[g].options()), where.c_str());
  }
}

Flora::Flora(std::vector<torch::Tensor> params, FloraOptions defaults)
    : Flora({torch::optim::OptimizerParamGroup(std::move(params))}, std::move(defaults)) {}

torch::Tensor Flora::step(LossClosure closure) {
  torch::NoGradGuard no_grad;
  torch::Tensor loss;
  if (closure != nullptr) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }

  // Check everything before touching anything.
  std::vector<PendingUpdate> pending;
  int64_t index = 0;
  for (size_t g = 0; g < param_groups_.size(); ++g) {
    const auto& options = static_cast<const FloraOptions&>(param_groups_[g].options());
    const std::string where = "Flora: " + detail::group_name(g);
    validate(options, where.c_str());
    const auto& params = param_groups_[g].params();
    for (size_t i = 0; i < params.size(); ++i) {
      ++index;
      const auto& param = params[i];
      const auto& grad = param.grad();
      if (!grad.defined() || param.numel() == 0) {
        continue;
      }
      auto who = detail::describe_parameter(index, g, i, param);
      check_gradient(param, grad, who, options);
      pending.push_back({param, grad, &options, index, std::move(who)});
    }
  }
  run_step(state_, pending, record_statistics_ ? &statistics_ : nullptr);
  return loss;
}

const Flora::Location* Flora::locate(const torch::Tensor& param) {
  size_t count = 0;
  for (const auto& g : param_groups_) {
    count += g.params().size();
  }
  auto lookup = [&]() -> const Location* {
    const auto it = locations_.find(param.unsafeGetTensorImpl());
    if (it == locations_.end()) {
      return nullptr;
    }
    const auto& at = it->second;
    const bool current = at.group < param_groups_.size() && at.position < param_groups_[at.group].params().size() &&
        param_groups_[at.group].params()[at.position].is_same(param);
    return current ? &at : nullptr;
  };
  if (count == located_) {
    if (const auto* at = lookup()) {
      return at;
    }
  }
  // The groups changed (or this tensor is not a parameter): index them again.
  locations_.clear();
  int64_t index = 0;
  for (size_t g = 0; g < param_groups_.size(); ++g) {
    const auto& params = param_groups_[g].params();
    for (size_t i = 0; i < params.size(); ++i) {
      locations_.emplace(params[i].unsafeGetTensorImpl(), Location{g, i, ++index});
    }
  }
  located_ = count;
  return lookup();
}

void Flora::step_parameter(const torch::Tensor& param, const torch::Tensor& grad) {
  torch::NoGradGuard no_grad;
  const Location* at = locate(param);
  TORCH_CHECK(
      at != nullptr, "Flora::step_parameter: the tensor of shape ", param.sizes(), " is not a parameter of this optimizer");
  const size_t g = at->group;
  const auto& options = static_cast<const FloraOptions&>(param_groups_[g].options());
  const std::string where = "Flora: " + detail::group_name(g);
  validate(options, where.c_str());
  if (!grad.defined() || param.numel() == 0) {
    return;
  }
  auto who = detail::describe_parameter(at->index, g, at->position, param);
  check_gradient(param, grad, who, options);
  std::vector<PendingUpdate> pending{{param, grad, &options, at->index, std::move(who)}};
  run_step(state_, pending, record_statistics_ ? &statistics_ : nullptr);
}

void Flora::record_statistics(bool on) {
  record_statistics_ = on;
  if (!on) {
    statistics_.clear();
  }
}

std::vector<ParameterStatistics> Flora::statistics() const {
  std::vector<ParameterStatistics> out;
  out.reserve(statistics_.size());
  for (const auto& [index, s] : statistics_) {
    if (s.sums.defined()) { // an entry made for a step that then failed stays empty
      out.push_back(s);
    }
  }
  return out;
}

int64_t Flora::state_bytes() const {
  int64_t total = 0;
  for (const auto& entry : state_) {
    total += static_cast<const FloraParamState&>(*entry.second).nbytes();
  }
  return total;
}

} // namespace flora
