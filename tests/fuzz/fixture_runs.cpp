#include "fixture_runs.h"
#include "fixture_values.h"

#include <torch/serialize.h>

#include <dirent.h>

#include <algorithm>
#include <fstream>
#include <iterator>

namespace flora::fuzz {
namespace {

using flora::testing::fixture_get;
using flora::testing::fixture_tensors;

std::vector<std::string> names_in(const std::string& dir) {
  std::vector<std::string> names;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (const dirent* e = ::readdir(d)) {
      names.emplace_back(e->d_name);
    }
    ::closedir(d);
  }
  std::sort(names.begin(), names.end());
  return names;
}

} // namespace

std::vector<FixtureRun> fixture_runs(const std::string& kind) {
  const std::string root = std::string(FLORA_FIXTURE_DIR) + "/checkpoints";
  const std::string suffix = ".run.pt";
  std::vector<FixtureRun> runs;
  for (const auto& version : names_in(root)) {
    if (version.size() < 2 || version[0] != 'v') {
      continue;
    }
    for (const auto& file : names_in(root + "/" + version)) {
      if (file.size() <= suffix.size() || file.compare(file.size() - suffix.size(), suffix.size(), suffix) != 0) {
        continue;
      }
      const std::string base = root + "/" + version + "/" + file.substr(0, file.size() - suffix.size());
      std::ifstream in(base + suffix, std::ios::binary);
      const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      const auto run = torch::pickle_load(bytes);
      if (fixture_get(run, "kind").toStringRef() != kind) {
        continue;
      }
      FixtureRun r;
      r.name = version + "/" + file.substr(0, file.size() - suffix.size());
      r.checkpoint = base + ".pt";
      r.params = fixture_tensors(fixture_get(run, "params"));
      for (const c10::IValue step : fixture_get(run, "grads").toList()) {
        r.grads.push_back(fixture_tensors(step));
      }
      if (kind == "optimizer") {
        for (const c10::IValue g : fixture_get(run, "groups").toList()) {
          r.groups.push_back(g.toIntVector());
        }
      } else {
        r.rank = fixture_get(run, "rank").toInt();
        r.seed = fixture_get(run, "seed").toInt();
        r.projection = fixture_get(run, "projection").toInt();
      }
      runs.push_back(std::move(r));
    }
  }
  TORCH_CHECK(!runs.empty(), "no ", kind, " fixtures under ", root);
  return runs;
}

std::vector<CheckpointFixture> checkpoint_fixtures(
    const std::string& kind, const std::function<void(const CheckpointFixture&)>& load_unedited) {
  torch::set_num_threads(1);
  std::vector<CheckpointFixture> out;
  for (auto& run : fixture_runs(kind)) {
    auto tree = read_archive_file(run.checkpoint);
    out.push_back({std::move(run), std::move(tree)});
    load_unedited(out.back());
  }
  return out;
}

} // namespace flora::fuzz
