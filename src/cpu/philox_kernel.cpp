// CPU kernels of flora::philox_normal_ and flora::philox_bits_: the same
// Philox stream and Box-Muller transform as the CUDA kernels (src/philox.h).

#include "../philox.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

namespace flora::cpu {
namespace {

void check_matrix(const at::Tensor& out, const char* op) {
  TORCH_CHECK(out.dim() == 2, op, ": expected a 2-d tensor, got ", out.dim(), " dimensions");
}

// Fills a contiguous (rows, cols) buffer block by block; `write(ptr, lane
// values, count)` stores the first `count` lanes of one 4-wide block.
template <typename Fill>
void for_each_block(int64_t rows, int64_t cols, const Fill& fill) {
  const int64_t blocks = (cols + 3) / 4;
  at::parallel_for(0, rows * blocks, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t row = t / blocks;
      const int64_t block = t % blocks;
      const int64_t col = block * 4;
      fill(row, block, row * cols + col, std::min<int64_t>(4, cols - col));
    }
  });
}

at::Tensor& philox_normal_cpu(at::Tensor& out, int64_t seed, double scale) {
  check_matrix(out, "philox_normal_");
  TORCH_CHECK(
      at::isFloatingType(out.scalar_type()),
      "philox_normal_: expected a floating tensor, got ", out.scalar_type());
  at::Tensor target = out.is_contiguous() ? out : at::empty(out.sizes(), out.options());
  const int64_t rows = target.size(0);
  const int64_t cols = target.size(1);
  const float s = static_cast<float>(scale);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, target.scalar_type(), "philox_normal_cpu", [&] {
    scalar_t* data = target.data_ptr<scalar_t>();
    for_each_block(rows, cols, [&](int64_t row, int64_t block, int64_t offset, int64_t count) {
      float n[4];
      detail::philox_normal4(static_cast<uint64_t>(seed), row, block, n);
      for (int64_t lane = 0; lane < count; ++lane) {
        data[offset + lane] = static_cast<scalar_t>(n[lane] * s);
      }
    });
  });
  if (!target.is_same(out)) {
    out.copy_(target);
  }
  return out;
}

at::Tensor& philox_bits_cpu(at::Tensor& out, int64_t seed) {
  check_matrix(out, "philox_bits_");
  TORCH_CHECK(
      out.scalar_type() == at::kInt,
      "philox_bits_: expected an int32 tensor, got ", out.scalar_type());
  at::Tensor target = out.is_contiguous() ? out : at::empty(out.sizes(), out.options());
  int32_t* data = target.data_ptr<int32_t>();
  for_each_block(target.size(0), target.size(1), [&](int64_t row, int64_t block, int64_t offset, int64_t count) {
    const detail::PhiloxBlock d = detail::philox_draws(static_cast<uint64_t>(seed), row, block);
    const uint32_t lanes[4] = {d.x, d.y, d.z, d.w};
    for (int64_t lane = 0; lane < count; ++lane) {
      data[offset + lane] = static_cast<int32_t>(lanes[lane]);
    }
  });
  if (!target.is_same(out)) {
    out.copy_(target);
  }
  return out;
}

} // namespace

TORCH_LIBRARY_IMPL(flora, CPU, m) {
  m.impl("philox_normal_", &philox_normal_cpu);
  m.impl("philox_bits_", &philox_bits_cpu);
}

} // namespace flora::cpu
