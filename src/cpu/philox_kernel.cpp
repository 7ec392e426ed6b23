// CPU kernels of flora::philox_normal_ and flora::philox_bits_: the same
// Philox stream and Box-Muller transform as the CUDA kernels
// (kernels/philox.h).

#include "kernels/checks.h"
#include "kernels/contiguous.h"
#include "kernels/dtypes.h"
#include "kernels/philox.h"

#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

namespace flora::cpu {
namespace {

// Calls fill(row, block, first element, lanes in the block) for every 4-wide
// block of a contiguous (rows, cols) buffer, in parallel.
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
  detail::check_philox_normal_args(out);
  const detail::ContiguousWorkingCopy target(out);
  const int64_t rows = out.size(0);
  const int64_t cols = out.size(1);
  const float s = static_cast<float>(scale);
  FLORA_DISPATCH_PARAM_TYPES(out.scalar_type(), "philox_normal_cpu", [&] {
    scalar_t* data = target.get().data_ptr<scalar_t>();
    for_each_block(rows, cols, [&](int64_t row, int64_t block, int64_t offset, int64_t count) {
      float n[4];
      detail::philox_normal4(static_cast<uint64_t>(seed), row, block, n);
      for (int64_t lane = 0; lane < count; ++lane) {
        data[offset + lane] = static_cast<scalar_t>(n[lane] * s);
      }
    });
  });
  target.write_back();
  return out;
}

at::Tensor& philox_bits_cpu(at::Tensor& out, int64_t seed) {
  detail::check_philox_bits_args(out);
  const detail::ContiguousWorkingCopy target(out);
  int32_t* data = target.get().data_ptr<int32_t>();
  for_each_block(out.size(0), out.size(1), [&](int64_t row, int64_t block, int64_t offset, int64_t count) {
    const detail::PhiloxBlock d = detail::philox_draws(static_cast<uint64_t>(seed), row, block);
    const uint32_t lanes[4] = {d.x, d.y, d.z, d.w};
    for (int64_t lane = 0; lane < count; ++lane) {
      data[offset + lane] = static_cast<int32_t>(lanes[lane]);
    }
  });
  target.write_back();
  return out;
}

} // namespace

TORCH_LIBRARY_IMPL(flora, CPU, m) {
  m.impl("philox_normal_", &philox_normal_cpu);
  m.impl("philox_bits_", &philox_bits_cpu);
}

} // namespace flora::cpu
