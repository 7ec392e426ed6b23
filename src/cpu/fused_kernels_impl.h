// The fused CPU kernels (fused_kernels.h), written once over ATen's
// Vectorized<float>. Included by one translation unit per instruction set,
// which defines CPU_CAPABILITY (DEFAULT, AVX2, AVX512) and
// CPU_CAPABILITY_<NAME> as ATen's own kernels are built; everything here
// lives in namespace flora::cpu::CPU_CAPABILITY, as ATen's vector types do,
// so the three copies never meet. Built with -ffp-contract=off: every
// instruction set rounds the same multiply-then-add.

#include "kernels/ceil_div.h"
#include "kernels/philox.h"
#include "kernels/code_lookup.h"
#include "kernels/quantization_rule.h"
#include "kernels/stochastic_rounding.h"
#include "fused_kernels.h"

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace flora::cpu {
namespace CPU_CAPABILITY {
namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kWidth = Vec::size();

// Work is cut into pieces of this many elements (a function of the shape
// only, so that partial sums are grouped alike whatever the thread count).
constexpr int64_t kChunk = 16384;
// Row blocks of a factored reduction: at most this many, so that the column
// partials stay a small fraction of the matrix.
constexpr int64_t kMaxRowBlocks = 256;

// ---------------------------------------------------------------- loads and stores

template <typename T>
Vec load_float(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return Vec::loadu(p);
  } else {
    Vec v;
    at::vec::load_to_float(p, v);
    return v;
  }
}

// The first n (< kWidth) elements, the rest zero.
template <typename T>
Vec load_float_partial(const T* p, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    return Vec::loadu(p, n);
  } else {
    float tmp[kWidth] = {};
    for (int64_t k = 0; k < n; ++k) {
      tmp[k] = static_cast<float>(p[k]);
    }
    return Vec::loadu(tmp);
  }
}

template <typename T>
void store_float(T* p, const Vec& v, int64_t n = kWidth) {
  if constexpr (std::is_same_v<T, float>) {
    v.store(p, static_cast<int>(n));
  } else {
    float tmp[kWidth];
    v.store(tmp);
    for (int64_t k = 0; k < n; ++k) {
      p[k] = static_cast<T>(tmp[k]); // round to nearest even
    }
  }
}

// The parameter's store: round to nearest, or stochastically for a
// bfloat16 parameter when the rule asks (`flat`: the first element's index).
template <typename T>
void store_param(T* p, const Vec& v, int64_t width, int64_t flat, const ApplyRule& rule) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    if (rule.stochastic) {
      float tmp[kWidth];
      v.store(tmp);
      int64_t quad = -1;
      detail::PhiloxBlock draws{};
      for (int64_t k = 0; k < width; ++k) {
        const int64_t e = flat + k;
        if (e / 4 != quad) {
          quad = e / 4;
          draws = detail::rounding_draws(rule.rounding_key, rule.step, quad);
        }
        p[k] = c10::BFloat16(
            detail::bfloat16_bits_stochastic(tmp[k], detail::lane_of(draws, e % 4)), c10::BFloat16::from_bits());
      }
      return;
    }
  }
  store_float(p, v, width);
}

// A read stream's line this far ahead, asked for now: a core's hardware
// prefetcher alone keeps too few lines in flight for a read-only pass (the
// passes that also write run at about twice the bandwidth without it).
constexpr int64_t kPrefetchBytes = 2048;

// (An address, not a pointer past the array: a prefetch never faults.)
template <typename T>
void prefetch(const T* at) {
  __builtin_prefetch(reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(at) + kPrefetchBytes));
}

// Lanes added in a fixed order.
float lane_sum(const Vec& v) {
  float tmp[kWidth];
  v.store(tmp);
  float s = 0.f;
  for (int64_t k = 0; k < kWidth; ++k) {
    s += tmp[k];
  }
  return s;
}

