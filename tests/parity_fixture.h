#pragma once

// Reads the flora-opt parity fixtures (fixtures/parity/*.pt, written by
// fixtures/parity/generate.py) and builds the matching flora::Flora. Shared
// by the parity test and the CUDA tests, which replay the same configurations
// on the GPU.

#include <flora/flora.h>

#include <gtest/gtest.h>
#include <torch/serialize.h>
#include <torch/torch.h>

#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

namespace flora::testing {

/// The 16 configurations of the fixture set: 13 with float32 states and 3
/// with 8-bit states (named "quantized_*").
inline const std::vector<std::string>& parity_fixture_names() {
  static const std::vector<std::string> names = {
      "factored_no_momentum", "full_second_moment", "momentum_uncompressed", "compressed",
      "compressed_kappa1",    "compressed_full_second_moment", "relative_step", "relative_step_warmup",
      "no_scale_parameter",   "weight_decay", "half_precision", "param_groups", "large_seed",
      "quantized_momentum_uncompressed", "quantized_compressed", "quantized_factored"};
  return names;
}

inline c10::IValue fixture_get(const c10::IValue& dict, const std::string& key) {
  const auto d = dict.toGenericDict();
  auto it = d.find(key);
  return it == d.end() ? c10::IValue() : it->value();
}

/// Applies the keys present in `kwargs` (flora-opt's constructor names).
inline void apply_fixture_options(FloraOptions& o, const c10::IValue& kwargs) {
  for (const auto& entry : kwargs.toGenericDict()) {
    const std::string key = entry.key().toStringRef();
    const c10::IValue& v = entry.value();
    if (key == "lr") {
      o.lr(v.toOptional<double>());
    } else if (key == "rank") {
      o.rank(v.toOptional<int64_t>());
    } else if (key == "kappa") {
      o.kappa(v.toInt());
    } else if (key == "eps") {
      const auto t = v.toTupleRef().elements();
      o.eps(std::make_tuple(t[0].toDouble(), t[1].toDouble()));
    } else if (key == "clip_threshold") {
      o.clip_threshold(v.toDouble());
    } else if (key == "decay_rate") {
      o.decay_rate(v.toDouble());
    } else if (key == "beta1") {
      o.beta1(v.toOptional<double>());
    } else if (key == "weight_decay") {
      o.weight_decay(v.toDouble());
    } else if (key == "scale_parameter") {
      o.scale_parameter(v.toBool());
    } else if (key == "relative_step") {
      o.relative_step(v.toBool());
    } else if (key == "warmup_init") {
      o.warmup_init(v.toBool());
    } else if (key == "factorize_second_moment") {
      o.factorize_second_moment(v.toBool());
    } else if (key == "seed") {
      o.seed(v.toInt());
    } else if (key == "quantization") {
      o.quantization(v.toBool()).quantization_min_size(0); // flora-opt quantizes every parameter
    } else {
      ADD_FAILURE() << "unknown option in fixture: " << key;
    }
  }
}

struct ParityFixture {
  std::string name;
  c10::IValue data; // the whole dict

  static ParityFixture load(const std::string& name) {
    const std::string path = std::string(FLORA_FIXTURE_DIR) + "/parity/" + name + ".pt";
    std::ifstream file(path, std::ios::binary);
    EXPECT_TRUE(file.good()) << "missing fixture " << path;
    std::vector<char> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    return {name, torch::pickle_load(bytes)};
  }

  c10::IValue get(const std::string& key) const {
    return fixture_get(data, key);
  }

  size_t steps() const {
    return get("grads").toList().size();
  }

  /// Fresh copies of the initial parameters on `device`.
  std::vector<torch::Tensor> initial_params(const torch::Device& device = torch::kCPU) const {
    const auto initial = get("params").toList();
    const auto requires_grad = get("requires_grad").toList();
    std::vector<torch::Tensor> params;
    for (size_t i = 0; i < initial.size(); ++i) {
      params.push_back(initial.get(i).toTensor().to(device).clone().requires_grad_(requires_grad.get(i).toBool()));
    }
    return params;
  }

  /// The optimizer flora-opt was run with, in `mode`.
  std::unique_ptr<Flora> make_optimizer(const std::vector<torch::Tensor>& params, ProjectionMode mode) const {
    FloraOptions defaults;
    apply_fixture_options(defaults, get("options"));
    defaults.projection(mode);
    std::vector<torch::optim::OptimizerParamGroup> groups;
    for (const c10::IValue group : get("groups").toList()) {
      std::vector<torch::Tensor> members;
      for (const c10::IValue index : fixture_get(group, "params").toList()) {
        members.push_back(params.at(index.toInt()));
      }
      auto options = std::make_unique<FloraOptions>(defaults);
      apply_fixture_options(*options, fixture_get(group, "options"));
      groups.emplace_back(std::move(members), std::move(options));
    }
    return std::make_unique<Flora>(groups, defaults);
  }

  /// Sets the gradients of step `step` (0-based); None in the fixture leaves
  /// the parameter without a gradient.
  void set_grads(const std::vector<torch::Tensor>& params, size_t step) const {
    const auto grads = get("grads").toList().get(step).toList();
    for (size_t i = 0; i < params.size(); ++i) {
      const auto g = grads.get(i);
      params[i].mutable_grad() = g.isNone() ? torch::Tensor() : g.toTensor().to(params[i].device()).clone();
    }
  }
};

} // namespace flora::testing
