#include "cpu/huge_pages.h"

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace flora::cpu {

void advise_huge_pages(const torch::Tensor& buffer) {
#if defined(MADV_HUGEPAGE)
  if (!buffer.defined() || !buffer.is_cpu()) {
    return;
  }
  // The interior of the buffer in whole 2 MiB pages (x86-64's and, with
  // 4 KiB base pages, AArch64's PMD size): the advice never reaches memory
  // the allocator may have given to someone else.
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const auto begin = reinterpret_cast<uintptr_t>(buffer.data_ptr());
  const auto end = begin + buffer.nbytes();
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t last = end & ~(kHuge - 1);
  if (last > first) {
    (void)madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
  }
#else
  (void)buffer;
#endif
}

} // namespace flora::cpu
