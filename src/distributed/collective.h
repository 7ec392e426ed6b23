#pragma once

// Starting and finishing c10d collectives, with failures reported as what
// was being exchanged and why such a failure usually happens (another rank
// exited or stalled), on top of the backend's own message.

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

namespace flora::distributed::detail {

/// Starts a sum all-reduce of one tensor, in place.
c10::intrusive_ptr<c10d::Work> start_sum(
    c10d::Backend& backend,
    torch::Tensor& tensor,
    std::optional<std::chrono::milliseconds> timeout,
    const std::string& what);

/// Waits for `work`; on failure throws naming `what` and this rank.
void finish(const c10::intrusive_ptr<c10d::Work>& work, int64_t rank, const std::string& what);

/// Broadcasts `tensor` from rank 0, in place, and waits.
void broadcast_from_zero(
    c10d::Backend& backend,
    torch::Tensor& tensor,
    std::optional<std::chrono::milliseconds> timeout,
    const std::string& what);

/// All-gathers one tensor of the same shape from every rank, and waits.
std::vector<torch::Tensor> all_gather(
    c10d::Backend& backend,
    const torch::Tensor& tensor,
    std::optional<std::chrono::milliseconds> timeout,
    const std::string& what);

} // namespace flora::distributed::detail
