#pragma once

// The multi-tensor launch planner of the fused kernels (in the manner of
// apex's multi_tensor_apply and ATen's MultiTensorApply): a list of tensors,
// each cut into chunks of a size the kernel chooses, becomes as few launches
// as the kernel-parameter limit allows, one thread block per (tensor, chunk).
//
// The tensors are described to the kernel by value, in a TensorChunks table
// that travels as a kernel parameter (so nothing is copied from the host
// and a CUDA graph captures the table with the launch). A table holds up to
// kMaxTensors tensors with any number of chunks each: block b finds its
// tensor by a binary search over the tensors' first blocks, so the table's
// size depends on the number of tensors only, never on their sizes, and a
// tensor is never split between launches.
//
// Every chunk also has a slot, its position among the chunks of the whole
// list (all launches together): kernels write a chunk's partial result to
// its slot, and a later launch adds a tensor's slots in a fixed order. The
// slots, like the chunks, are a function of the tensors' sizes only, never
// of the device, so reductions group their terms alike on every GPU.

#include <c10/util/Exception.h>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

namespace flora::cuda {

/// What one launch's parameters may hold in all (the CUDA limit that every
/// device and driver accepts).
constexpr size_t kKernelParamBytes = 4096;

/// One launch's tensors: `Desc` is the kernel's description of a tensor.
template <typename Desc, int kMaxTensors>
struct TensorChunks {
  static constexpr int kCapacity = kMaxTensors;
  Desc tensor[kMaxTensors];
  int64_t first_slot[kMaxTensors]; // slot of the tensor's chunk 0 (over the whole list)
  int32_t first_block[kMaxTensors + 1]; // the tensor's chunk 0 in this launch; [count]: the launch's blocks
  int32_t index[kMaxTensors]; // the tensor's position in the operator's list
  int32_t count; // tensors in this launch
};

/// The most tensors per table for a kernel whose other parameters take
/// `other_bytes`: the table and they stay within kKernelParamBytes.
template <typename Desc>
constexpr int tensors_within(size_t other_bytes) {
  // Per tensor: its description, first_slot, first_block, index; once: the
  // last first_block, count, and up to 8 bytes of alignment padding.
  constexpr size_t per_tensor = sizeof(Desc) + sizeof(int64_t) + 2 * sizeof(int32_t);
  return static_cast<int>((kKernelParamBytes - other_bytes - 2 * sizeof(int32_t) - 8) / per_tensor);
}

/// Whether a launch of `Table` and `other_bytes` of other parameters is
/// within the limit (each kernel asserts it for its parameters).
template <typename Table>
constexpr bool within_param_limit(size_t other_bytes) {
  return sizeof(Table) + other_bytes <= kKernelParamBytes;
}

/// What thread block blockIdx.x works on.
struct BlockChunk {
  int entry; // the tensor's entry in the table
  int index; // its position in the operator's list
  int64_t chunk; // the chunk of that tensor
  int64_t slot; // the chunk's slot over the whole list
};

#if defined(__CUDACC__)
template <typename Desc, int kMaxTensors>
__device__ __forceinline__ BlockChunk block_chunk(const TensorChunks<Desc, kMaxTensors>& table) {
  const int32_t block = static_cast<int32_t>(blockIdx.x);
  // The last tensor whose first block is not after this one (tensors
  // without chunks have no entry, so first blocks strictly increase).
  int lo = 0, hi = table.count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (table.first_block[mid] <= block) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  const int64_t chunk = block - table.first_block[lo];
  return {lo, table.index[lo], chunk, table.first_slot[lo] + chunk};
}
#endif

/// The plan of one kernel over one list: add the tensors in list order,
/// then launch each table.
template <typename Desc, int kMaxTensors>
class ChunkPlan {
 public:
  using Table = TensorChunks<Desc, kMaxTensors>;

  /// Adds entry `index` of the operator's list, cut into `chunks` chunks (a
  /// tensor without chunks gets no block). Returns the slot of its chunk 0;
  /// its chunks have the slots that follow.
  int64_t add(int64_t index, const Desc& desc, int64_t chunks) {
    const int64_t first = slots_;
    TORCH_CHECK(chunks >= 0, "flora multi-tensor launch: negative chunk count ", chunks);
    if (chunks == 0) {
      return first;
    }
    TORCH_CHECK(
        chunks <= kMaxBlocks, "flora multi-tensor launch: tensor ", index, " needs ", chunks,
        " thread blocks, more than one launch allows (", kMaxBlocks, ")");
    if (tables_.empty() || tables_.back().count == kMaxTensors ||
        tables_.back().first_block[tables_.back().count] > kMaxBlocks - chunks) {
      tables_.emplace_back(); // value-initialised: no stray bytes in a kernel parameter
    }
    Table& t = tables_.back();
    const int32_t n = t.count;
    t.tensor[n] = desc;
    t.first_slot[n] = first;
    t.index[n] = static_cast<int32_t>(index);
    t.first_block[n + 1] = t.first_block[n] + static_cast<int32_t>(chunks);
    t.count = n + 1;
    slots_ += chunks;
    return first;
  }

  /// Chunks over the whole list (the slots a kernel's partials need).
  int64_t slots() const {
    return slots_;
  }

  /// launch(table, blocks) for each table, in list order.
  template <typename Launch>
  void launch_each(const Launch& launch) const {
    for (const Table& t : tables_) {
      launch(t, static_cast<unsigned>(t.first_block[t.count]));
    }
  }

 private:
  static constexpr int64_t kMaxBlocks = std::numeric_limits<int32_t>::max(); // gridDim.x's limit
  std::vector<Table> tables_;
  int64_t slots_ = 0;
};

} // namespace flora::cuda
