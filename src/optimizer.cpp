// The Flora step, written once in terms of flora's operators and ATen: it
// knows nothing about devices; the kernels behind the operators do.

#include <flora/ops.h>
#include <flora/optimizer.h>
#include <flora/projection.h>
#include <flora/quantization.h>

#include <torch/optim/serialize.h>
#include <torch/serialize/archive.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <string>

namespace flora {

// ---------------------------------------------------------------- state

namespace {

void write_tensor(torch::serialize::OutputArchive& archive, const char* key, const torch::Tensor& t) {
  if (t.defined()) { // absent in the archive = undefined, as torch does
    archive.write(key, t);
  }
}

torch::Tensor read_tensor(torch::serialize::InputArchive& archive, const char* key) {
  c10::IValue value;
  if (!archive.try_read(key, value)) {
    return {};
  }
  TORCH_CHECK(value.isTensor(), "FloraParamState: '", key, "' is not a tensor");
  return value.toTensor();
}

bool same_tensor(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.defined() != b.defined()) {
    return false;
  }
  return !a.defined() || (a.sizes() == b.sizes() && a.dtype() == b.dtype() && torch::equal(a.cpu(), b.cpu()));
}

int64_t tensor_bytes(const torch::Tensor& t) {
  return t.defined() ? static_cast<int64_t>(t.nbytes()) : 0;
}

} // namespace

void FloraParamState::serialize(torch::serialize::OutputArchive& archive) const {
  archive.write("step", c10::IValue(step()));
  archive.write("seed", c10::IValue(seed()));
  write_tensor(archive, "rms", rms());
  write_tensor(archive, "exp_avg", exp_avg());
  write_tensor(archive, "exp_avg_sq_row", exp_avg_sq_row());
  write_tensor(archive, "exp_avg_sq_col", exp_avg_sq_col());
  write_tensor(archive, "exp_avg_sq", exp_avg_sq());
  write_tensor(archive, "exp_avg_absmax", exp_avg_absmax());
  write_tensor(archive, "exp_avg_sq_absmax", exp_avg_sq_absmax());
}

void FloraParamState::serialize(torch::serialize::InputArchive& archive) {
  c10::IValue step_value;
  c10::IValue seed_value;
  TORCH_CHECK(
      archive.try_read("step", step_value) && step_value.isInt() && archive.try_read("seed", seed_value) &&
          seed_value.isInt(),
      "FloraParamState: the archive has no integer 'step' and 'seed' (not a flora::Flora checkpoint?)");
  FloraParamState s;
  s.step(step_value.toInt());
  s.seed(seed_value.toInt());
  s.rms(read_tensor(archive, "rms"));
  s.exp_avg(read_tensor(archive, "exp_avg"));
  s.exp_avg_sq_row(read_tensor(archive, "exp_avg_sq_row"));
  s.exp_avg_sq_col(read_tensor(archive, "exp_avg_sq_col"));
  s.exp_avg_sq(read_tensor(archive, "exp_avg_sq"));
  s.exp_avg_absmax(read_tensor(archive, "exp_avg_absmax"));
  s.exp_avg_sq_absmax(read_tensor(archive, "exp_avg_sq_absmax"));
  *this = s;
}

bool operator==(const FloraParamState& lhs, const FloraParamState& rhs) {
  return lhs.step() == rhs.step() && lhs.seed() == rhs.seed() && same_tensor(lhs.rms(), rhs.rms()) &&
      same_tensor(lhs.exp_avg(), rhs.exp_avg()) && same_tensor(lhs.exp_avg_sq_row(), rhs.exp_avg_sq_row()) &&
      same_tensor(lhs.exp_avg_sq_col(), rhs.exp_avg_sq_col()) && same_tensor(lhs.exp_avg_sq(), rhs.exp_avg_sq()) &&
      same_tensor(lhs.exp_avg_absmax(), rhs.exp_avg_absmax()) &&
      same_tensor(lhs.exp_avg_sq_absmax(), rhs.exp_avg_sq_absmax());
}

int64_t FloraParamState::nbytes() const {
  return tensor_bytes(rms()) + tensor_bytes(exp_avg()) + tensor_bytes(exp_avg_sq_row()) +
      tensor_bytes(exp_avg_sq_col()) + tensor_bytes(exp_avg_sq()) + tensor_bytes(exp_avg_absmax()) +
      tensor_bytes(exp_avg_sq_absmax());
}

