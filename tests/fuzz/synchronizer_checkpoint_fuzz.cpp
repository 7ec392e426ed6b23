// Fuzz target: GradientSynchronizer::load (flora::distributed) on edited
// checkpoints of its own (archive_tree.h's edits of what save() writes for a
// compressed exchange, a plain one and an accumulator's exchange), in a Gloo
// group of one rank over an in-process store. Properties:
//   - the load succeeds or throws c10::Error, and a load that throws leaves
//     the seeds as they were (what save() writes is unchanged);
//   - after a load that succeeds, an exchange works, and what was loaded
//     saves and loads back the same.

#include "archive_tree.h"
#include "fuzz_target.h"

#include <flora/distributed.h>
#include <flora/flora.h>

#include <torch/csrc/distributed/c10d/HashStore.hpp>
#include <torch/utils.h>

#include <sstream>

namespace {

using flora::distributed::GradientSynchronizer;
using flora::distributed::SynchronizerOptions;
using flora::fuzz::ArchiveNode;

c10::intrusive_ptr<c10d::ProcessGroup> solo_group() {
  static auto group = flora::distributed::make_process_group(
      c10::make_intrusive<c10d::HashStore>(), 0, 1, 0,
      flora::distributed::InitOptions()
          .backend(flora::distributed::BackendKind::gloo)
          .gloo_hostname("127.0.0.1")
          .timeout(std::chrono::seconds(60)));
  return group;
}

std::vector<torch::Tensor> make_params(uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  std::vector<torch::Tensor> params;
  for (const auto& shape : std::vector<std::vector<int64_t>>{{8, 24}, {20, 6}, {40, 6}, {7}, {6, 6}}) {
    params.push_back(torch::randn(shape, gen).requires_grad_(true));
  }
  return params;
}

std::string save_bytes(const GradientSynchronizer& sync) {
  torch::serialize::OutputArchive archive;
  sync.save(archive);
  std::ostringstream out;
  archive.save_to(out);
  return out.str();
}

void load_bytes(GradientSynchronizer& sync, const std::string& bytes) {
  torch::serialize::InputArchive archive;
  std::istringstream stream(bytes);
  archive.load_from(stream);
  sync.load(archive);
}

// One synchroniser per mode, made once (construction is a collective), with
// the tree of what it saves after an exchange of its own.
struct Subject {
  std::vector<torch::Tensor> params;
  std::unique_ptr<flora::CompressedAccumulator> accumulator;
  std::unique_ptr<GradientSynchronizer> sync;
  ArchiveNode tree;

  void set_grads(uint64_t seed) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    for (auto& p : params) {
      p.mutable_grad() = torch::randn(p.sizes(), gen);
    }
    if (accumulator) {
      accumulator->accumulate();
    }
  }
  void exchange() {
    sync->synchronize();
    if (accumulator) {
      accumulator->restore();
    }
  }
};

std::vector<Subject>& subjects() {
  static std::vector<Subject> all = [] {
    torch::set_num_threads(1);
    std::vector<Subject> out(3);
    const auto options = SynchronizerOptions().bucket_bytes(1024);
    out[0].params = make_params(1);
    out[0].sync = std::make_unique<GradientSynchronizer>(
        out[0].params, solo_group(), SynchronizerOptions(options).compression_rank(2).seed(5));
    out[1].params = make_params(2);
    out[1].sync = std::make_unique<GradientSynchronizer>(out[1].params, solo_group(), options);
    out[2].params = make_params(3);
    out[2].accumulator = std::make_unique<flora::CompressedAccumulator>(out[2].params, flora::AccumulationOptions(3));
    out[2].sync = std::make_unique<GradientSynchronizer>(*out[2].accumulator, solo_group(), options);
    for (auto& s : out) {
      s.set_grads(7);
      s.exchange();
      torch::serialize::InputArchive archive;
      std::istringstream stream(save_bytes(*s.sync));
      archive.load_from(stream);
      s.tree = flora::fuzz::read_archive(archive);
    }
    return out;
  }();
  return all;
}

} // namespace

FLORA_FUZZ_TARGET(synchronizer_checkpoint) {
  auto& all = subjects();
  flora::fuzz::ByteReader in(data, size);
  Subject& s = all[in.below(all.size())];
  ArchiveNode tree = all[in.below(all.size())].tree; // sometimes another mode's checkpoint
  flora::fuzz::mutate_archive(tree, in, 6);
  std::string bytes;
  try {
    bytes = flora::fuzz::archive_bytes(tree);
  } catch (const c10::Error&) {
    return 0; // torch's writer refuses this archive: no user can write it
  }

  // Back to the subject's own state first (an earlier input may have loaded
  // other seeds), then the edited checkpoint.
  load_bytes(*s.sync, flora::fuzz::archive_bytes(s.tree));
  const std::string before = flora::fuzz::canonical_bytes(save_bytes(*s.sync));
  try {
    load_bytes(*s.sync, bytes);
  } catch (const c10::Error&) {
    FLORA_FUZZ_CHECK(
        flora::fuzz::canonical_bytes(save_bytes(*s.sync)) == before, "a failed GradientSynchronizer::load changed its seeds");
    return 0;
  }
  const std::string loaded = save_bytes(*s.sync);
  load_bytes(*s.sync, loaded);
  FLORA_FUZZ_CHECK(
      flora::fuzz::canonical_bytes(save_bytes(*s.sync)) == flora::fuzz::canonical_bytes(loaded),
      "a saved synchroniser loads back different");
  s.set_grads(11);
  s.exchange();
  for (const auto& p : s.params) {
    FLORA_FUZZ_CHECK(p.grad().defined() && p.grad().sizes() == p.sizes(), "an exchange lost a gradient");
  }
  return 0;
}
