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
// The variants of MomentumProjection (options.h) change two things: the
// projections are orthonormalised (a batched QR, signs fixed by R's
// diagonal) and, with momentum_rescale, up(M) is scaled by ||M|| / ||up(M)||
// (from the r x r Gram matrix of P); both are computed, with M gathered,
// before the commit (the QR and the reductions allocate), in buffers of
// their own. `subspace` mixes as
//   update = u + b1 Q^T (M - Q u)
// (Q u through the old basis when resampling), M' as above.
//
// Nothing changes until every gradient's sums are in: a non-finite
// gradient (for a parameter whose options ask for the check) is reported
// with one host read of the flags per device, before any state is touched.

#include "fused_ops.h"
#include "param_state.h"
#include "step.h"
#include "kernels/fused_checks.h"
#include "kernels/step_math.h"
#include "kernels/stochastic_rounding.h"
#include "kernels/sums_layout.h"

#include <flora/layout.h>
#include <flora/projection.h>
#include <flora/quantization.h>

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <tuple>

namespace flora::detail {
namespace {

// The update buffers of one batched launch are kept under a budget (or one
// parameter's, when that is larger): a shape group larger than it goes in
// several chunks, each run through all of its passes before the next.
//
// On a GPU a chunk is a set of launches, so chunks are large: 128 MiB.
//
// On a CPU a chunk is passes over memory: the gradient is normalised into
// u, u is read by the down product, read and written by the up product,
// summed and applied. A chunk that stays in the last-level cache makes
// those passes cache hits instead of DRAM traffic, and a step buffer under
// glibc's mmap threshold (at most 32 MiB) is reused from the heap from one
// step to the next instead of being mapped afresh, with every 4 KiB page
// faulting on first touch (some 50,000 faults a step on GPT-2 small with
// 128 MiB). GPT-2 small, rank 256, on the 2-core development machine,
// interleaved runs: 16 MiB chunks took the step from a median of 535-715
// ms to 463-568 ms and the step's peak memory down by about 100 MB. It costs
// calls: more chunks, each a dozen dispatcher calls of a few microseconds.
constexpr int64_t kGpuStepBufferBytes = int64_t{128} << 20;
constexpr int64_t kCpuStepBufferBytes = int64_t{16} << 20;

int64_t step_buffer_budget(const torch::Device& device) {
  return device.is_cpu() ? kCpuStepBufferBytes : kGpuStepBufferBytes;
}

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
  torch::Tensor counters; // capturable steps: (step, seed, previous seed) on the device