ParamLayout ParamLayout::of(torch::IntArrayRef shape, const FloraOptions& options) {
  ParamLayout layout;
  layout.factored = shape.size() == 2 && options.factorize_second_moment();
  layout.momentum = options.beta1().has_value() && *options.beta1() > 0;
  if (layout.momentum && layout.factored && options.rank().has_value() && *options.rank() > 0) {
    const int64_t small = std::min(shape[0], shape[1]);
    const int64_t large = std::max(shape[0], shape[1]);
    layout.compressed = small >= *options.rank() && static_cast<double>(large) / static_cast<double>(small) <= 4.0;
  }
  return layout;
}

namespace {

std::vector<int64_t> compressed_momentum_shape(torch::IntArrayRef shape, int64_t rank) {
  return shape[0] < shape[1] ? std::vector<int64_t>{rank, shape[1]} : std::vector<int64_t>{shape[0], rank};
}

std::string describe(int64_t index, size_t group, size_t position, const torch::Tensor& param) {
  std::ostringstream out;
  out << "parameter " << index << " (param group " << group << ", position " << position << ", shape "
      << param.sizes() << ")";
  return out.str();
}

void check_gradient(const torch::Tensor& param, const torch::Tensor& grad, const std::string& who) {
  TORCH_CHECK(!grad.is_sparse(), "Flora: the gradient of ", who, " is sparse; Flora does not support sparse gradients");
  TORCH_CHECK(
      !param.is_complex() && !grad.is_complex(),
      "Flora: ", who, " or its gradient is complex (", param.scalar_type(), "); Flora supports real parameters only");
  const auto dtype = param.scalar_type();
  TORCH_CHECK(
      dtype == torch::kFloat || dtype == torch::kHalf || dtype == torch::kBFloat16,
      "Flora: ", who, " has dtype ", dtype, "; Flora supports float32, float16 and bfloat16 parameters");
  TORCH_CHECK(
      grad.sizes() == param.sizes(),
      "Flora: the gradient of ", who, " has shape ", grad.sizes(), ", different from the parameter's");
  TORCH_CHECK(
      grad.scalar_type() == dtype,
      "Flora: the gradient of ", who, " has dtype ", grad.scalar_type(), ", the parameter ", dtype);
  TORCH_CHECK(
      grad.device() == param.device(),
      "Flora: the gradient of ", who, " is on ", grad.device(), ", the parameter on ", param.device());
}

struct PendingUpdate {
  torch::Tensor param; // shares storage with the parameter in its group
  torch::Tensor grad;
  const FloraOptions* options;
  int64_t index; // 1-based position over all groups: the seed offset
  std::string who;
};

// One reduction per gradient and one host read for the whole step.
void check_all_finite(const std::vector<PendingUpdate>& pending) {
  std::vector<torch::Tensor> grads;
  std::vector<const PendingUpdate*> owners;
  for (const auto& p : pending) {
    if (p.options->check_finite()) {
      grads.push_back(p.grad);
      owners.push_back(&p);
    }
  }
  if (grads.empty()) {
    return;
  }
  const auto norms = torch::_foreach_norm(grads, std::numeric_limits<double>::infinity());
  std::vector<torch::Tensor> flags;
  flags.reserve(norms.size());
  for (const auto& n : norms) {
    flags.push_back(n.isfinite().to(torch::kCPU, /*non_blocking=*/false));
  }
  const auto finite = torch::stack(flags);
  if (finite.all().item<bool>()) {
    return;
  }
  for (size_t i = 0; i < owners.size(); ++i) {
    TORCH_CHECK(
        finite[static_cast<int64_t>(i)].item<bool>(),
        "Flora: the gradient of ", owners[i]->who,
        " contains NaN or Inf; no parameter or state was changed. Skip this step (e.g. after an fp16 "
        "overflow), or set check_finite(false) to let non-finite values propagate as torch::optim::Adam does");
  }
}

// A moment's zeros: float32, or, quantized, the codes and absmax that
// quantizing zeros gives (all 0).
void initialize_moment(
    torch::Tensor& value, torch::Tensor& absmax, torch::IntArrayRef shape, const FloraOptions& options,
    const torch::TensorOptions& fp32) {
  if (!options.quantization()) {
    value = torch::zeros(shape, fp32);
    return;
  }
  value = torch::zeros(shape, fp32.dtype(torch::kUInt8));
  absmax = torch::zeros({quantization_blocks(value.numel(), options.quantization_block_size())}, fp32);
}

void initialize_state(
    FloraParamState& state, const ParamLayout& layout, torch::IntArrayRef shape, const FloraOptions& options,
    const torch::TensorOptions& fp32) {
  if (layout.momentum) {
    const auto momentum_shape = layout.compressed ? compressed_momentum_shape(shape, *options.rank()) : shape.vec();
    initialize_moment(state.exp_avg(), state.exp_avg_absmax(), momentum_shape, options, fp32);
  }
  if (layout.factored) {
    state.exp_avg_sq_row(torch::zeros({shape[0]}, fp32));
    state.exp_avg_sq_col(torch::zeros({shape[1]}, fp32));
  } else {
    initialize_moment(state.exp_avg_sq(), state.exp_avg_sq_absmax(), shape, options, fp32);
  }
}

// A moment to work on in float32 during a step: the state tensor itself, or
// its dequantized copy, written back (requantized) by store().
class WorkingMoment {
 public:
  WorkingMoment(torch::Tensor& value, torch::Tensor& absmax, const FloraOptions& options)
      : value_(value), absmax_(absmax), block_(options.quantization_block_size()), quantized_(options.quantization()) {
    work_ = quantized_ ? dequantize_blockwise(QuantizedTensor{value_, absmax_}, block_) : value_;
  }
  torch::Tensor& get() {
    return work_;
  }
  void store() {
    if (quantized_) {
      QuantizedTensor target{value_, absmax_};
      quantize_blockwise_into(work_, target, block_);
    }
  }