float lane_max(const Vec& v) {
  float tmp[kWidth];
  v.store(tmp);
  float m = tmp[0];
  for (int64_t k = 1; k < kWidth; ++k) {
    m = (tmp[k] > m || tmp[k] != tmp[k]) ? tmp[k] : m; // NaN wins: it must be seen
  }
  return m;
}

template <typename Fn>
void dispatch_dtype(c10::ScalarType dtype, const Fn& fn) {
  switch (dtype) {
    case c10::ScalarType::Float:
      fn(float{});
      return;
    case c10::ScalarType::BFloat16:
      fn(c10::BFloat16{});
      return;
    case c10::ScalarType::Half:
      fn(c10::Half{});
      return;
    default:
      TORCH_CHECK(false, "flora fused kernels: unsupported dtype ", dtype);
  }
}

// Fixed-slot partial sums, added in order.
double ordered_sum(const std::vector<double>& parts) {
  double s = 0.0;
  for (double p : parts) {
    s += p;
  }
  return s;
}

// ---------------------------------------------------------------- quantization

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
constexpr bool kVectorCodes = true;
using IVec = at::vec::Vectorized<int32_t>;
static_assert(IVec::size() == kWidth);

// CodeLookup::nearest for kWidth values at once, step for step (its table
// reads become gathers, its walk a fixed max_walk() steps that stop at the
// +inf sentinel), so every code is the scalar lookup's.
void nearest_codes(const Vec& normed, const detail::CodeLookup& lookup, int32_t* out) {
  const Vec one(1.0f);
  const Vec minus_one(-1.0f);
  // The scalar clamp: NaN stays NaN.
  Vec v = Vec::blendv(normed, minus_one, normed < minus_one);
  v = Vec::blendv(v, one, one < v);
  const IVec top = (at::vec::cast<int32_t>(v) >> IVec(16)) & IVec(0xFFFF);
  IVec lo = at::vec::cast<int32_t>(at::vec::gather<4>(reinterpret_cast<const float*>(lookup.starts()), top));
  const float* padded = lookup.padded(); // padded[lo + 1] == map[lo]
  for (int k = 0; k < lookup.max_walk(); ++k) {
    lo = lo - at::vec::cast<int32_t>(at::vec::gather<4>(padded + 1, lo) < v); // a true mask is -1
  }
  const Vec left = at::vec::gather<4>(padded, lo);
  const Vec right = at::vec::gather<4>(padded + 1, lo);
  // lo - 1, or lo where the right neighbour is strictly nearer.
  IVec code = lo - IVec(1) - at::vec::cast<int32_t>((right - v) < (v - left));
  code = IVec::blendv(code, IVec(0), at::vec::cast<int32_t>(v != v));
  code.store(out);
}
#else
constexpr bool kVectorCodes = false;
void nearest_codes(const Vec&, const detail::CodeLookup&, int32_t*) {}
#endif

// The codes of one block of floats (bitsandbytes' rule, quantization.h):
// absmax ignores NaN; an all-zero block gets code 0 everywhere.
void quantize_block(const float* x, int64_t n, const detail::CodeLookup& lookup, uint8_t* q, float* absmax) {
  int64_t i = 0;
  Vec mv(0.0f);
  for (; i + kWidth <= n; i += kWidth) {
    const Vec a = Vec::loadu(x + i).abs();
    mv = Vec::blendv(mv, a, a > mv); // NaN never wins
  }
  float lanes[kWidth];
  mv.store(lanes);
  float m = 0.0f;
  for (const float a : lanes) {
    m = a > m ? a : m;
  }
  for (; i < n; ++i) {
    const float a = std::fabs(x[i]);
    m = a > m ? a : m;
  }
  *absmax = m;
  if (m == 0.0f) {
    std::memset(q, 0, static_cast<size_t>(n));
    return;
  }
  const float inverse = 1.0f / m;
  i = 0;
  if constexpr (kVectorCodes) {
    const Vec scale(inverse);
    int32_t codes[kWidth];
    for (; i + kWidth <= n; i += kWidth) {
      nearest_codes(Vec::loadu(x + i) * scale, lookup, codes);
      for (int64_t k = 0; k < kWidth; ++k) {
        q[i + k] = static_cast<uint8_t>(codes[k]);
      }
    }
  }
  for (; i < n; ++i) {
    q[i] = lookup.nearest(x[i] * inverse);
  }
}

