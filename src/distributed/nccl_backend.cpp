// The one translation unit that includes NCCL's and CUDA's headers, to
// construct c10d::ProcessGroupNCCL (its code is in libtorch_cuda). Compiled
// only when flora is built with CUDA and nccl.h is found (CMake:
// FLORA_WITH_NCCL); no_nccl_backend.cpp stands in otherwise.

#include "backends.h"

#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include <c10/cuda/CUDAFunctions.h>
#include <c10/util/Exception.h>

namespace flora::distributed::detail {

bool nccl_compiled() {
  return true;
}

c10::intrusive_ptr<c10d::Backend> make_nccl_backend(
    const c10::intrusive_ptr<c10d::Store>& store,
    int64_t rank,
    int64_t size,
    int64_t local_rank,
    std::chrono::milliseconds timeout) {
  const auto devices = static_cast<int64_t>(c10::cuda::device_count());
  TORCH_CHECK(
      local_rank < devices, "flora::distributed: LOCAL_RANK=", local_rank, " but this machine has ", devices,
      " CUDA device(s); NCCL needs one device per process");
  // NCCL binds a communicator to the current device: make it this rank's.
  c10::cuda::set_device(static_cast<c10::DeviceIndex>(local_rank));
  auto options = c10d::ProcessGroupNCCL::Options::create();
  options->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(
      store, static_cast<int>(rank), static_cast<int>(size), std::move(options));
}

} // namespace flora::distributed::detail
