// Stands in for nccl_backend.cpp in builds without NCCL (no CUDA toolkit or
// no nccl.h at build time): asking for NCCL says so.

#include "backends.h"

#include <c10/util/Exception.h>

namespace flora::distributed::detail {

bool nccl_compiled() {
  return false;
}

c10::intrusive_ptr<c10d::Backend> make_nccl_backend(
    const c10::intrusive_ptr<c10d::Store>&, int64_t, int64_t, int64_t, std::chrono::milliseconds) {
  TORCH_CHECK(
      false, "flora::distributed: this build of flora has no NCCL support (it was built without the CUDA toolkit or "
             "without nccl.h); use BackendKind::gloo, or rebuild flora with CUDA");
}

} // namespace flora::distributed::detail