void dequantize_range(const Moment& m, int64_t begin, int64_t n, float* out) {
  int64_t i = 0;
  while (i < n) {
    const int64_t k = begin + i;
    const int64_t block = k / m.block;
    const int64_t stop = std::min(n, (block + 1) * m.block - begin); // this block's end
    const float scale = m.absmax[block];
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
    const Vec vscale(scale);
    for (; i + kWidth <= stop; i += kWidth) {
      const IVec codes = at::vec::convert_to_int32<uint8_t>(m.codes + begin + i);
      (at::vec::gather<4>(m.code_map, codes) * vscale).store(out + i);
    }
#endif
    for (; i < stop; ++i) {
      out[i] = m.code_map[m.codes[begin + i]] * scale;
    }
  }
}

void quantize_range(const Moment& m, int64_t begin, int64_t n, const float* x, const detail::CodeLookup& lookup) {
  // begin is a block boundary; the last block may be short.
  for (int64_t off = 0; off < n; off += m.block) {
    const int64_t len = std::min(m.block, n - off);
    quantize_block(x + off, len, lookup, m.codes + begin + off, m.absmax + (begin + off) / m.block);
  }
}

// ---------------------------------------------------------------- phase 1

template <typename T>
GradientSums gradient_sums_typed(const TensorView& t, bool factored, float* row_sums, float* col_sums) {
  const T* p = static_cast<const T*>(t.param);
  const T* g = static_cast<const T*>(t.grad);
  const int64_t rows = factored ? t.rows : 1;
  const int64_t cols = factored ? t.cols : t.numel();
  // Blocks of whole rows (factored) or of kChunk elements (flat).
  const int64_t per_block = factored
      ? std::max((kChunk + cols - 1) / cols, (rows + kMaxRowBlocks - 1) / kMaxRowBlocks)
      : kChunk;
  const int64_t blocks = factored ? (rows + per_block - 1) / per_block : (cols + kChunk - 1) / kChunk;
  std::vector<double> param_sq(blocks, 0.0);
  std::vector<float> max_abs(blocks, 0.f);
  std::vector<float> col_parts(factored ? blocks * cols : 0, 0.f);

  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      Vec psq(0.f), amax(0.f);
      // One segment [j0, j1) of row r: accumulates p^2 and |g|, and g^2 into
      // the row sum and this block's column partials.
      auto segment = [&](int64_t offset, int64_t n, float* cols_out, Vec& row_acc) {
        int64_t j = 0;
        for (; j + kWidth <= n; j += kWidth) {
          prefetch(g + offset + j);
          prefetch(p + offset + j);
          const Vec gv = load_float(g + offset + j);
          const Vec pv = load_float(p + offset + j);
          const Vec gg = gv * gv;
          row_acc = row_acc + gg;
          psq = psq + pv * pv;
          amax = at::vec::maximum(amax, gv.abs());
          if (cols_out != nullptr) {
            (Vec::loadu(cols_out + j) + gg).store(cols_out + j);
          }
        }
        if (j < n) {
          const int64_t rest = n - j;
          const Vec gv = load_float_partial(g + offset + j, rest);
          const Vec pv = load_float_partial(p + offset + j, rest);
          const Vec gg = gv * gv;
          row_acc = row_acc + gg;
          psq = psq + pv * pv;
          amax = at::vec::maximum(amax, gv.abs());
          if (cols_out != nullptr) {
            (Vec::loadu(cols_out + j, static_cast<int>(rest)) + gg).store(cols_out + j, static_cast<int>(rest));
          }
        }
      };
      if (factored) {
        float* cols_out = col_parts.data() + b * cols;
        const int64_t r1 = std::min(rows, (b + 1) * per_block);
        for (int64_t r = b * per_block; r < r1; ++r) {
          Vec row_acc(0.f);
          segment(r * cols, cols, cols_out, row_acc);
          row_sums[r] = lane_sum(row_acc);
        }
      } else {
        Vec unused(0.f);
        const int64_t begin = b * kChunk;
        segment(begin, std::min(kChunk, cols - begin), nullptr, unused);
      }
      param_sq[b] = lane_sum(psq);
      max_abs[b] = lane_max(amax);
    }
  });

  GradientSums out;
  out.param_sq = ordered_sum(param_sq);
  for (float m : max_abs) {
    out.nonfinite = out.nonfinite || !(m <= FLT_MAX);
  }
  if (factored) {
    // Column sums: the block partials in block order, columns in parallel,
    // a vector of columns at a time (each column's additions in the order
    // of a scalar loop over the blocks).
    at::parallel_for(0, cols, 1024, [&](int64_t j0, int64_t j1) {
      std::fill(col_sums + j0, col_sums + j1, 0.f);
      for (int64_t b = 0; b < blocks; ++b) {
        const float* part = col_parts.data() + b * cols;
        int64_t j = j0;
        for (; j + kWidth <= j1; j += kWidth) {
          (Vec::loadu(col_sums + j) + Vec::loadu(part + j)).store(col_sums + j);
        }
        for (; j < j1; ++j) {
          col_sums[j] += part[j];
        }
      }
    });
  }
  return out;
}

