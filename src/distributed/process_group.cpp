// The store and the process group of a job: torch.distributed's env://
// start-up (torch/distributed/rendezvous.py) for C++ programs.

#include <flora/process_group.h>

#include "backends.h"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/cuda.h>

#include <c10/util/Exception.h>

#include <atomic>

namespace flora::distributed {

namespace detail {

bool cuda_usable() {
  return torch::cuda::is_available();
}

} // namespace detail

std::string to_string(BackendKind kind) {
  switch (kind) {
    case BackendKind::automatic:
      return "automatic";
    case BackendKind::gloo:
      return "gloo";
    case BackendKind::nccl:
      return "nccl";
  }
  return "unknown";
}

bool nccl_available() {
  return detail::nccl_compiled();
}

BackendKind resolve_backend(BackendKind kind) {
  if (kind != BackendKind::automatic) {
    return kind;
  }
  return detail::nccl_compiled() && detail::cuda_usable() ? BackendKind::nccl : BackendKind::gloo;
}

c10::intrusive_ptr<c10d::ProcessGroup> make_process_group(
    const c10::intrusive_ptr<c10d::Store>& store, int64_t rank, int64_t size, int64_t local_rank,
    const InitOptions& options) {
  TORCH_CHECK(store, "flora::distributed::make_process_group: the store is null");
  TORCH_CHECK(size >= 1, "flora::distributed::make_process_group: size must be at least 1, got ", size);
  TORCH_CHECK(
      rank >= 0 && rank < size, "flora::distributed::make_process_group: rank ", rank, " is not in [0, ", size, ")");
  TORCH_CHECK(
      local_rank >= 0, "flora::distributed::make_process_group: local_rank must not be negative, got ", local_rank);
  TORCH_CHECK(
      options.timeout().count() > 0, "flora::distributed: InitOptions::timeout must be positive, got ",
      options.timeout().count(), " ms");
  const BackendKind backend = resolve_backend(options.backend());
  // Each group's and each backend's keys under their own prefix, as
  // torch.distributed keeps those of its groups apart: the n-th group this
  // process makes (every rank makes its groups in the same order).
  static std::atomic<int64_t> groups{0};
  const auto keys = c10::make_intrusive<c10d::PrefixStore>("group_" + std::to_string(groups++), store);
  auto group = c10::make_intrusive<c10d::ProcessGroup>(keys, static_cast<int>(rank), static_cast<int>(size));
  // Gloo in both configurations: it serves CPU tensors (a CPU model, the
  // synchroniser's agreement check on a CPU model), as in PyTorch's
  // "cpu:gloo,cuda:nccl".
  auto gloo = detail::make_gloo_backend(
      c10::make_intrusive<c10d::PrefixStore>("gloo", keys), rank, size, options.timeout(), options.gloo_hostname());
  group->setBackend(c10::DeviceType::CPU, c10d::ProcessGroup::BackendType::GLOO, gloo);
  if (backend == BackendKind::nccl) {
    TORCH_CHECK(
        detail::cuda_usable(), "flora::distributed: the NCCL backend needs CUDA, and no CUDA device is available");
    auto nccl = detail::make_nccl_backend(
        c10::make_intrusive<c10d::PrefixStore>("nccl", keys), rank, size, local_rank, options.timeout());
    group->setBackend(c10::DeviceType::CUDA, c10d::ProcessGroup::BackendType::NCCL, nccl);
    group->setDefaultBackend(c10d::ProcessGroup::BackendType::NCCL);
  } else {
    // ProcessGroupGloo reduces CUDA tensors too, through host copies.
    group->setBackend(c10::DeviceType::CUDA, c10d::ProcessGroup::BackendType::GLOO, gloo);
    group->setDefaultBackend(c10d::ProcessGroup::BackendType::GLOO);
  }
  return group;
}

namespace {

c10::intrusive_ptr<c10d::Store> connect_store(const LaunchEnvironment& env, std::chrono::milliseconds timeout) {
  c10d::TCPStoreOptions store_options;
  store_options.port = static_cast<std::uint16_t>(env.master_port);
  store_options.timeout = timeout;
  store_options.numWorkers = static_cast<std::size_t>(env.world_size);
  if (env.agent_store) {
    // torchrun's agent hosts the store: every rank is a client.
    store_options.isServer = false;
  } else {
    store_options.isServer = env.rank == 0;
    store_options.multiTenant = true;
  }
  c10::intrusive_ptr<c10d::Store> store;
  try {
    store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, store_options);
  } catch (const std::exception& e) {
    TORCH_CHECK(
        false, "flora::distributed: rank ", env.rank, " could not ", store_options.isServer ? "host" : "connect to",
        " the store at MASTER_ADDR:MASTER_PORT = ", env.master_addr, ":", env.master_port, " within ",
        timeout.count(), " ms: ", e.what());
  }
  // One namespace per attempt of an elastic job, as torch.distributed does,
  // so that a restarted job never reads its earlier attempt's keys.
  return c10::make_intrusive<c10d::PrefixStore>("flora/attempt_" + std::to_string(env.restart_count), store);
}

} // namespace

World init_from_env(InitOptions options) {
  const LaunchEnvironment env = read_launch_environment();
  TORCH_CHECK(
      options.timeout().count() > 0, "flora::distributed: InitOptions::timeout must be positive, got ",
      options.timeout().count(), " ms");
  World world;
  world.rank = env.rank;
  world.size = env.world_size;
  world.local_rank = env.local_rank;
  world.backend = resolve_backend(options.backend());
  options.backend(world.backend);
  world.store = connect_store(env, options.timeout());
  world.process_group = make_process_group(world.store, env.rank, env.world_size, env.local_rank, options);
  if (world.backend == BackendKind::nccl) {
    world.device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(env.local_rank));
  }
  return world;
}

} // namespace flora::distributed
