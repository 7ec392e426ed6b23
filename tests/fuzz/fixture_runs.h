#pragma once

// The runs beside the checkpoint fixtures (tests/fixtures/checkpoints/v*/
// <name>.run.pt, see generate.cpp there): the parameters, their groups and
// the gradients that continue each run, read once per process.

#include "archive_tree.h"

#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

namespace flora::fuzz {

struct FixtureRun {
  std::string name;          // "v2/philox_8bit"
  std::string checkpoint;    // path of the .pt
  std::vector<torch::Tensor> params;
  std::vector<std::vector<int64_t>> groups;      // optimizer fixtures
  std::vector<std::vector<torch::Tensor>> grads; // per step (optimizer) or micro-batch (accumulator)
  int64_t rank = 0;                              // accumulator fixtures
  int64_t seed = 0;
  int64_t projection = 0;
};

/// Every fixture of one kind ("optimizer" or "accumulator"), in name order.
std::vector<FixtureRun> fixture_runs(const std::string& kind);

/// A checkpoint fixture with its archive parsed for editing (archive_tree.h).
struct CheckpointFixture {
  FixtureRun run;
  ArchiveNode tree;
};

/// Every fixture of `kind` with its archive, for a checkpoint target: each
/// is handed to `load_unedited`, which loads the archive written back as it
/// is (edits start from archives that load; a throw here is a broken
/// target, not a finding). Sets one intra-op thread: inputs run one at a
/// time.
std::vector<CheckpointFixture> checkpoint_fixtures(
    const std::string& kind, const std::function<void(const CheckpointFixture&)>& load_unedited);

} // namespace flora::fuzz