GradientSums gradient_sums(const TensorView& t, bool factored, float* row_sums, float* col_sums) {
  GradientSums out;
  dispatch_dtype(t.dtype, [&](auto tag) {
    out = gradient_sums_typed<decltype(tag)>(t, factored, row_sums, col_sums);
  });
  return out;
}

// ---------------------------------------------------------------- phase 2

// Chunks of the flat parameter: whole quantization blocks when a moment is
// quantized, so that each chunk (de)quantizes on its own.
int64_t chunk_length(const UpdateRule& rule) {
  int64_t block = 0;
  if (rule.momentum.codes != nullptr) {
    block = rule.momentum.block;
  } else if (rule.second.codes != nullptr) {
    block = rule.second.block;
  }
  return block > 0 ? block * std::max<int64_t>(1, kChunk / block) : kChunk;
}

// The update of elements [begin, begin + n) of the flat parameter, as
// update_sq and apply both compute it. The moments' old values come from
// `second_old` / `momentum_old` (float32, this chunk) and the new ones go to
// `second_new` / `momentum_new` (may alias the old ones).
template <typename T, typename Sink>
void chunk_updates(
    const TensorView& t, const UpdateRule& rule, int64_t begin, int64_t n, const float* second_old,
    float* second_new, const float* momentum_old, float* momentum_new, const Sink& sink) {
  const T* g = static_cast<const T*>(t.grad);
  const Vec b2(rule.beta2), omb2(rule.one_minus_beta2), eps1(rule.eps1), one(1.f);
  const Vec b1(rule.beta1), omb1(rule.one_minus_beta1);
  const bool momentum = rule.momentum.defined();
  // Row segments: the factored rule needs the row's factor.
  int64_t i = 0;
  while (i < n) {
    const int64_t flat = begin + i;
    const int64_t row = rule.factored ? flat / t.cols : 0;
    const int64_t col0 = rule.factored ? flat - row * t.cols : 0;
    const int64_t len = rule.factored ? std::min(n - i, t.cols - col0) : n - i;
    const Vec rf(rule.factored ? rule.row_factor[row] : 0.f);
    auto element = [&](int64_t k, int64_t width) -> Vec {
      // k: offset within the chunk; width: lanes that are real.
      const bool full = width == kWidth;
      const Vec gv = full ? load_float(g + begin + k) : load_float_partial(g + begin + k, width);
      Vec u;
      if (rule.factored) {
        const int64_t c = col0 + (k - i);
        const Vec cf = full ? Vec::loadu(rule.col_factor + c) : Vec::loadu(rule.col_factor + c, static_cast<int>(width));
        u = (rf * cf) * gv;
      } else {
        const Vec vo = full ? Vec::loadu(second_old + k) : Vec::loadu(second_old + k, static_cast<int>(width));
        const Vec vn = vo * b2 + (gv * gv + eps1) * omb2;
        vn.store(second_new + k, static_cast<int>(width));
        u = gv * (one / vn.sqrt());
      }
      if (momentum) {
        const Vec mo = full ? Vec::loadu(momentum_old + k) : Vec::loadu(momentum_old + k, static_cast<int>(width));
        u = mo * b1 + u * omb1;
        u.store(momentum_new + k, static_cast<int>(width));
      }
      return u;
    };
    int64_t k = i;
    for (; k + kWidth <= i + len; k += kWidth) {
      prefetch(g + begin + k);
      sink(k, element(k, kWidth), kWidth);
    }
    if (k < i + len) {
      const int64_t rest = i + len - k;
      sink(k, element(k, rest), rest);
    }
    i += len;
  }
}

