#pragma once

// Parameter-shape workloads for the benchmarks: read from bench/shapes/*.tsv
// (copies of the project's shared shape lists) or generated for a
// GPT-2-shaped model of any size.

#include <torch/torch.h>

#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace flora::bench {

struct NamedShape {
  std::string name;
  std::vector<int64_t> shape;
};

/// Lines "name<TAB>AxB..."; '#' comments and the "name shape" header skipped.
inline std::vector<NamedShape> read_shapes(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    throw std::runtime_error("cannot open shape list " + path);
  }
  std::vector<NamedShape> out;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#' || line.rfind("name\t", 0) == 0) {
      continue;
    }
    const auto tab = line.find('\t');
    NamedShape s{line.substr(0, tab), {}};
    std::stringstream dims(line.substr(tab + 1));
    std::string dim;
    while (std::getline(dims, dim, 'x')) {
      s.shape.push_back(std::stoll(dim));
    }
    out.push_back(std::move(s));
  }
  return out;
}

/// Hugging Face GPT2LMHeadModel's trainable parameters (lm_head tied to wte,
/// Conv1D weights stored (in, out)).
inline std::vector<NamedShape> gpt2_shapes(int64_t n_layer, int64_t n_embd, int64_t vocab, int64_t n_positions) {
  std::vector<NamedShape> out = {
      {"transformer.wte.weight", {vocab, n_embd}}, {"transformer.wpe.weight", {n_positions, n_embd}}};
  for (int64_t l = 0; l < n_layer; ++l) {
    const std::string h = "transformer.h." + std::to_string(l) + ".";
    out.push_back({h + "ln_1.weight", {n_embd}});
    out.push_back({h + "ln_1.bias", {n_embd}});
    out.push_back({h + "attn.c_attn.weight", {n_embd, 3 * n_embd}});
    out.push_back({h + "attn.c_attn.bias", {3 * n_embd}});
    out.push_back({h + "attn.c_proj.weight", {n_embd, n_embd}});
    out.push_back({h + "attn.c_proj.bias", {n_embd}});
    out.push_back({h + "ln_2.weight", {n_embd}});
    out.push_back({h + "ln_2.bias", {n_embd}});
    out.push_back({h + "mlp.c_fc.weight", {n_embd, 4 * n_embd}});
    out.push_back({h + "mlp.c_fc.bias", {4 * n_embd}});
    out.push_back({h + "mlp.c_proj.weight", {4 * n_embd, n_embd}});
    out.push_back({h + "mlp.c_proj.bias", {n_embd}});
  }
  out.push_back({"transformer.ln_f.weight", {n_embd}});
  out.push_back({"transformer.ln_f.bias", {n_embd}});
  return out;
}

inline int64_t numel(const std::vector<NamedShape>& shapes) {
  int64_t n = 0;
  for (const auto& s : shapes) {
    int64_t k = 1;
    for (auto d : s.shape) {
      k *= d;
    }
    n += k;
  }
  return n;
}

/// Parameters (N(0, 0.02), like GPT-2's initialisation) with synthetic
/// gradients, on `device` in `dtype`.
inline std::vector<torch::Tensor> make_parameters(
    const std::vector<NamedShape>& shapes, torch::Device device = torch::kCPU, torch::Dtype dtype = torch::kFloat) {
  torch::manual_seed(0);
  std::vector<torch::Tensor> params;
  for (const auto& s : shapes) {
    auto opts = torch::TensorOptions().device(device).dtype(dtype);
    auto p = (torch::randn(s.shape, opts) * 0.02).requires_grad_(true);
    p.mutable_grad() = torch::randn(s.shape, opts) * 1e-3;
    params.push_back(p);
  }
  return params;
}

} // namespace flora::bench