 private:
  torch::Tensor& value_;
  torch::Tensor& absmax_;
  torch::Tensor work_;
  int64_t block_;
  bool quantized_;
};

// beta2_t = 1 - t^decay_rate.
double beta2_at(int64_t step, const FloraOptions& options) {
  return 1.0 - std::pow(static_cast<double>(step), options.decay_rate());
}

// lr, or the relative step min(warmup_init ? 1e-6 t : 1e-2, 1 / sqrt(t)); the
// parameter-RMS scale is applied on the device by apply_update_.
double step_size_at(int64_t step, const FloraOptions& options) {
  if (!options.relative_step()) {
    return *options.lr();
  }
  const double ceiling = options.warmup_init() ? 1e-6 * static_cast<double>(step) : 1e-2;
  return std::min(ceiling, 1.0 / std::sqrt(static_cast<double>(step)));
}

// The parameters of one full_moment_step_ call.
struct FullMomentBatch {
  explicit FullMomentBatch(const FloraOptions* group_options) : options(group_options) {}

  const FloraOptions* options;
  std::vector<torch::Tensor> params, grads, exp_avg_sqs, exp_avgs;
  std::vector<double> beta2s, lrs;
  std::vector<FloraParamState*> states;
  std::vector<WorkingMoment> moments; // requantized after the step
  bool momentum = false;

  void add(const torch::Tensor& param, const torch::Tensor& grad, FloraParamState& state, bool with_momentum) {
    momentum = with_momentum; // the same for the whole batch: beta1 is per group
    params.push_back(param);
    grads.push_back(grad);
    moments.emplace_back(state.exp_avg_sq(), state.exp_avg_sq_absmax(), *options);
    exp_avg_sqs.push_back(moments.back().get());
    if (with_momentum) {
      moments.emplace_back(state.exp_avg(), state.exp_avg_absmax(), *options);
      exp_avgs.push_back(moments.back().get());
    }
    beta2s.push_back(beta2_at(state.step(), *options));
    lrs.push_back(step_size_at(state.step(), *options));
    states.push_back(&state);
  }