// Float32 views of a moment for one chunk: the moment itself, or a
// dequantized copy in `buffer`.
const float* moment_in(const Moment& m, int64_t begin, int64_t n, std::vector<float>& buffer) {
  if (!m.defined()) {
    return nullptr;
  }
  if (m.values != nullptr) {
    return m.values + begin;
  }
  buffer.resize(static_cast<size_t>(n));
  dequantize_range(m, begin, n, buffer.data());
  return buffer.data();
}

template <typename T>
double update_sq_typed(const TensorView& t, const UpdateRule& rule) {
  const int64_t chunk = chunk_length(rule);
  const int64_t chunks = detail::ceil_div(t.numel(), chunk);
  std::vector<double> parts(chunks, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    std::vector<float> second_buf, momentum_buf, second_scratch, momentum_scratch;
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t begin = c * chunk;
      const int64_t n = std::min(chunk, t.numel() - begin);
      // New moment values are not kept: they go to scratch.
      second_scratch.resize(static_cast<size_t>(n));
      momentum_scratch.resize(static_cast<size_t>(n));
      const float* so = moment_in(rule.second, begin, n, second_buf);
      const float* mo = moment_in(rule.momentum, begin, n, momentum_buf);
      Vec acc(0.f);
      chunk_updates<T>(
          t, rule, begin, n, so, second_scratch.data(), mo, momentum_scratch.data(),
          [&](int64_t, const Vec& u, int64_t width) {
            // Lanes past `width` are zero or finite garbage: mask them.
            const Vec uu = width == kWidth ? u * u : Vec::set(Vec(0.f), u * u, static_cast<int>(width));
            acc = acc + uu;
          });
      parts[c] = lane_sum(acc);
    }
  });
  return ordered_sum(parts);
}

double update_sq(const TensorView& t, const UpdateRule& rule) {
  double out = 0.0;
  dispatch_dtype(t.dtype, [&](auto tag) { out = update_sq_typed<decltype(tag)>(t, rule); });
  return out;
}

template <typename T>
void apply_typed(const TensorView& t, const UpdateRule& rule, const ApplyRule& apply) {
  T* p = static_cast<T*>(const_cast<void*>(t.param));
  const int64_t chunk = chunk_length(rule);
  const int64_t chunks = detail::ceil_div(t.numel(), chunk);
  const Vec keep(apply.keep), scale(apply.scale);
  const float* map = rule.second.codes != nullptr ? rule.second.code_map : rule.momentum.code_map;
  const auto lookup = map != nullptr ? detail::CodeLookup::of(map) : nullptr;
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    std::vector<float> second_buf, momentum_buf;
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t begin = c * chunk;
      const int64_t n = std::min(chunk, t.numel() - begin);
      const float* so = moment_in(rule.second, begin, n, second_buf);
      const float* mo = moment_in(rule.momentum, begin, n, momentum_buf);
      // New moments go in place (float32) or over the dequantized copy.
      float* sn = rule.second.values != nullptr ? rule.second.values + begin : second_buf.data();
      float* mn = rule.momentum.values != nullptr ? rule.momentum.values + begin : momentum_buf.data();
      chunk_updates<T>(t, rule, begin, n, so, sn, mo, mn, [&](int64_t k, const Vec& u, int64_t width) {
        T* at = p + begin + k;
        const Vec pv = width == kWidth ? load_float(at) : load_float_partial(at, width);
        store_param(at, pv * keep - u * scale, width, begin + k, apply);
      });
      if (rule.second.codes != nullptr) {
        quantize_range(rule.second, begin, n, sn, *lookup);
      }
      if (rule.momentum.codes != nullptr) {
        quantize_range(rule.momentum, begin, n, mn, *lookup);
      }
    }
  });
}