  FloraParamState& target() {
    return state != nullptr ? *state : *fresh;
  }
};

struct Group {
  Kind kind;
  const FloraOptions* options;
  bool quantized = false; // 8-bit moments (ParamLayout::quantized)
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
  using Key = std::tuple<const FloraOptions*, std::string, int, int, bool, std::vector<int64_t>, bool>;
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
        layout.quantized,
        kind == Kind::compressed ? m.param.sizes().vec() : std::vector<int64_t>{},
        kind == Kind::compressed && m.resample && !options.capturable()};
    auto [it, inserted] = index.emplace(key, groups.size());
    if (inserted) {
      groups.push_back(Group{kind, &options, layout.quantized, options.capturable(), {}, {}, 0, {}});
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
    const int64_t budget = step_buffer_budget(g.members.front()->param.device());
    const auto per_chunk = static_cast<size_t>(std::max<int64_t>(1, budget / std::max<int64_t>(bytes, 1)));
    for (size_t i = 0; i < g.members.size(); i += per_chunk) {
      Group chunk{g.kind, g.options, g.quantized, g.capturable, {}, {}, 0, {}};
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
  if (!g.quantized) {
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

// Everything a group's operators get in phase 2, gathered, checked and
// given its buffers before anything is changed: a failed allocation or a
// rejected argument throws while the step can still be abandoned.
struct Invocation {
  Group* group = nullptr;
  std::vector<torch::Tensor> params, grads, rows, cols, second, second_absmax, momentum, momentum_absmax, rms, counters;
  std::vector<int64_t> steps, rounding_keys;
  std::optional<torch::Tensor> lr_tensor, code_map;
  StepHyper hyper;
  std::vector<double> hyper_values;
  // Compressed groups: the shapes and the batched products' buffers.
  int64_t m = 0, n = 0, r = 0;
  bool left = true, carry_basis = false;
  std::vector<int64_t> seeds, previous_seeds;
  torch::Tensor u, p_new, p_old, down, gathered, carried, carry;
  // Variants (prepare_variant): projections, M and the rescaled M made
  // before the commit; down_old = Q_old u for `subspace` when resampling.
  MomentumProjection projection = MomentumProjection::gaussian;
  bool rescale = false;
  bool prepared = false;
  torch::Tensor scaled, down_old;
  // Recorded statistics: views of the sums, made before the commit.
  std::vector<ParameterStatistics> statistics;
};

// The compressed groups' buffers: one allocation per device for the whole
// step, each buffer as large as the largest chunk needs; chunks run one
// after another and take views of them.
struct StepBuffers {
  int64_t u = 0, projection = 0, compressed = 0, carry = 0;
  torch::Tensor storage; // the one allocation the buffers below are slices of
  torch::Tensor u_buf, p_new_buf, p_old_buf, down_buf, gathered_buf, carried_buf, carry_buf;
};

// A tensor of `shape` over memory of StepBuffers::storage, which outlives
// every chunk, made without the dispatcher (a narrow and a view are five
// calls, each a host-side cost paid per chunk). The device is given, so
// that CUDA is not asked where the pointer lives.
torch::Tensor borrow(void* data, c10::IntArrayRef shape, const torch::TensorOptions& options) {
  return at::for_blob(data, shape).options(options).target_device(options.device()).make_tensor();
}

// The first elements of a step buffer as a tensor of `shape`.
torch::Tensor view_of(const torch::Tensor& buffer, std::vector<int64_t> shape) {
  TORCH_INTERNAL_ASSERT(c10::multiply_integers(shape) <= buffer.numel(), "a step buffer sized too small");
  return borrow(buffer.data_ptr(), shape, buffer.options());
}

Invocation prepare(Group& g, std::vector<Member>& all) {
  Invocation v;
  v.group = &g;
  const auto& o = *g.options;
  const auto& first = *g.members.front();
  const auto layout = ParamLayout::of(first.param.sizes(), o);
  v.params = collect(g, [](Member& m) -> const torch::Tensor& { return m.param; });
  v.grads = collect(g, [](Member& m) -> const torch::Tensor& { return m.grad; });
  v.rms = collect(g, [](Member& m) -> const torch::Tensor& { return m.target().rms(); });
  if (layout.momentum) {
    v.momentum = collect(g, [](Member& m) -> const torch::Tensor& { return m.target().exp_avg(); });
    v.momentum_absmax = collect(g, [](Member& m) -> const torch::Tensor& { return m.target().exp_avg_absmax(); });
  }
  if (g.kind == Kind::full) {
    v.second = collect(g, [](Member& m) -> const torch::Tensor& { return m.target().exp_avg_sq(); });
    v.second_absmax = collect(g, [](Member& m) -> const torch::Tensor& { return m.target().exp_avg_sq_absmax(); });
  } else {
    v.rows = collect(g, [](Member& m) -> const torch::Tensor& { return m.target().exp_avg_sq_row(); });
    v.cols = collect(g, [](Member& m) -> const torch::Tensor& { return m.target().exp_avg_sq_col(); });
  }
  v.steps = steps_of(g);
  if (g.capturable) {
    v.counters = collect(g, [](Member& m) -> const torch::Tensor& { return m.counters; });
  }
  v.rounding_keys = rounding_keys_of(g);
  v.lr_tensor = lr_tensor_of(g);
  v.code_map = code_map_for(g);
  v.hyper = hyper_of(o, layout.momentum);
  v.hyper_values = ops::hyper_list(v.hyper);
  const int64_t block = o.quantization_block_size();

  if (g.kind == Kind::full) {
    check_full_step_args(
        v.params, v.grads, v.second, v.second_absmax, v.momentum, v.momentum_absmax, v.rms, g.sums, v.steps,
        v.counters, v.lr_tensor, v.hyper_values, block, v.code_map, v.rounding_keys);
  } else if (g.kind == Kind::factored) {
    check_factored_step_args(
        v.params, v.grads, v.rows, v.cols, v.momentum, v.momentum_absmax, v.rms, g.sums, v.steps, v.counters,
        v.lr_tensor, v.hyper_values, block, v.code_map, v.rounding_keys);
  } else {
    v.m = first.param.size(0);
    v.n = first.param.size(1);
    v.r = *o.rank();
    v.left = projects_from_left(v.m, v.n);
    // Eager: whether this step resamples is known (the same for the whole
    // group); capturable: always take the basis change, kept only when due.
    v.carry_basis = g.capturable || first.resample;
    v.projection = o.momentum_projection();
    v.rescale = o.momentum_rescale();
    for (auto* x : g.members) {
      v.seeds.push_back(x->seed);
      v.previous_seeds.push_back(x->previous_seed);
    }
    // What factored_normalize_, apply_updates_ and gather/scatter_moments_
    // check, but the buffers, which are made to measure below.
    constexpr const char* op = "flora compressed step";
    check_params_and_grads(op, v.params, v.grads, true, true);
    check_state_list(op, "exp_avg_sq_rows", v.rows, v.params, at::kFloat, [&](size_t) { return v.m; });
    check_state_list(op, "exp_avg_sq_cols", v.cols, v.params, at::kFloat, [&](size_t) { return v.n; });
    check_state_list(op, "rms", v.rms, v.params, at::kFloat, [](size_t) { return int64_t{1}; });
    check_counters(op, v.counters, v.params);
    check_steps(op, v.steps, v.counters, v.params.size());
    check_sums(op, g.sums, SumsLayout::of(v.params, true), "params[0]", v.params.front());
    check_lr_tensor(op, v.lr_tensor, v.params.front());
    check_rounding_keys(op, v.rounding_keys, v.params);
    check_moments(
        op, "exp_avgs", "exp_avg_absmaxs", v.momentum, v.momentum_absmax, v.params, block, v.code_map,
        [&](size_t) { return v.r * std::max(v.m, v.n); });
  }
  (void)all;
  return v;
}

void size_buffers(const Invocation& v, StepBuffers& b) {
  const int64_t count = static_cast<int64_t>(v.params.size());
  b.u = std::max(b.u, count * v.m * v.n);
  b.projection = std::max(b.projection, count * v.r * std::min(v.m, v.n));
  b.compressed = std::max(b.compressed, count * v.r * std::max(v.m, v.n));
  b.carry = std::max(b.carry, v.carry_basis ? count * v.r * v.r : 0);
}

void allocate(StepBuffers& b, const torch::TensorOptions& fp32, bool carry) {
  // One allocation, cut in slices that start on 64 bytes (as each of their
  // own allocations would).
  auto rounded = [](int64_t n) { return (n + 15) / 16 * 16; };
  const int64_t sizes[] = {
      b.u, b.projection, carry ? b.projection : 0, b.compressed, b.compressed, carry ? b.compressed : 0,
      carry ? b.carry : 0};
  int64_t total = 0;
  for (const int64_t n : sizes) {
    total += rounded(n);
  }
  b.storage = torch::empty({total}, fp32);
  float* base = b.storage.data_ptr<float>();
  int64_t offset = 0;
  torch::Tensor* slots[] = {&b.u_buf, &b.p_new_buf, &b.p_old_buf, &b.down_buf, &b.gathered_buf, &b.carried_buf, &b.carry_buf};
  for (size_t i = 0; i < std::size(sizes); ++i) {
    *slots[i] = borrow(base + offset, {sizes[i]}, fp32);
    offset += rounded(sizes[i]);
  }
  if (!carry) {
    b.p_old_buf = b.carried_buf = b.carry_buf = torch::Tensor();
  }
}

bool is_variant(const Invocation& v) {
  return v.projection != MomentumProjection::gaussian || v.rescale;
}

void attach(Invocation& v, const StepBuffers& b) {
  const int64_t count = static_cast<int64_t>(v.params.size());
  const auto projection = v.left ? std::vector<int64_t>{count, v.r, v.m} : std::vector<int64_t>{count, v.n, v.r};
  const auto compressed = v.left ? std::vector<int64_t>{count, v.r, v.n} : std::vector<int64_t>{count, v.m, v.r};
  v.u = view_of(b.u_buf, {count, v.m, v.n});
  v.down = view_of(b.down_buf, compressed);
  // A variant fills its projections and M before the commit, while earlier
  // chunks, which share the step's buffers, have not run yet: it gets
  // buffers of its own for them.
  const bool own = is_variant(v);
  v.p_new = own ? torch::empty(projection, b.u_buf.options()) : view_of(b.p_new_buf, projection);
  v.gathered = own ? torch::empty(compressed, b.u_buf.options()) : view_of(b.gathered_buf, compressed);
  if (v.carry_basis) {
    v.p_old = own ? torch::empty(projection, b.u_buf.options()) : view_of(b.p_old_buf, projection);
    v.carried = view_of(b.carried_buf, compressed);
    v.carry = view_of(b.carry_buf, {count, v.r, v.r});
  }
}

// `p` ((G, r, d) rows or (G, d, r) columns, `left` saying which) made
// orthonormal along d, times `scale`: Q of the QR decomposition of each
// (d, r) matrix, its columns multiplied by the signs of R's diagonal, so
// that the subspace is Haar-distributed (Mezzadri's correction) and the
// result a function of the seed alone.
void orthonormalize(torch::Tensor& p, bool left, double scale) {
  const auto a = left ? p.transpose(1, 2) : p;
  auto [q, r] = at::linalg_qr(a, "reduced");
  auto signs = r.diagonal(0, -2, -1).sign();
  signs = at::where(signs == 0, at::ones_like(signs), signs);
  a.copy_(q * (signs.unsqueeze(1) * scale));
}

// Before the commit, for a variant: this step's projections (orthonormal
// for `orthonormal` and `subspace`), M gathered and, with momentum_rescale,
// M scaled by ||M|| / ||up(M)||. Everything here allocates or may throw;
// nothing here writes a parameter or a state.
void prepare_variant(Invocation& v) {
  if (!is_variant(v)) {
    return;
  }
  const auto& o = *v.group->options;
  const auto side = v.left ? ops::SeedSide::left : ops::SeedSide::right;
  const double gaussian_scale = 1.0 / std::sqrt(static_cast<double>(v.r));
  ops::philox_normal_batch_(v.p_new, v.seeds, {}, 0, side, gaussian_scale);
  if (v.carry_basis) {
    ops::philox_normal_batch_(v.p_old, v.previous_seeds, {}, 0, side, gaussian_scale);
  }
  if (v.projection != MomentumProjection::gaussian) {
    // E[P^T P] = I needs sqrt(d / r) on orthonormal rows; `subspace` keeps them orthonormal.
    const double d = static_cast<double>(v.left ? v.m : v.n);
    const double scale = v.projection == MomentumProjection::orthonormal ? std::sqrt(d / static_cast<double>(v.r)) : 1.0;
    orthonormalize(v.p_new, v.left, scale);
    if (v.carry_basis) {
      orthonormalize(v.p_old, v.left, scale);
    }
  }
  ops::gather_moments_(v.momentum, v.momentum_absmax, o.quantization_block_size(), v.code_map, v.gathered);
  if (v.rescale) {
    // ||up(M)||^2 = tr(M^T (P P^T) M) (left) or tr(M (P^T P) M^T) (right):
    // r x r Gram matrices, nothing of the parameter's size.
    const auto& p_old = v.carry_basis ? v.p_old : v.p_new;
    const auto& m = v.gathered;
    const auto gram = v.left ? at::bmm(p_old, p_old.transpose(1, 2)) : at::bmm(p_old.transpose(1, 2), p_old);
    const auto through = v.left ? at::bmm(gram, m) : at::bmm(m, gram);
    const auto up_sq = (through * m).sum({1, 2});
    const auto m_sq = (m * m).sum({1, 2});
    // A zero momentum (the first step) has nothing to scale.
    const auto factor = at::where(up_sq > 0, (m_sq / up_sq).sqrt(), at::ones_like(up_sq));
    v.scaled = m * factor.view({-1, 1, 1});
  }
  if (v.projection == MomentumProjection::subspace && v.carry_basis) {
    v.down_old = torch::empty_like(v.down);
  }
  v.prepared = true;
}

// TF32 for the CUDA matmuls of one product, the caller's setting back after
// (torch's flag is process-wide; the step holds it only for its own calls).
class Tf32Products {
 public:
  explicit Tf32Products(bool on) : on_(on) {
    if (on_) {
      previous_ = at::globalContext().float32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL);
      at::globalContext().setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL, at::Float32Precision::TF32);
    }
  }
  ~Tf32Products() {
    if (on_) {
      at::globalContext().setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL, previous_);
    }
  }
  Tf32Products(const Tf32Products&) = delete;
  Tf32Products& operator=(const Tf32Products&) = delete;

 private:
  bool on_;
  at::Float32Precision previous_ = at::Float32Precision::NONE;
};

// out = beta out + alpha (a @ b), batched, in the projection precision:
// float32 in place; tf32 the same under TF32 on CUDA (float32 on a CPU);
// bfloat16 with a and b rounded to bfloat16 and the product (accumulated in
// float32 by the GEMM) rounded to bfloat16, then added in float32. beta 0:
// out's old values are not read.
void projection_product(
    torch::Tensor& out, const torch::Tensor& a, const torch::Tensor& b, double beta, double alpha,
    ProjectionPrecision precision) {
  if (precision == ProjectionPrecision::bfloat16) {
    const auto product = at::bmm(a.to(at::kBFloat16), b.to(at::kBFloat16));
    if (beta == 0.0) {
      out.copy_(product);
      if (alpha != 1.0) {
        out.mul_(alpha);
      }
    } else {
      if (beta != 1.0) {
        out.mul_(beta);
      }
      out.add_(product, alpha);
    }
    return;
  }
  const Tf32Products tf32(precision == ProjectionPrecision::tf32 && out.is_cuda());
  if (beta == 0.0 && alpha == 1.0) {
    at::bmm_out(out, a, b);
  } else {
    out.baddbmm_(a, b, beta, alpha);
  }
}

void run_full(Invocation& v) {
  const auto& o = *v.group->options;
  ops::full_step_(
      v.params, v.grads, v.second, v.second_absmax, v.momentum, v.momentum_absmax, v.rms, v.group->sums, v.steps,
      v.counters, v.lr_tensor, v.hyper, o.quantization_block_size(), v.code_map, v.rounding_keys);
}

void run_factored(Invocation& v) {
  const auto& o = *v.group->options;
  ops::factored_step_(
      v.params, v.grads, v.rows, v.cols, v.momentum, v.momentum_absmax, v.rms, v.group->sums, v.steps, v.counters,
      v.lr_tensor, v.hyper, o.quantization_block_size(), v.code_map, v.rounding_keys);
}

void run_compressed(Invocation& v) {
  auto& g = *v.group;
  const auto& o = *g.options;
  const double b1 = *o.beta1();
  const int64_t block = o.quantization_block_size();

  ops::factored_normalize_(
      v.grads, v.rows, v.cols, g.sums, v.steps, v.counters, std::get<0>(o.eps()), o.decay_rate(), v.u);
  // The projections: P' (this step's basis) and, when the basis may change, P.
  const auto side = v.left ? ops::SeedSide::left : ops::SeedSide::right;
  const double scale = 1.0 / std::sqrt(static_cast<double>(v.r));
  auto draw = [&](torch::Tensor& out, bool previous) {
    if (g.capturable) {
      ops::philox_normal_batch_(out, {}, v.counters, previous ? 2 : 1, side, scale);
    } else {
      ops::philox_normal_batch_(out, previous ? v.previous_seeds : v.seeds, {}, 0, side, scale);
    }
  };
  if (!v.prepared) { // a variant drew (and orthonormalised) them before the commit
    draw(v.p_new, false);
    if (v.carry_basis) {
      draw(v.p_old, true);
    }
  }
  const auto& p_old = v.carry_basis ? v.p_old : v.p_new;
  const auto p_old_t = p_old.transpose(1, 2);

  const auto precision = o.projection_precision();
  // down'(u) before u becomes the update.
  if (v.left) {
    projection_product(v.down, v.p_new, v.u, 0.0, 1.0, precision);
  } else {
    projection_product(v.down, v.u, v.p_new, 0.0, 1.0, precision);
  }
  if (!v.prepared) {
    ops::gather_moments_(v.momentum, v.momentum_absmax, block, v.code_map, v.gathered);
  }
  if (v.projection == MomentumProjection::subspace) {
    // update = u + b1 Q^T (M - Q u), with Q the basis M is in (the old one
    // when resampling), in place: down_old = Q u first.
    const auto& down_old = v.carry_basis ? v.down_old : v.down;
    if (v.carry_basis) {
      if (v.left) {
        projection_product(v.down_old, p_old, v.u, 0.0, 1.0, precision);
      } else {
        projection_product(v.down_old, v.u, p_old, 0.0, 1.0, precision);
      }
    }
    if (v.left) {
      projection_product(v.u, p_old_t, v.gathered, 1.0, b1, precision);
      projection_product(v.u, p_old_t, down_old, 1.0, -b1, precision);
    } else {
      projection_product(v.u, v.gathered, p_old_t, 1.0, b1, precision);
      projection_product(v.u, down_old, p_old_t, 1.0, -b1, precision);
    }
  } else {
    // update = (1 - b1) u + b1 up(M) (M rescaled with momentum_rescale), in place.
    const auto& mixed = v.rescale ? v.scaled : v.gathered;
    if (v.left) {
      projection_product(v.u, p_old_t, mixed, 1.0 - b1, b1, precision);
    } else {
      projection_product(v.u, mixed, p_old_t, 1.0 - b1, b1, precision);
    }
  }
  torch::Tensor momentum = v.gathered;
  if (v.carry_basis) {
    if (v.left) {
      at::bmm_out(v.carry, v.p_new, p_old_t);
    } else {
      at::bmm_out(v.carry, p_old_t, v.p_new);
    }
    if (g.capturable) {
      ops::keep_unless_resampled_(v.carry, v.counters, o.kappa());
    }
    if (v.left) {
      at::bmm_out(v.carried, v.carry, v.gathered);
    } else {
      at::bmm_out(v.carried, v.gathered, v.carry);
    }
    momentum = v.carried;
  }
  // M' = b1 T(M) + (1 - b1) down'(u), mixed as it is stored.
  ops::scatter_moments_(momentum, v.momentum, v.momentum_absmax, block, v.code_map, v.down, b1);
  ops::apply_updates_(v.params, v.u, v.rms, g.sums, v.steps, v.counters, v.lr_tensor, v.hyper, v.rounding_keys);
}

} // namespace

