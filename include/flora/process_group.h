#pragma once

// Starting a data-parallel job the way PyTorch users start one. The launcher
// is the torch wheel's own torchrun:
//
//   torchrun --no-python --nproc-per-node 2 ./train --my-flags
//
// which starts the processes and gives each RANK, WORLD_SIZE, LOCAL_RANK,
// MASTER_ADDR and MASTER_PORT. init_from_env() reads them, connects to the
// c10d::TCPStore at MASTER_ADDR:MASTER_PORT and builds a c10d::ProcessGroup
// from the backends compiled into libtorch: Gloo for CPU tensors (and CUDA
// tensors, through host copies) and NCCL for CUDA tensors.
//
//   auto world = flora::distributed::init_from_env();
//   model->to(world.device);                      // cuda:LOCAL_RANK with NCCL
//   flora::distributed::GradientSynchronizer sync(model->parameters(), world.process_group);
//
// Under torchrun's agent store (TORCHELASTIC_USE_AGENT_STORE=True, as
// torchrun sets it) every rank is a client of the store the launcher hosts;
// otherwise rank 0 hosts it, as torch.distributed does.

#include <flora/export.h>
#include <flora/version.h>

#if !FLORA_WITH_DISTRIBUTED
#error "flora was built without data-parallel support (FLORA_DISTRIBUTED=OFF, or LibTorch without c10d)"
#endif

#include <torch/arg.h>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/types.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>

namespace flora::distributed {

enum class BackendKind {
  /// NCCL for CUDA tensors (with Gloo for CPU tensors) when flora has NCCL
  /// support and CUDA is available; Gloo otherwise.
  automatic,
  /// Gloo for CPU and CUDA tensors.
  gloo,
  /// NCCL for CUDA tensors, Gloo for CPU tensors (PyTorch's "cpu:gloo,cuda:nccl").
  nccl,
};

FLORA_API std::string to_string(BackendKind kind);

struct FLORA_API InitOptions {
  TORCH_ARG(BackendKind, backend) = BackendKind::automatic;
  /// Limit on connecting to the store and on every collective: a rank that
  /// exits or stalls makes the others throw after at most this long instead
  /// of waiting for ever. PyTorch's default (30 minutes).
  TORCH_ARG(std::chrono::milliseconds, timeout) = std::chrono::minutes(30);
  /// Gloo: the hostname or address to bind to. Unset: the interface named by
  /// GLOO_SOCKET_IFNAME if set, else this machine's hostname if it resolves,
  /// else the loopback interface (PyTorch's choice).
  TORCH_ARG(std::optional<std::string>, gloo_hostname);
};

/// What the launcher told this process.
struct FLORA_API LaunchEnvironment {
  int64_t rank = 0;
  int64_t world_size = 1;
  int64_t local_rank = 0;
  std::string master_addr;
  int64_t master_port = 0;
  /// TORCHELASTIC_USE_AGENT_STORE=True: the launcher hosts the store.
  bool agent_store = false;
  /// TORCHELASTIC_RESTART_COUNT (0 when unset): keeps the keys of a
  /// restarted job apart from those of its earlier attempts.
  int64_t restart_count = 0;
};

/// Validates the launcher's variables given as name -> value (only the
/// variables that are set). Throws naming the variable that is missing or
/// wrong, with its value.
FLORA_API LaunchEnvironment parse_launch_environment(const std::map<std::string, std::string>& variables);
/// parse_launch_environment() of this process's environment.
FLORA_API LaunchEnvironment read_launch_environment();

/// This process's place in the job.
struct FLORA_API World {
  c10::intrusive_ptr<c10d::ProcessGroup> process_group;
  c10::intrusive_ptr<c10d::Store> store;
  int64_t rank = 0;
  int64_t size = 1;
  int64_t local_rank = 0;
  /// Where this rank's model belongs: cuda:LOCAL_RANK with NCCL (made the
  /// current CUDA device), the CPU with Gloo.
  torch::Device device = torch::kCPU;
  BackendKind backend = BackendKind::gloo;
};

/// Reads the launcher's variables, connects to the store and builds the
/// process group (a collective: every rank must call it).
FLORA_API World init_from_env(InitOptions options = {});

/// Builds the process group over an existing store (a collective: every
/// rank calls it with the same options, and makes its groups in the same
/// order, which keeps their keys apart): Gloo for CPU tensors, and NCCL
/// (cuda:`local_rank`, made the current device) or Gloo for CUDA tensors,
/// per options.backend() (automatic resolved as in init_from_env).
FLORA_API c10::intrusive_ptr<c10d::ProcessGroup> make_process_group(
    const c10::intrusive_ptr<c10d::Store>& store,
    int64_t rank,
    int64_t size,
    int64_t local_rank,
    const InitOptions& options = {});

/// The backend that `kind` means here: automatic is NCCL when flora has NCCL
/// support and CUDA is available, else Gloo.
FLORA_API BackendKind resolve_backend(BackendKind kind);

/// Whether this build of flora can construct NCCL process groups.
FLORA_API bool nccl_available();

} // namespace flora::distributed