void apply(const TensorView& t, const UpdateRule& rule, const ApplyRule& apply_rule) {
  dispatch_dtype(t.dtype, [&](auto tag) { apply_typed<decltype(tag)>(t, rule, apply_rule); });
}

template <typename T>
void normalize_typed(const TensorView& t, const float* row_factor, const float* col_factor, float* out) {
  const T* g = static_cast<const T*>(t.grad);
  const int64_t cols = t.cols;
  const int64_t grain = std::max<int64_t>(1, kChunk / std::max<int64_t>(cols, 1));
  at::parallel_for(0, t.rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const Vec rf(row_factor[r]);
      const T* gr = g + r * cols;
      float* o = out + r * cols;
      int64_t j = 0;
      for (; j + kWidth <= cols; j += kWidth) {
        ((rf * Vec::loadu(col_factor + j)) * load_float(gr + j)).store(o + j);
      }
      if (j < cols) {
        const int64_t rest = cols - j;
        ((rf * Vec::loadu(col_factor + j, static_cast<int>(rest))) * load_float_partial(gr + j, rest))
            .store(o + j, static_cast<int>(rest));
      }
    }
  });
}

void normalize(const TensorView& t, const float* row_factor, const float* col_factor, float* out) {
  dispatch_dtype(t.dtype, [&](auto tag) { normalize_typed<decltype(tag)>(t, row_factor, col_factor, out); });
}

double sum_sq(const float* x, int64_t n) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> parts(chunks, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t begin = c * kChunk;
      const int64_t len = std::min(kChunk, n - begin);
      Vec acc(0.f);
      int64_t j = 0;
      for (; j + kWidth <= len; j += kWidth) {
        prefetch(x + begin + j);
        const Vec v = Vec::loadu(x + begin + j);
        acc = acc + v * v;
      }
      if (j < len) {
        const Vec v = Vec::loadu(x + begin + j, static_cast<int>(len - j));
        acc = acc + v * v;
      }
      parts[c] = lane_sum(acc);
    }
  });
  return ordered_sum(parts);
}

template <typename T>
void apply_from_typed(const TensorView& t, const float* update, const ApplyRule& apply) {
  T* p = static_cast<T*>(const_cast<void*>(t.param));
  const Vec keep(apply.keep), scale(apply.scale);
  at::parallel_for(0, t.numel(), kChunk, [&](int64_t i0, int64_t i1) {
    int64_t i = i0;
    for (; i + kWidth <= i1; i += kWidth) {
      store_param(p + i, load_float(p + i) * keep - Vec::loadu(update + i) * scale, kWidth, i, apply);
    }
    if (i < i1) {
      const int64_t rest = i1 - i;
      store_param(
          p + i, load_float_partial(p + i, rest) * keep - Vec::loadu(update + i, static_cast<int>(rest)) * scale, rest,
          i, apply);
    }
  });
}

void apply_from(const TensorView& t, const float* update, const ApplyRule& apply) {
  dispatch_dtype(t.dtype, [&](auto tag) { apply_from_typed<decltype(tag)>(t, update, apply); });
}

// ---------------------------------------------------------------- projections