  void run() {
    const auto [eps1, eps2] = options->eps();
    const auto rms = ops::full_moment_step_(
        params, grads, exp_avg_sqs, exp_avgs, beta2s, lrs, eps1, eps2, momentum ? *options->beta1() : 0.0,
        options->scale_parameter(), options->clip_threshold(), options->weight_decay());
    for (size_t i = 0; i < states.size(); ++i) {
      states[i]->rms(rms[i]);
    }
    for (auto& m : moments) {
      m.store();
    }
  }
};

void update_factored(
    torch::Tensor& param, const torch::Tensor& grad, FloraParamState& state, const FloraOptions& options,
    const ParamLayout& layout) {
  const auto shape = grad.sizes();
  const auto fp32 = param.options().dtype(torch::kFloat);
  const int64_t step = state.step();
  const double eps1 = std::get<0>(options.eps());

  auto& row = state.exp_avg_sq_row();
  auto& col = state.exp_avg_sq_col();
  torch::Tensor update = ops::second_moment_factored_(grad, row, col, beta2_at(step, options), eps1);

  if (layout.momentum) {
    const double b1 = *options.beta1();
    WorkingMoment moment(state.exp_avg(), state.exp_avg_absmax(), options);
    auto& m = moment.get();
    if (!layout.compressed) {
      // (1 - b1) u + b1 m, rounded as flora-opt rounds it.
      update.mul_(1.0 - b1);
      m.mul_(b1).add_(update);
      update.copy_(m);
    } else {
      const int64_t rank = *options.rank();
      auto projection = [&](int64_t seed) {
        return Projection(seed, shape[0], shape[1], rank, options.projection(), Projection::Seeding::split, fp32);
      };
      // Reference mode rounds as flora-opt does (separate products and
      // sums): a momentum re-projected every few steps is ill-conditioned
      // enough that GEMM-folded rounding drifts ~1e-6 from it. Otherwise the
      // mixing is folded into the GEMMs (alpha/beta), saving passes and
      // temporaries.
      const bool reference_rounding = options.projection() == ProjectionMode::reference;
      const bool resample = step % options.kappa() == 0;
      Projection current = projection(state.seed());
      torch::Tensor carried; // up(m) in the current basis
      torch::Tensor mixed; // (1 - b1) u + b1 up(m)
      if (resample || reference_rounding) {
        carried = current.up(m);
      }
      if (reference_rounding) {
        mixed = (carried * b1).add_(update * (1.0 - b1));
      } else if (!resample) {
        mixed = current.up_add(update, m, 1.0 - b1, b1);
      }
      if (resample) {
        // Carry the momentum into the new basis: m <- down'(up(m)).
        state.seed(next_seed(state.seed(), options.projection()));
        current = projection(state.seed());
        m.copy_(current.down(carried));
        if (!reference_rounding) {
          mixed = carried.mul_(b1).add_(update, 1.0 - b1);
        }
      }
      if (reference_rounding) {
        m.mul_(b1).add_(current.down(update).mul_(1.0 - b1));
      } else {
        current.down_add_(m, update, b1, 1.0 - b1);
      }
      update = std::move(mixed);
    }
    moment.store();
  }

  state.rms(ops::apply_update_(
      param, update, step_size_at(step, options), std::get<1>(options.eps()), options.scale_parameter(),
      options.clip_threshold(), options.weight_decay()));
}

using StateMap = ska::flat_hash_map<void*, std::unique_ptr<torch::optim::OptimizerParamState>>;

// Updates every pending parameter (already checked).
void apply_updates(StateMap& states, std::vector<PendingUpdate>& pending) {
  // Parameters on the full-second-moment path (biases, norms, embeddings
  // when not factored, higher-rank tensors) are updated together, one call per
  // (options, device, dtype): on CUDA that is two launches for all of them.
  std::vector<FullMomentBatch> batches;
  for (auto& p : pending) {
    auto& slot = states[p.param.unsafeGetTensorImpl()];
    if (!slot) {
      auto fresh = std::make_unique<FloraParamState>();
      fresh->seed(p.options->seed() + p.index);
      slot = std::move(fresh);
    }
    auto& state = static_cast<FloraParamState&>(*slot);
    const auto layout = ParamLayout::of(p.grad.sizes(), *p.options);
    if (state.step() == 0) {
      initialize_state(state, layout, p.grad.sizes(), *p.options, p.param.options().dtype(torch::kFloat));
    }
    state.step(state.step() + 1);
    if (layout.factored) {
      update_factored(p.param, p.grad, state, *p.options, layout);
      continue;
    }
    auto batch = std::find_if(batches.begin(), batches.end(), [&](const FullMomentBatch& b) {
      return b.options == p.options && b.params.front().device() == p.param.device() &&
          b.params.front().scalar_type() == p.param.scalar_type();
    });
    if (batch == batches.end()) {
      batches.push_back(FullMomentBatch{p.options});
      batch = std::prev(batches.end());
    }
    batch->add(p.param, p.grad, state, layout.momentum);
  }
  for (auto& batch : batches) {
    batch.run();
  }
}

} // namespace

// ---------------------------------------------------------------- optimizer

