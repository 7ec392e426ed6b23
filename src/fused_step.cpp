// The fused step (ProjectionMode::philox): parameters are grouped by what
// their update needs, and each group goes through a handful of operator
// calls, however many parameters it has (fused_ops.h):
//
//   full       full second moment (biases, norms, 0-d, >2-d, unfactored):
//              gradient_sums_, full_step_
//   factored   Adafactor's row/column moment, momentum uncompressed or none:
//              gradient_sums_, factored_step_
//   compressed factored with the momentum compressed to rank r, one group
//              per shape: gradient_sums_, factored_normalize_ into one
//              (G, m, n) buffer, the projections of all G parameters from
//              one philox_normal_batch_, the down/up products as batched
//              GEMMs, apply_updates_.
//
// The momentum of a compressed parameter (P its projection, u its
// normalised gradient, M its compressed momentum):
//   update = (1 - b1) u + b1 up(M)
//   M'     = b1 T(M) + (1 - b1) down'(u)
// where down' projects with the step's new projection P' (P itself unless
// this step resamples) and T(M) = down'(up(M)) = (P' P^T) M carries the
// momentum into the new basis (T = identity unless resampling). That is
// flora-opt's rule rearranged: at a resample it sets M <- down'(up(M)) and
// then M <- b1 M + (1 - b1) down'(u). The r x r matrix P' P^T replaces two
// full-size products. Capturable steps compute T for every parameter and
// blend it to the identity on the device (keep_unless_resampled_), so that
// the decision never needs the host.
//
// Nothing changes until every gradient's sums are in: a non-finite
// gradient (for a parameter whose options ask for the check) is reported
// with one host read of the flags per device, before any state is touched.

#include "fused_ops.h"
#include "param_state.h"
#include "step.h"
#include "kernels/step_math.h"
#include "kernels/stochastic_rounding.h"
#include "kernels/sums_layout.h"

#include <flora/layout.h>
#include <flora/projection.h>
#include <flora/quantization.h>

#include <torch/torch.h>

#include <algorithm>
#include <limits>
#include <cmath>
#include <map>
#include <memory>
#include <tuple>

namespace flora::detail {
namespace {

// Temporary update buffers of one batched launch are kept under this many
// bytes (or one parameter's, when that is larger): a shape group larger than
// this goes in several chunks.
constexpr int64_t kStepBufferBytes = int64_t{128} << 20;

enum class Kind { full, factored, compressed };

struct Member {
  PendingUpdate* pending = nullptr;
  FloraParamState* state = nullptr; // existing state, or null: `fresh` is new
  std::unique_ptr<FloraParamState> fresh;
  torch::Tensor param; // contiguous (a working copy when the parameter is not)
  torch::Tensor grad; // contiguous
  int64_t step = 0; // this step's count
  int64_t seed = 0; // projection seed for this step (after a resample)
  int64_t previous_seed = 0; // before it
  bool resample = false;

