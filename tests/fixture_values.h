#pragma once

// Reading the plain values that the checkpoint fixtures' runs are pickled as
// (tests/fixtures/checkpoints/generate.cpp writes dicts of lists and tensors):
// shared by the compatibility test and the fuzz targets' fixture runs.

#include <torch/torch.h>

#include <string>
#include <vector>

namespace flora::testing {

/// dict[key], or None when the dict has no such key.
inline c10::IValue fixture_get(const c10::IValue& dict, const std::string& key) {
  const auto d = dict.toGenericDict();
  const auto it = d.find(key);
  return it == d.end() ? c10::IValue() : it->value();
}

/// A list of tensors, None entries as undefined tensors.
inline std::vector<torch::Tensor> fixture_tensors(const c10::IValue& list) {
  std::vector<torch::Tensor> out;
  for (const c10::IValue v : list.toList()) {
    out.push_back(v.isNone() ? torch::Tensor() : v.toTensor());
  }
  return out;
}

} // namespace flora::testing