Flora::Flora(const std::vector<torch::optim::OptimizerParamGroup>& param_groups, FloraOptions defaults)
    : Optimizer(param_groups, std::make_unique<FloraOptions>(defaults)) {
  validate(defaults, "Flora");
  for (size_t g = 0; g < param_groups_.size(); ++g) {
    const std::string where = "Flora: param group " + std::to_string(g);
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
    const std::string where = "Flora: param group " + std::to_string(g);
    validate(options, where.c_str());
    const auto& params = param_groups_[g].params();
    for (size_t i = 0; i < params.size(); ++i) {
      ++index;
      const auto& param = params[i];
      const auto& grad = param.grad();
      if (!grad.defined() || param.numel() == 0) {
        continue;
      }
      auto who = describe(index, g, i, param);
      check_gradient(param, grad, who);
      pending.push_back({param, grad, &options, index, std::move(who)});
    }
  }
  check_all_finite(pending);

  apply_updates(state_, pending);
  return loss;
}

void Flora::step_parameter(const torch::Tensor& param, const torch::Tensor& grad) {
  torch::NoGradGuard no_grad;
  int64_t index = 0;
  for (size_t g = 0; g < param_groups_.size(); ++g) {
    const auto& params = param_groups_[g].params();
    for (size_t i = 0; i < params.size(); ++i) {
      ++index;
      if (!params[i].is_same(param)) {
        continue;
      }
      const auto& options = static_cast<const FloraOptions&>(param_groups_[g].options());
      const std::string where = "Flora: param group " + std::to_string(g);
      validate(options, where.c_str());
      if (!grad.defined() || param.numel() == 0) {
        return;
      }
      auto who = describe(index, g, i, param);
      check_gradient(param, grad, who);
      std::vector<PendingUpdate> pending{{param, grad, &options, index, std::move(who)}};
      check_all_finite(pending);
      apply_updates(state_, pending);
      return;
    }
  }
  TORCH_CHECK(false, "Flora::step_parameter: the tensor of shape ", param.sizes(), " is not a parameter of this optimizer");
}

int64_t Flora::state_bytes() const {
  int64_t total = 0;
  for (const auto& entry : state_) {
    total += static_cast<const FloraParamState&>(*entry.second).nbytes();
  }
  return total;
}

// ---------------------------------------------------------------- checkpoints

void Flora::save(torch::serialize::OutputArchive& archive) const {
  torch::optim::serialize<FloraParamState, FloraOptions>(archive, *this);
  archive.write("flora_format", c10::IValue(static_cast<int64_t>(1)));
}

namespace {

void expect_state_tensor(
    const torch::Tensor& t, const char* name, bool wanted, torch::IntArrayRef shape, const std::string& who,
    torch::Dtype dtype = torch::kFloat) {
  if (!wanted) {
    TORCH_CHECK(!t.defined(), "Flora::load: ", who, " has an unexpected '", name, "' in the checkpoint");
    return;
  }
  TORCH_CHECK(t.defined(), "Flora::load: ", who, " has no '", name, "' in the checkpoint");
  TORCH_CHECK(
      t.sizes() == shape, "Flora::load: ", who, ": '", name, "' has shape ", t.sizes(), ", expected ", shape,
      " (was the checkpoint written for other parameters or options?)");
  TORCH_CHECK(
      t.scalar_type() == dtype, "Flora::load: ", who, ": '", name, "' has dtype ", t.scalar_type(), ", expected ",
      dtype);
}

// A moment stored as float32, or as uint8 codes plus one absmax per block.
void expect_moment(
    const torch::Tensor& value, const torch::Tensor& absmax, const char* name, const char* absmax_name, bool wanted,
    torch::IntArrayRef shape, const FloraOptions& options, const std::string& who) {
  const bool quantized = options.quantization();
  expect_state_tensor(value, name, wanted, shape, who, quantized ? torch::kUInt8 : torch::kFloat);
  int64_t numel = 1;
  for (auto d : shape) {
    numel *= d;
  }
  expect_state_tensor(
      absmax, absmax_name, wanted && quantized,
      {quantized ? quantization_blocks(numel, options.quantization_block_size()) : 0}, who);
}

void check_loaded_state(
    const FloraParamState& s, const torch::Tensor& param, const FloraOptions& options, const std::string& who) {
  TORCH_CHECK(s.step() >= 0, "Flora::load: ", who, " has a negative step count ", s.step());
  if (s.step() == 0) {
    return; // a fresh state (seed assigned, nothing accumulated yet)
  }
  const auto shape = param.sizes();
  const auto layout = ParamLayout::of(shape, options);
  expect_state_tensor(s.rms(), "rms", true, {}, who);
  const auto momentum_shape =
      layout.compressed ? compressed_momentum_shape(shape, *options.rank()) : shape.vec();
  expect_moment(
      s.exp_avg(), s.exp_avg_absmax(), "exp_avg", "exp_avg_absmax", layout.momentum, momentum_shape, options, who);
  expect_state_tensor(s.exp_avg_sq_row(), "exp_avg_sq_row", layout.factored, layout.factored ? shape.slice(0, 1) : shape, who);
  expect_state_tensor(
      s.exp_avg_sq_col(), "exp_avg_sq_col", layout.factored, layout.factored ? shape.slice(1, 1) : shape, who);
  expect_moment(
      s.exp_avg_sq(), s.exp_avg_sq_absmax(), "exp_avg_sq", "exp_avg_sq_absmax", !layout.factored, shape, options, who);
}

torch::Tensor to_device(const torch::Tensor& t, const torch::Device& device) {
  return t.defined() ? t.to(device) : t;
}

} // namespace