  FloraParamState& target() {
    return state != nullptr ? *state : *fresh;
  }
};

struct Group {
  Kind kind;
  const FloraOptions* options;
  bool capturable = false; // scalars from device counters, resampling decided on the device
  std::vector<Member*> members;
  torch::Tensor flags; // this group's slice of its device's flags
  int64_t flags_offset = 0; // where that slice starts
  torch::Tensor sums;
};

StepHyper hyper_of(const FloraOptions& o, bool momentum) {
  StepHyper h;
  h.lr = o.lr().value_or(0.0);
  h.eps1 = std::get<0>(o.eps());
  h.eps2 = std::get<1>(o.eps());
  h.beta1 = momentum ? *o.beta1() : 0.0;
  h.decay_rate = o.decay_rate();
  h.clip_threshold = o.clip_threshold();
  h.weight_decay = o.weight_decay();
  h.scale_parameter = o.scale_parameter();
  h.relative_step = o.relative_step();
  h.warmup_init = o.warmup_init();
  return h;
}

// The groups of the step, in the order of their first parameter.
std::vector<Group> group_members(std::vector<Member>& members) {
  using Key = std::tuple<const FloraOptions*, std::string, int, int, std::vector<int64_t>, bool>;
  std::map<Key, size_t> index;
  std::vector<Group> groups;
  for (auto& m : members) {
    const auto& options = *m.pending->options;
    const auto layout = ParamLayout::of(m.param.sizes(), options);
    const Kind kind = layout.compressed ? Kind::compressed : (layout.factored ? Kind::factored : Kind::full);
    // Compressed parameters group by shape, and (eager steps) by whether
    // this step resamples them: the two take different products. A
    // capturable step does not know; it takes both.
    const Key key{
        &options,
        m.param.device().str(),
        static_cast<int>(m.param.scalar_type()),
        static_cast<int>(kind),
        kind == Kind::compressed ? m.param.sizes().vec() : std::vector<int64_t>{},
        kind == Kind::compressed && m.resample && !options.capturable()};
    auto [it, inserted] = index.emplace(key, groups.size());
    if (inserted) {
      groups.push_back(Group{kind, &options, options.capturable(), {}, {}, 0, {}});
    }
    groups[it->second].members.push_back(&m);
  }
  // Compressed groups larger than the buffer budget go in chunks.
  std::vector<Group> out;
  for (auto& g : groups) {
    if (g.kind != Kind::compressed) {
      out.push_back(std::move(g));
      continue;
    }
    const int64_t bytes = g.members.front()->param.numel() * 4;
    const auto per_chunk = static_cast<size_t>(std::max<int64_t>(1, kStepBufferBytes / std::max<int64_t>(bytes, 1)));
    for (size_t i = 0; i < g.members.size(); i += per_chunk) {
      Group chunk{g.kind, g.options, g.capturable, {}, {}, 0, {}};
      chunk.members.assign(g.members.begin() + i, g.members.begin() + std::min(g.members.size(), i + per_chunk));
      out.push_back(std::move(chunk));
    }
  }
  return out;
}

template <typename Get>
std::vector<torch::Tensor> collect(const Group& g, const Get& get) {
  std::vector<torch::Tensor> out;
  out.reserve(g.members.size());
  for (auto* m : g.members) {
    const torch::Tensor& t = get(*m);
    if (!t.defined()) {
      return {}; // all or none: the layout is the group's
    }
    out.push_back(t);
  }
  return out;
}

// Eager steps pass the counts from the host; capturable ones read the
// device counters instead.
std::vector<int64_t> steps_of(const Group& g) {
  std::vector<int64_t> out;
  if (g.capturable) {
    return out;
  }
  for (auto* m : g.members) {
    out.push_back(m->step);
  }
  return out;
}

std::vector<torch::Tensor> counters_of(const Group& g) {
  if (!g.capturable) {
    return {};
  }
  return collect(g, [](Member& m) -> const torch::Tensor& { return m.target().counters(); });
}

// Stochastic rounding keys of bfloat16 parameters (none otherwise: float32
// needs no rounding, and the optimizer refused float16).
std::vector<int64_t> rounding_keys_of(const Group& g) {
  std::vector<int64_t> keys;
  if (!g.options->stochastic_rounding() || g.members.front()->param.scalar_type() != torch::kBFloat16) {
    return keys;
  }
  for (auto* m : g.members) {
    keys.push_back(static_cast<int64_t>(rounding_key(g.options->seed(), m->pending->index)));
  }
  return keys;
}

std::optional<torch::Tensor> lr_tensor_of(const Group& g) {
  if (!g.capturable) {
    return std::nullopt;
  }
  return g.options->device_lr(g.members.front()->param.device());
}

std::optional<torch::Tensor> code_map_for(const Group& g) {
  if (!g.options->quantization()) {
    return std::nullopt;
  }
  return dynamic_code_map(); // read on the host on every device (kernels/checks.h)
}

// Phase 1 for every group; then the finite check. Throws before anything
// was changed.
void gradient_sums_and_check(std::vector<Group>& groups) {
  std::map<std::string, int64_t> per_device;
  for (auto& g : groups) {
    per_device[g.members.front()->param.device().str()] += static_cast<int64_t>(g.members.size());
  }
  std::map<std::string, torch::Tensor> flags;
  std::map<std::string, int64_t> used;
  for (auto& g : groups) {
    const auto device = g.members.front()->param.device();
    auto& f = flags[device.str()];
    if (!f.defined()) {
      f = torch::empty({per_device[device.str()]}, torch::TensorOptions().device(device).dtype(torch::kFloat));
    }
    const int64_t count = static_cast<int64_t>(g.members.size());
    g.flags_offset = used[device.str()];
    g.flags = f.narrow(0, g.flags_offset, count);
    used[device.str()] += count;
    const auto params = collect(g, [](Member& m) -> const torch::Tensor& { return m.param; });
    const auto grads = collect(g, [](Member& m) -> const torch::Tensor& { return m.grad; });
    const bool factored = g.kind != Kind::full;
    g.sums = torch::empty(
        {SumsLayout::of(params, factored).size}, torch::TensorOptions().device(device).dtype(torch::kFloat));
    ops::gradient_sums_(params, grads, factored, g.flags, g.sums);
  }
  // Read a device's flags (once) only when some group on it asks for the check.
  std::map<std::string, torch::Tensor> host;
  for (auto& g : groups) {
    if (!g.options->check_finite()) {
      continue;
    }
    const auto device = g.members.front()->param.device().str();
    auto& h = host[device];
    if (!h.defined()) {
      h = flags[device].cpu();
    }
    const float* b = h.data_ptr<float>() + g.flags_offset;
    for (size_t i = 0; i < g.members.size(); ++i) {
      TORCH_CHECK(
          b[i] == 0.0f, "Flora: the gradient of ", g.members[i]->pending->who,
          " contains NaN or Inf; no parameter or state was changed. Skip this step (e.g. after an fp16 "
          "overflow), or set check_finite(false) to let non-finite values propagate as torch::optim::Adam does");
    }
  }
}

void run_full(Group& g) {
  const auto& o = *g.options;
  const bool momentum = ParamLayout::of(g.members.front()->param.sizes(), o).momentum;
  const auto params = collect(g, [](Member& m) -> const torch::Tensor& { return m.param; });
  const auto grads = collect(g, [](Member& m) -> const torch::Tensor& { return m.grad; });
  const auto v = collect(g, [](Member& m) -> const torch::Tensor& { return m.target().exp_avg_sq(); });
  const auto v_absmax = collect(g, [](Member& m) -> const torch::Tensor& { return m.target().exp_avg_sq_absmax(); });
  const auto m1 = collect(g, [](Member& m) -> const torch::Tensor& { return m.target().exp_avg(); });
  const auto m1_absmax = collect(g, [](Member& m) -> const torch::Tensor& { return m.target().exp_avg_absmax(); });
  const auto rms = collect(g, [](Member& m) -> const torch::Tensor& { return m.target().rms(); });
  ops::full_step_(
      params, grads, v, v_absmax, momentum ? m1 : std::vector<torch::Tensor>{},
      momentum ? m1_absmax : std::vector<torch::Tensor>{}, rms, g.sums, steps_of(g), counters_of(g),
      lr_tensor_of(g), hyper_of(o, momentum), o.quantization_block_size(), code_map_for(g), rounding_keys_of(g));
}

void run_factored(Group& g) {
  const auto& o = *g.options;
  const bool momentum = ParamLayout::of(g.members.front()->param.sizes(), o).momentum;
  const auto params = collect(g, [](Member& m) -> const torch::Tensor& { return m.param; });
  const auto grads = collect(g, [](Member& m) -> const torch::Tensor& { return m.grad; });
  const auto rows = collect(g, [](Member& m) -> const torch::Tensor& { return m.target().exp_avg_sq_row(); });
  const auto cols = collect(g, [](Member& m) -> const torch::Tensor& { return m.target().exp_avg_sq_col(); });
  const auto m1 = collect(g, [](Member& m) -> const torch::Tensor& { return m.target().exp_avg(); });
  const auto m1_absmax = collect(g, [](Member& m) -> const torch::Tensor& { return m.target().exp_avg_absmax(); });
  const auto rms = collect(g, [](Member& m) -> const torch::Tensor& { return m.target().rms(); });
  ops::factored_step_(
      params, grads, rows, cols, momentum ? m1 : std::vector<torch::Tensor>{},
      momentum ? m1_absmax : std::vector<torch::Tensor>{}, rms, g.sums, steps_of(g), counters_of(g),
      lr_tensor_of(g), hyper_of(o, momentum), o.quantization_block_size(), code_map_for(g), rounding_keys_of(g));
}

void run_compressed(Group& g) {
  const auto& o = *g.options;
  const auto& first = *g.members.front();
  const int64_t count = static_cast<int64_t>(g.members.size());
  const int64_t m = first.param.size(0), n = first.param.size(1), r = *o.rank();
  const bool left = projects_from_left(m, n);
  // Eager: whether this step resamples is known (the same for the whole
  // group); capturable: always take the basis change, kept only when due.
  const bool carry_basis = g.capturable || first.resample;
  const double b1 = *o.beta1();
  const auto fp32 = first.param.options().dtype(torch::kFloat);

  const auto params = collect(g, [](Member& x) -> const torch::Tensor& { return x.param; });
  const auto grads = collect(g, [](Member& x) -> const torch::Tensor& { return x.grad; });
  const auto rows = collect(g, [](Member& x) -> const torch::Tensor& { return x.target().exp_avg_sq_row(); });
  const auto cols = collect(g, [](Member& x) -> const torch::Tensor& { return x.target().exp_avg_sq_col(); });
  const auto moments = collect(g, [](Member& x) -> const torch::Tensor& { return x.target().exp_avg(); });
  const auto absmaxes = collect(g, [](Member& x) -> const torch::Tensor& { return x.target().exp_avg_absmax(); });
  const auto rms = collect(g, [](Member& x) -> const torch::Tensor& { return x.target().rms(); });
  const auto steps = steps_of(g);
  const auto counters = counters_of(g);
  const auto lr_tensor = lr_tensor_of(g);
  const auto code_map = code_map_for(g);

  // u for all G parameters.
  auto u = torch::empty({count, m, n}, fp32);
  ops::factored_normalize_(grads, rows, cols, g.sums, steps, counters, std::get<0>(o.eps()), o.decay_rate(), u);

  // The projections: P (this step's basis) and, resampling, P_old.
  const auto side = left ? ops::SeedSide::left : ops::SeedSide::right;
  const double scale = 1.0 / std::sqrt(static_cast<double>(r));
  auto projections = [&](bool previous) {
    auto p = left ? torch::empty({count, r, m}, fp32) : torch::empty({count, n, r}, fp32);
    if (g.capturable) {
      ops::philox_normal_batch_(p, {}, counters, previous ? 2 : 1, side, scale);
      return p;
    }
    std::vector<int64_t> seeds;
    for (auto* x : g.members) {
      seeds.push_back(previous ? x->previous_seed : x->seed);
    }
    ops::philox_normal_batch_(p, seeds, {}, 0, side, scale);
    return p;
  };
  const auto p_new = projections(false);
  const auto p_old = carry_basis ? projections(true) : p_new;
  const auto p_old_t = p_old.transpose(1, 2);

  // down'(u) before u becomes the update.
  const auto down = left ? torch::bmm(p_new, u) : torch::bmm(u, p_new);
  auto momentum = torch::empty(left ? std::vector<int64_t>{count, r, n} : std::vector<int64_t>{count, m, r}, fp32);
  ops::gather_moments_(moments, absmaxes, o.quantization_block_size(), code_map, momentum);
  // update = (1 - b1) u + b1 up(M), in place.
  if (left) {
    u.baddbmm_(p_old_t, momentum, 1.0 - b1, b1);
  } else {
    u.baddbmm_(momentum, p_old_t, 1.0 - b1, b1);
  }
  if (carry_basis) {
    auto carry = left ? torch::bmm(p_new, p_old_t) : torch::bmm(p_old_t, p_new);
    if (g.capturable) {
      ops::keep_unless_resampled_(carry, counters, o.kappa());
    }
    momentum = left ? torch::bmm(carry, momentum) : torch::bmm(momentum, carry);
  }
  momentum.mul_(b1).add_(down, 1.0 - b1);
  ops::scatter_moments_(momentum, moments, absmaxes, o.quantization_block_size(), code_map);
  ops::apply_updates_(params, u, rms, g.sums, steps, counters, lr_tensor, hyper_of(o, true), rounding_keys_of(g));
}

// Capturable steps: each parameter's (step, seed, previous seed) on its
// device, made from the host's counts on the first step (an eager step:
// a host-to-device copy) and advanced on the device from then on. Only a
// compressed parameter's seed ever changes (every kappa-th step), as the
// host's does.
void advance_device_counters(Group& g) {
  for (auto* m : g.members) {
    auto& state = m->target();
    if (!state.counters().defined()) {
      state.counters(torch::tensor({m->step - 1, m->previous_seed, m->previous_seed}, torch::kLong)
                         .to(m->param.device()));
    }
  }
  const int64_t kappa = g.kind == Kind::compressed ? g.options->kappa() : std::numeric_limits<int64_t>::max();
  ops::advance_counters_(counters_of(g), kappa);
}

} // namespace

void fused_step(StateMap& states, std::vector<PendingUpdate>& pending) {
  if (pending.empty()) {
    return;
  }
  std::vector<Member> members(pending.size());
  for (size_t i = 0; i < pending.size(); ++i) {
    auto& p = pending[i];
    auto& m = members[i];
    m.pending = &p;
    const auto& options = *p.options;
    const auto found = states.find(p.param.unsafeGetTensorImpl());
    FloraParamState* existing =
        found == states.end() ? nullptr : static_cast<FloraParamState*>(found->second.get());
    if (existing == nullptr || existing->step() == 0) {
      // A fresh state (or one loaded before its first step): built aside,
      // committed only after the checks.
      m.fresh = std::make_unique<FloraParamState>(
          initial_state(p.grad.sizes(), options, p.param.options()));
      m.fresh->seed(existing != nullptr ? existing->seed() : options.seed() + p.index);
    } else {
      m.state = existing;
    }
    const auto& current = m.target();
    m.step = current.step() + 1;
    m.previous_seed = current.seed();
    m.seed = current.seed();
    const auto layout = ParamLayout::of(p.grad.sizes(), options);
    if (layout.compressed && m.step % options.kappa() == 0) {
      m.resample = true;
      m.seed = next_seed(m.seed, options.projection());
    }
    m.param = p.param.is_contiguous() ? p.param : p.param.contiguous();
    m.grad = p.grad.is_contiguous() ? p.grad : p.grad.contiguous();
  }
  auto groups = group_members(members);

  gradient_sums_and_check(groups); // throws with nothing changed

  // Commit the host-side counters and the new states.
  for (auto& m : members) {
    if (m.fresh) {
      auto& slot = states[m.pending->param.unsafeGetTensorImpl()];
      slot = std::move(m.fresh);
      m.state = static_cast<FloraParamState*>(slot.get());
    }
    m.state->step(m.step);
    m.state->seed(m.seed);
  }
  for (auto& g : groups) {
    if (g.capturable) {
      advance_device_counters(g);
    }
  }
  for (auto& g : groups) {
    switch (g.kind) {
      case Kind::full:
        run_full(g);
        break;
      case Kind::factored:
        run_factored(g);
        break;
      case Kind::compressed:
        run_compressed(g);
        break;
    }
  }
  for (auto& m : members) {
    if (!m.param.is_same(m.pending->param)) {
      m.pending->param.copy_(m.param); // the parameter was not contiguous
    }
  }
}

} // namespace flora::detail
