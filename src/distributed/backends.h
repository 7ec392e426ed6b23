#pragma once

// Construction of the c10d backends compiled into libtorch. Each lives in its
// own translation unit: gloo_backend.cpp is the only one that sees Gloo's
// headers (vendored in third_party/gloo), nccl_backend.cpp the only one that
// sees NCCL's and CUDA's, and the latter is compiled only when both exist.

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

namespace flora::distributed::detail {

/// A c10d::ProcessGroupGloo (a collective: connects to every rank). Binds to
/// `hostname` if given, else to the interface in GLOO_SOCKET_IFNAME if set,
/// else as PyTorch's default device does.
c10::intrusive_ptr<c10d::Backend> make_gloo_backend(
    const c10::intrusive_ptr<c10d::Store>& store,
    int64_t rank,
    int64_t size,
    std::chrono::milliseconds timeout,
    const std::optional<std::string>& hostname);

/// A c10d::ProcessGroupNCCL for cuda:`local_rank`, made the current device.
/// Throws when flora was built without NCCL.
c10::intrusive_ptr<c10d::Backend> make_nccl_backend(
    const c10::intrusive_ptr<c10d::Store>& store,
    int64_t rank,
    int64_t size,
    int64_t local_rank,
    std::chrono::milliseconds timeout);

/// Whether nccl_backend.cpp was compiled.
bool nccl_compiled();

/// Whether CUDA is usable here (through the CUDA hooks, without CUDA headers).
bool cuda_usable();

} // namespace flora::distributed::detail