// kBlocks consecutive 4-element Philox blocks of one row at a time: the
// counter arithmetic is plain integer code over arrays, which the compiler
// vectorises, and the Box-Muller transform uses Vectorized<float>'s log,
// sin and cos (on AVX2/AVX-512 SLEEF's 1-ulp versions, elsewhere the C
// library's, as ATen's own kernels).
constexpr int64_t kBlocks = 16;
static_assert(kBlocks % kWidth == 0 || kWidth % kBlocks == 0, "lane counts must nest");

#if defined(CPU_CAPABILITY_AVX512)
// The 32 x 32 -> 64-bit products of 16 lanes: the even and the odd lanes'
// (vpmuludq multiplies the low half of each 64-bit lane), halves put back
// in lane order.
void mul_hi_lo(__m512i a, __m512i k, __m512i& hi, __m512i& lo) {
  const __m512i even = _mm512_mul_epu32(a, k);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), k);
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
  lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
}
#elif defined(CPU_CAPABILITY_AVX2)
void mul_hi_lo(__m256i a, __m256i k, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, k);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), k);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}
#endif

// Philox-4x32's ten rounds on kBlocks counters (x, y, z, w) under the key
// (k0, k1), in place: whole vectors of counters on AVX2/AVX-512 (integer
// work, the same bits as philox4x32_10, which the baseline calls).
void philox_rounds(uint32_t* x, uint32_t* y, uint32_t* z, uint32_t* w, uint32_t k0, uint32_t k1) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#if defined(CPU_CAPABILITY_AVX512)
  using V = __m512i;
  constexpr int64_t lanes = 16;
  const auto load = [](const uint32_t* p) { return _mm512_loadu_si512(p); };
  const auto store = [](uint32_t* p, V v) { _mm512_storeu_si512(p, v); };
  const auto splat = [](uint32_t v) { return _mm512_set1_epi32(static_cast<int>(v)); };
  const auto xor3 = [](V a, V b, V c) { return _mm512_xor_si512(_mm512_xor_si512(a, b), c); };
#else
  using V = __m256i;
  constexpr int64_t lanes = 8;
  const auto load = [](const uint32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); };
  const auto store = [](uint32_t* p, V v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); };
  const auto splat = [](uint32_t v) { return _mm256_set1_epi32(static_cast<int>(v)); };
  const auto xor3 = [](V a, V b, V c) { return _mm256_xor_si256(_mm256_xor_si256(a, b), c); };
#endif
  static_assert(kBlocks % lanes == 0, "whole vectors of counters");
  const V m0 = splat(detail::kPhiloxMul0), m1 = splat(detail::kPhiloxMul1);
  for (int64_t l = 0; l < kBlocks; l += lanes) {
    V vx = load(x + l), vy = load(y + l), vz = load(z + l), vw = load(w + l);
    uint32_t a = k0, b = k1;
    for (int round = 0; round < 10; ++round) {
      V hi0, lo0, hi1, lo1;
      mul_hi_lo(vx, m0, hi0, lo0);
      mul_hi_lo(vz, m1, hi1, lo1);
      vx = xor3(hi1, vy, splat(a));
      vy = lo1;
      vz = xor3(hi0, vw, splat(b));
      vw = lo0;
      a += detail::kPhiloxWeyl0;
      b += detail::kPhiloxWeyl1;
    }
    store(x + l, vx);
    store(y + l, vy);
    store(z + l, vz);
    store(w + l, vw);
  }
#else
  for (int64_t l = 0; l < kBlocks; ++l) {
    const auto c = detail::philox4x32_10(detail::PhiloxBlock{x[l], y[l], z[l], w[l]}, k0, k1);
    x[l] = c.x;
    y[l] = c.y;
    z[l] = c.z;
    w[l] = c.w;
  }
#endif
}