void fused_step(
    StateMap& states,
    std::vector<PendingUpdate>& pending,
    std::map<int64_t, ParameterStatistics>* statistics) {
  if (pending.empty()) {
    return;
  }
  // 1. Each parameter's state (fresh ones built aside) and this step's counts.
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
      // A fresh state (or one loaded before its first step): committed only
      // after the checks.
      m.fresh = std::make_unique<FloraParamState>(initial_state(p.grad.sizes(), options, p.param.options()));
      m.fresh->seed(existing != nullptr ? existing->seed() : detail::parameter_seed(options.seed(), p.index));
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
    if (options.capturable()) {
      // Capturable steps keep (step, seed, previous seed) on the device: made
      // from the host's counts on the first step (an eager step: a copy to the
      // device), advanced there from then on.
      m.counters = current.counters().defined()
          ? current.counters()
          : torch::tensor({m.step - 1, m.previous_seed, m.previous_seed}, torch::kLong).to(p.param.device());
    }
    m.param = p.param.is_contiguous() ? p.param : p.param.contiguous();
    m.grad = p.grad.is_contiguous() ? p.grad : p.grad.contiguous();
  }
  auto groups = group_members(members);

  // 2. Phase 1 and the finite check.
  gradient_sums_and_check(groups);

  // 3. Every operator's arguments, checked, and every buffer, allocated.
  std::vector<Invocation> invocations;
  invocations.reserve(groups.size());
  std::map<std::string, StepBuffers> buffers;
  std::map<std::string, std::pair<torch::TensorOptions, bool>> buffer_kind;
  for (auto& g : groups) {
    invocations.push_back(prepare(g, members));
    if (g.kind == Kind::compressed) {
      const auto device = g.members.front()->param.device();
      size_buffers(invocations.back(), buffers[device.str()]);
      auto& kind = buffer_kind[device.str()];
      kind.first = torch::TensorOptions().device(device).dtype(torch::kFloat);
      kind.second = kind.second || invocations.back().carry_basis;
    }
  }
  for (auto& [device, b] : buffers) {
    allocate(b, buffer_kind[device].first, buffer_kind[device].second);
  }
  for (auto& v : invocations) {
    if (v.group->kind == Kind::compressed) {
      attach(v, buffers[v.params.front().device().str()]);
      prepare_variant(v);
    }
  }
  if (statistics != nullptr) {
    // Views of each group's sums (slot i: sum p^2, slot count + i: sum
    // u^2), and the map's entries, made now so that recording after the
    // step allocates nothing.
    for (auto& v : invocations) {
      const int64_t count = static_cast<int64_t>(v.group->members.size());
      const auto both = v.group->sums.narrow(0, 0, 2 * count).view({2, count});
      for (int64_t i = 0; i < count; ++i) {
        const auto& m = *v.group->members[i];
        ParameterStatistics s;
        s.index = m.pending->index;
        s.step = m.step;
        s.numel = m.param.numel();
        s.clip_threshold = v.group->options->clip_threshold();
        s.sums = both.select(1, i);
        v.statistics.push_back(std::move(s));
        statistics->try_emplace(m.pending->index);
      }
    }
  }

  // 4. Commit: from here on nothing is checked or allocated that could throw
  //    but a device failure.
  for (auto& m : members) {
    if (m.fresh) {
      auto& slot = states[m.pending->param.unsafeGetTensorImpl()];
      slot = std::move(m.fresh);
      m.state = static_cast<FloraParamState*>(slot.get());
    }
    m.state->step(m.step);
    m.state->seed(m.seed);
    if (m.counters.defined()) {
      m.state->counters(m.counters);
    }
  }
  for (auto& v : invocations) {
    if (v.group->capturable) {
      // Only a compressed parameter's seed ever changes, as on the host.
      const auto kind = v.group->kind;
      ops::advance_counters_(
          v.counters, kind == Kind::compressed ? v.group->options->kappa() : std::numeric_limits<int64_t>::max());
    }
  }
  for (auto& v : invocations) {
    switch (v.group->kind) {
      case Kind::full:
        run_full(v);
        break;
      case Kind::factored:
        run_factored(v);
        break;
      case Kind::compressed:
        run_compressed(v);
        break;
    }
  }
  for (auto& m : members) {
    if (!m.param.is_same(m.pending->param)) {
      m.pending->param.copy_(m.param); // the parameter was not contiguous
    }
  }
  if (statistics != nullptr) {
    for (auto& v : invocations) {
      for (auto& s : v.statistics) {
        (*statistics)[s.index] = std::move(s); // the entry exists: no allocation
      }
    }
  }
}

} // namespace flora::detail
