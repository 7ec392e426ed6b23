// Fuzz target: Flora::load (torch::load(optimizer, ...)) on edited real
// checkpoints. Each input picks one of the checkpoint fixtures (every format,
// fp32 and 8-bit, philox and reference, relative step, capturable, saved
// before the first step) and edits its archive (archive_tree.h); the edited
// archive is written by torch's writer and loaded into an optimizer over the
// fixture's parameters that has taken a step of its own. Properties:
//   - the load succeeds or throws c10::Error;
//   - a load that throws leaves the optimizer exactly as it was (parameters,
//     every state tensor bit for bit, step counts, seeds, options);
//   - after a load that succeeds, a step succeeds or throws c10::Error, and a
//     step that throws changes nothing;
//   - what was loaded saves and loads back to the same state.

#include "archive_tree.h"
#include "fixture_runs.h"
#include "fuzz_target.h"

#include <flora/flora.h>

#include <torch/serialize.h>

#include <optional>
#include <sstream>

namespace {

using flora::Flora;
using flora::FloraOptions;
using flora::FloraParamState;
using flora::fuzz::ArchiveNode;
using flora::fuzz::same_tensor;

using Fixture = flora::fuzz::CheckpointFixture;

struct Model {
  std::vector<torch::Tensor> params;
  std::unique_ptr<Flora> opt;
};

Model make_model(const Fixture& f);

const std::vector<Fixture>& fixtures() {
  static const std::vector<Fixture> all = flora::fuzz::checkpoint_fixtures("optimizer", [](const Fixture& f) {
    Model m = make_model(f);
    std::istringstream stream(flora::fuzz::archive_bytes(f.tree));
    torch::load(*m.opt, stream);
  });
  return all;
}

// The fixture's parameters in its groups, under options of our own (a
// load replaces them), after one step: the optimizer has state to lose.
Model make_model(const Fixture& f) {
  Model m;
  for (const auto& p : f.run.params) {
    m.params.push_back(p.detach().clone().requires_grad_(p.requires_grad()));
  }
  std::vector<torch::optim::OptimizerParamGroup> groups;
  for (const auto& members : f.run.groups) {
    std::vector<torch::Tensor> ps;
    for (const auto i : members) {
      ps.push_back(m.params[static_cast<size_t>(i)]);
    }
    groups.emplace_back(std::move(ps));
  }
  m.opt = std::make_unique<Flora>(groups, FloraOptions(1e-2).beta1(0.5).rank(2).kappa(2).quantization(true).quantization_min_size(0));
  return m;
}

void set_grads(Model& m, const Fixture& f, size_t step) {
  const auto& grads = f.run.grads[step % f.run.grads.size()];
  for (size_t i = 0; i < m.params.size(); ++i) {
    m.params[i].mutable_grad() = grads[i].defined() ? grads[i].clone() : torch::Tensor();
  }
}

struct Snapshot {
  std::vector<torch::Tensor> params;
  std::vector<std::optional<FloraParamState>> states;
  std::vector<FloraOptions> options;
};

std::optional<FloraParamState> copy_state(const Flora& opt, const torch::Tensor& p) {
  const auto it = opt.state().find(p.unsafeGetTensorImpl());
  if (it == opt.state().end()) {
    return std::nullopt;
  }
  FloraParamState s = static_cast<const FloraParamState&>(*it->second);
  for (auto* t : {&s.rms(), &s.exp_avg(), &s.exp_avg_sq_row(), &s.exp_avg_sq_col(), &s.exp_avg_sq(),
                  &s.exp_avg_absmax(), &s.exp_avg_sq_absmax(), &s.counters()}) {
    if (t->defined()) {
      *t = t->clone();
    }
  }
  return s;
}

Snapshot snapshot(const Model& m) {
  Snapshot s;
  for (const auto& p : m.params) {
    s.params.push_back(p.detach().clone());
    s.states.push_back(copy_state(*m.opt, p));
  }
  for (const auto& g : m.opt->param_groups()) {
    s.options.push_back(static_cast<const FloraOptions&>(g.options()));
  }
  return s;
}

bool same_state(const std::optional<FloraParamState>& a, const std::optional<FloraParamState>& b) {
  if (a.has_value() != b.has_value()) {
    return false;
  }
  if (!a) {
    return true;
  }
  return a->step() == b->step() && a->seed() == b->seed() && same_tensor(a->rms(), b->rms()) &&
      same_tensor(a->exp_avg(), b->exp_avg()) && same_tensor(a->exp_avg_sq_row(), b->exp_avg_sq_row()) &&
      same_tensor(a->exp_avg_sq_col(), b->exp_avg_sq_col()) && same_tensor(a->exp_avg_sq(), b->exp_avg_sq()) &&
      same_tensor(a->exp_avg_absmax(), b->exp_avg_absmax()) &&
      same_tensor(a->exp_avg_sq_absmax(), b->exp_avg_sq_absmax()) && same_tensor(a->counters(), b->counters());
}

bool same(const Snapshot& a, const Snapshot& b) {
  if (a.params.size() != b.params.size() || a.options.size() != b.options.size()) {
    return false;
  }
  for (size_t i = 0; i < a.params.size(); ++i) {
    if (!same_tensor(a.params[i], b.params[i]) || !same_state(a.states[i], b.states[i])) {
      return false;
    }
  }
  for (size_t g = 0; g < a.options.size(); ++g) {
    if (!(a.options[g] == b.options[g])) {
      return false;
    }
  }
  return true;
}

// A capturable state keeps its step and seed in device counters, which a
// checkpoint writes as step and seed: compare what a checkpoint holds.
Snapshot as_checkpointed(Snapshot s) {
  for (auto& state : s.states) {
    if (state && state->counters().defined()) {
      const auto host = state->counters().cpu();
      state->step(host.data_ptr<int64_t>()[0]);
      state->seed(host.data_ptr<int64_t>()[1]);
      state->counters(torch::Tensor());
    }
  }
  return s;
}

std::string save_bytes(const Flora& opt) {
  std::ostringstream out;
  torch::save(opt, out);
  return out.str();
}

} // namespace