void philox_row(float* out, int64_t row, int64_t cols, uint64_t seed, float scale) {
  const int64_t blocks = (cols + 3) / 4;
  alignas(64) uint32_t x[kBlocks], y[kBlocks], z[kBlocks], w[kBlocks];
  alignas(64) float u0[kBlocks], v0[kBlocks], u1[kBlocks], v1[kBlocks];
  alignas(64) float n0[kBlocks], n1[kBlocks], n2[kBlocks], n3[kBlocks];
  const uint32_t row_lo = static_cast<uint32_t>(row), row_hi = static_cast<uint32_t>(static_cast<uint64_t>(row) >> 32);
  for (int64_t b0 = 0; b0 < blocks; b0 += kBlocks) {
    for (int64_t l = 0; l < kBlocks; ++l) {
      const uint64_t block = static_cast<uint64_t>(b0 + l);
      x[l] = static_cast<uint32_t>(block);
      y[l] = static_cast<uint32_t>(block >> 32);
      z[l] = row_lo;
      w[l] = row_hi;
    }
    philox_rounds(x, y, z, w, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
    // cuRAND's Box-Muller inputs (philox.h): u = a 2^-32 + 2^-33, v = b 2^-32 2pi + 2^-32 pi.
    constexpr float kInv2Pow32 = 2.3283064e-10f;
    constexpr float kInv2Pow32TwoPi = 2.3283064e-10f * 6.2831855f;
    for (int64_t l = 0; l < kBlocks; ++l) {
      u0[l] = static_cast<float>(x[l]) * kInv2Pow32 + kInv2Pow32 / 2.0f;
      v0[l] = static_cast<float>(y[l]) * kInv2Pow32TwoPi + kInv2Pow32TwoPi / 2.0f;
      u1[l] = static_cast<float>(z[l]) * kInv2Pow32 + kInv2Pow32 / 2.0f;
      v1[l] = static_cast<float>(w[l]) * kInv2Pow32TwoPi + kInv2Pow32TwoPi / 2.0f;
    }
    const Vec minus_two(-2.f), s(scale);
    for (int64_t l = 0; l < kBlocks; l += kWidth) {
      const Vec r0 = (minus_two * Vec::loadu(u0 + l).log()).sqrt();
      const Vec a0 = Vec::loadu(v0 + l);
      (a0.sin() * r0 * s).store(n0 + l);
      (a0.cos() * r0 * s).store(n1 + l);
      const Vec r1 = (minus_two * Vec::loadu(u1 + l).log()).sqrt();
      const Vec a1 = Vec::loadu(v1 + l);
      (a1.sin() * r1 * s).store(n2 + l);
      (a1.cos() * r1 * s).store(n3 + l);
    }
    const int64_t in_row = std::min(kBlocks, blocks - b0);
    for (int64_t l = 0; l < in_row; ++l) {
      const int64_t col = (b0 + l) * 4;
      const float lanes[4] = {n0[l], n1[l], n2[l], n3[l]};
      const int64_t count = std::min<int64_t>(4, cols - col);
      for (int64_t k = 0; k < count; ++k) {
        out[col + k] = lanes[k];
      }
    }
  }
}

void philox_normal(float* out, int64_t rows, int64_t cols, uint64_t seed, float scale) {
  const int64_t grain = std::max<int64_t>(1, kChunk / std::max<int64_t>(cols, 1));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      philox_row(out + r * cols, r, cols, seed, scale);
    }
  });
}

void dequantize(const Moment& m, int64_t n, float* out) {
  at::parallel_for(0, n, kChunk, [&](int64_t i0, int64_t i1) { dequantize_range(m, i0, i1 - i0, out + i0); });
}

void quantize(const float* x, int64_t n, const Moment& m) {
  const int64_t blocks = detail::ceil_div(n, m.block);
  const auto lookup = detail::CodeLookup::of(m.code_map);
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t begin = b * m.block;
      const int64_t len = std::min(m.block, n - begin);
      quantize_block(x + begin, len, *lookup, m.codes + begin, m.absmax + b);
    }
  });
}

} // namespace

const Kernels& table() {
  static const Kernels k{
      &gradient_sums, &update_sq, &apply,   &normalize,  &sum_sq, &apply_from,
      &philox_normal, &dequantize, &quantize, C10_STRINGIZE(CPU_CAPABILITY)};
  return k;
}

} // namespace CPU_CAPABILITY
} // namespace flora::cpu
