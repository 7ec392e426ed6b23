#pragma once

// The products Flora's compressed momentum cannot avoid, alone: for each
// matrix that `options` compresses, down(u) (r x m times m x n, or m x n
// times n x r) and the update's up(M) added into u, as plain float32 GEMMs
// (Flora computes them in float32 whatever the parameters' dtype). What no
// Flora step can go below; shared by the CPU and GPU step benchmarks.

#include "workload.h"

#include <flora/flora.h>

#include <torch/torch.h>

#include <vector>

namespace flora::bench {

class GemmFloor {
 public:
  GemmFloor(const std::vector<NamedShape>& shapes, const FloraOptions& options, torch::Device device = torch::kCPU) {
    torch::manual_seed(0);
    const auto fp32 = torch::TensorOptions().device(device).dtype(torch::kFloat);
    for (const auto& s : shapes) {
      if (!ParamLayout::of(s.shape, options).compressed) {
        continue;
      }
      const int64_t rows = s.shape[0], cols = s.shape[1], r = *options.rank();
      const bool left = projects_from_left(rows, cols);
      matrices_.push_back(Matrix{
          left ? torch::randn({r, rows}, fp32) : torch::randn({cols, r}, fp32), torch::randn({rows, cols}, fp32),
          torch::randn(compressed_shape(rows, cols, r), fp32), torch::empty(compressed_shape(rows, cols, r), fp32),
          left});
    }
  }

  /// One step's products.
  void run() {
    for (auto& x : matrices_) {
      if (x.left) {
        at::mm_out(x.d, x.p, x.u);
        x.u.addmm_(x.p.t(), x.m, 0.1, 0.9);
      } else {
        at::mm_out(x.d, x.u, x.p);
        x.u.addmm_(x.m, x.p.t(), 0.1, 0.9);
      }
    }
  }

  size_t matrices() const {
    return matrices_.size();
  }

 private:
  struct Matrix {
    torch::Tensor p, u, m, d;
    bool left;
  };
  std::vector<Matrix> matrices_;
};

} // namespace flora::bench