FLORA_FUZZ_TARGET(optimizer_checkpoint) {
  const auto& all = fixtures();
  flora::fuzz::ByteReader in(data, size);
  const Fixture& f = all[in.below(all.size())];
  ArchiveNode tree = f.tree;
  flora::fuzz::mutate_archive(tree, in, 8);
  std::string bytes;
  try {
    bytes = flora::fuzz::archive_bytes(tree);
  } catch (const c10::Error&) {
    return 0; // torch's writer refuses this archive: no user can write it
  }

  Model m = make_model(f);
  set_grads(m, f, 0);
  m.opt->step();
  const Snapshot before = snapshot(m);
  try {
    std::istringstream stream(bytes);
    torch::load(*m.opt, stream);
  } catch (const c10::Error&) {
    FLORA_FUZZ_CHECK(same(snapshot(m), before), "a failed Flora::load changed the optimizer");
    return 0;
  }

  // Loaded: a step works or fails cleanly.
  set_grads(m, f, 1);
  const Snapshot loaded = snapshot(m);
  try {
    m.opt->step();
  } catch (const c10::Error&) {
    FLORA_FUZZ_CHECK(same(snapshot(m), loaded), "a step that failed after a load changed the optimizer");
  }

  // What the optimizer holds now saves and loads back as it is.
  const Snapshot now = snapshot(m);
  const std::string saved = save_bytes(*m.opt);
  Model again = make_model(f);
  std::istringstream stream(saved);
  torch::load(*again.opt, stream); // must not throw: it is our own checkpoint of a valid optimizer
  Snapshot reloaded = snapshot(again);
  reloaded.params = now.params; // (parameters are not part of a checkpoint)
  FLORA_FUZZ_CHECK(same(as_checkpointed(reloaded), as_checkpointed(now)), "a saved optimizer loads back different");
  return 0;
}
