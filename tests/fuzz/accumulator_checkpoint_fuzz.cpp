// Fuzz target: CompressedAccumulator::load on edited real checkpoints (the
// accumulator fixtures, philox and reference projections, saved in the
// middle of an accumulation; edits as in archive_tree.h). The accumulator
// loading it has accumulated micro-batches of its own. Properties:
//   - the load succeeds or throws c10::Error, and a load that throws leaves
//     every seed and buffer as it was;
//   - after a load that succeeds, accumulating and restoring works or throws
//     c10::Error, and restored gradients have their parameters' shapes;
//   - what was loaded saves and loads back the same.

#include "archive_tree.h"
#include "fixture_runs.h"
#include "fuzz_target.h"

#include <flora/flora.h>

#include <sstream>

namespace {

using flora::CompressedAccumulator;
using flora::fuzz::ArchiveNode;
using flora::fuzz::same_tensor;

using Fixture = flora::fuzz::CheckpointFixture;

struct Model {
  std::vector<torch::Tensor> params;
  std::unique_ptr<CompressedAccumulator> acc;
};

Model make_model(const Fixture& f);
void load_bytes(CompressedAccumulator& acc, const std::string& bytes);

const std::vector<Fixture>& fixtures() {
  static const std::vector<Fixture> all = flora::fuzz::checkpoint_fixtures("accumulator", [](const Fixture& f) {
    Model m = make_model(f);
    load_bytes(*m.acc, flora::fuzz::archive_bytes(f.tree));
  });
  return all;
}

Model make_model(const Fixture& f) {
  Model m;
  for (const auto& p : f.run.params) {
    m.params.push_back(p.detach().clone().requires_grad_(true));
  }
  m.acc = std::make_unique<CompressedAccumulator>(
      m.params, flora::AccumulationOptions(f.run.rank)
                    .seed(f.run.seed)
                    .projection(static_cast<flora::ProjectionMode>(f.run.projection)));
  return m;
}

void accumulate(Model& m, const Fixture& f, size_t micro) {
  const auto& grads = f.run.grads[micro % f.run.grads.size()];
  for (size_t i = 0; i < m.params.size(); ++i) {
    m.params[i].mutable_grad() = grads[i].defined() ? grads[i].clone() : torch::Tensor();
  }
  m.acc->accumulate();
}

struct Snapshot {
  std::vector<int64_t> seeds;
  std::vector<torch::Tensor> buffers;
};

Snapshot snapshot(const Model& m) {
  Snapshot s;
  for (const auto& p : m.params) {
    s.seeds.push_back(m.acc->seed(p));
    const auto b = m.acc->buffer(p);
    s.buffers.push_back(b.defined() ? b.clone() : b);
  }
  return s;
}

bool same(const Snapshot& a, const Snapshot& b) {
  if (a.seeds != b.seeds) {
    return false;
  }
  for (size_t i = 0; i < a.buffers.size(); ++i) {
    if (!same_tensor(a.buffers[i], b.buffers[i])) {
      return false;
    }
  }
  return true;
}

std::string save_bytes(const CompressedAccumulator& acc) {
  torch::serialize::OutputArchive archive;
  acc.save(archive);
  std::ostringstream out;
  archive.save_to(out);
  return out.str();
}

void load_bytes(CompressedAccumulator& acc, const std::string& bytes) {
  torch::serialize::InputArchive archive;
  std::istringstream stream(bytes);
  archive.load_from(stream);
  acc.load(archive);
}

} // namespace

FLORA_FUZZ_TARGET(accumulator_checkpoint) {
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

  torch::NoGradGuard no_grad;
  Model m = make_model(f);
  accumulate(m, f, 0);
  const Snapshot before = snapshot(m);
  try {
    load_bytes(*m.acc, bytes);
  } catch (const c10::Error&) {
    FLORA_FUZZ_CHECK(same(snapshot(m), before), "a failed CompressedAccumulator::load changed the accumulator");
    return 0;
  }

  const Snapshot loaded = snapshot(m);
  const std::string saved = save_bytes(*m.acc);
  Model again = make_model(f);
  load_bytes(*again.acc, saved); // our own checkpoint of a valid accumulator: must load
  FLORA_FUZZ_CHECK(same(snapshot(again), loaded), "a saved accumulator loads back different");

  try {
    accumulate(m, f, 1);
    m.acc->restore();
  } catch (const c10::Error&) {
    return 0;
  }
  for (const auto& p : m.params) {
    FLORA_FUZZ_CHECK(!p.grad().defined() || p.grad().sizes() == p.sizes(), "a restored gradient has another shape");
  }
  return 0;
}