void Flora::load(torch::serialize::InputArchive& archive) {
  using SavedGroups =
      std::vector<std::pair<std::vector<std::string>, std::unique_ptr<torch::optim::OptimizerOptions>>>;

  // 1. Read everything into temporaries.
  StateMap saved_state;
  SavedGroups saved_groups;
  try {
    c10::IValue format;
    TORCH_CHECK(
        archive.try_read("flora_format", format) && format.isInt() && format.toInt() == 1,
        "no 'flora_format' 1 entry (written by another optimizer?)");
    torch::serialize::InputArchive state_archive;
    archive.read("state", state_archive);
    torch::optim::detail::serialize<FloraParamState>(state_archive, saved_state);
    torch::serialize::InputArchive groups_archive;
    archive.read("param_groups", groups_archive);
    torch::optim::detail::serialize<FloraOptions>(groups_archive, saved_groups);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "Flora::load: not a readable flora::Flora checkpoint: ", e.what_without_backtrace());
  }

  // 2. Validate against this optimizer's parameters.
  TORCH_CHECK(
      saved_groups.size() == param_groups_.size(), "Flora::load: the checkpoint has ", saved_groups.size(),
      " param groups, this optimizer ", param_groups_.size());
  StateMap next_state;
  int64_t index = 0;
  for (size_t g = 0; g < saved_groups.size(); ++g) {
    const auto& keys = saved_groups[g].first;
    const auto& params = param_groups_[g].params();
    TORCH_CHECK(
        keys.size() == params.size(), "Flora::load: param group ", g, " has ", keys.size(),
        " parameters in the checkpoint, ", params.size(), " in this optimizer");
    const auto& options = static_cast<const FloraOptions&>(*saved_groups[g].second);
    const std::string where = "Flora::load: param group " + std::to_string(g);
    validate(options, where.c_str());
    for (size_t i = 0; i < params.size(); ++i) {
      ++index;
      void* old_key = reinterpret_cast<void*>(std::stoull(keys[i])); // NOLINT(performance-no-int-to-ptr)
      auto found = saved_state.find(old_key);
      if (found == saved_state.end()) {
        continue;
      }
      const auto& saved = static_cast<const FloraParamState&>(*found->second);
      check_loaded_state(saved, params[i], options, describe(index, g, i, params[i]));
      auto moved = std::make_unique<FloraParamState>(saved);
      const auto device = params[i].device();
      moved->rms(to_device(saved.rms(), device));
      moved->exp_avg(to_device(saved.exp_avg(), device));
      moved->exp_avg_sq_row(to_device(saved.exp_avg_sq_row(), device));
      moved->exp_avg_sq_col(to_device(saved.exp_avg_sq_col(), device));
      moved->exp_avg_sq(to_device(saved.exp_avg_sq(), device));
      moved->exp_avg_absmax(to_device(saved.exp_avg_absmax(), device));
      moved->exp_avg_sq_absmax(to_device(saved.exp_avg_sq_absmax(), device));
      next_state[params[i].unsafeGetTensorImpl()] = std::move(moved);
    }
  }

  // 3. Commit (nothing below throws).
  state_ = std::move(next_state);
  for (size_t g = 0; g < saved_groups.size(); ++g) {
    static_cast<FloraOptions&>(param_groups_[g].options()) = static_cast<const FloraOptions&>(*saved_groups[g].second);
  }
}

} // namespace flora
