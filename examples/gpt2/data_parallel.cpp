#include "data_parallel.h"

#include "cli.h"

#include <c10/util/Exception.h>
#include <torch/torch.h>

#include <cstdlib>
#include <cstring>

#if FLORA_WITH_DISTRIBUTED
#include <flora/process_group.h>
#include <torch/csrc/distributed/c10d/Types.hpp>
#endif

namespace flora::gpt2 {

std::optional<Launch> launch_from_env() {
  if (std::getenv("RANK") == nullptr && std::getenv("WORLD_SIZE") == nullptr) {
    return std::nullopt;
  }
#if FLORA_WITH_DISTRIBUTED
  try {
    const auto env = flora::distributed::read_launch_environment();
    return Launch{env.rank, env.world_size, env.local_rank};
  } catch (const c10::Error& e) {
    // The library's message names the variable and its value.
    throw UsageError(std::string("data-parallel launch: ") + e.what_without_backtrace());
  }
#else
  throw UsageError(
      "RANK/WORLD_SIZE are set (a data-parallel launch), but this build of flora has no data-parallel support "
      "(FLORA_DISTRIBUTED=OFF, or LibTorch without c10d)");
#endif
}

uint64_t tensor_digest(const std::vector<torch::Tensor>& tensors) {
  uint64_t h = 1469598103934665603ull; // FNV-1a 64
  auto mix = [&h](const void* data, size_t n) {
    const auto* bytes = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < n; ++i) {
      h ^= bytes[i];
      h *= 1099511628211ull;
    }
  };
  for (const auto& t : tensors) {
    const auto c = t.detach().to(torch::kCPU).contiguous();
    const auto dtype = static_cast<int64_t>(c.scalar_type());
    mix(&dtype, sizeof(dtype));
    for (const int64_t d : c.sizes()) {
      mix(&d, sizeof(d));
    }
    mix(c.data_ptr(), c.nbytes());
  }
  return h;
}

#if FLORA_WITH_DISTRIBUTED

struct DataParallel::State {
  flora::distributed::World world;
};

DataParallel::DataParallel() : state_(std::make_unique<State>()) {}
DataParallel::~DataParallel() = default;

std::unique_ptr<DataParallel> DataParallel::join(const Launch& launch, const torch::Device& requested) {
  std::unique_ptr<DataParallel> dp(new DataParallel());
  flora::distributed::InitOptions options;
  // CPU training exchanges CPU tensors: Gloo. CUDA training: NCCL when flora
  // has it (automatic), with Gloo for the few CPU scalars exchanged here.
  options.backend(requested.is_cpu() ? flora::distributed::BackendKind::gloo
                                     : flora::distributed::BackendKind::automatic);
  dp->state_->world = flora::distributed::init_from_env(options);
  TORCH_CHECK(
      dp->state_->world.rank == launch.rank && dp->state_->world.size == launch.world_size,
      "the process group's rank/size (", dp->state_->world.rank, "/", dp->state_->world.size,
      ") differ from the launcher's (", launch.rank, "/", launch.world_size, ")");
  return dp;
}

int64_t DataParallel::rank() const {
  return state_->world.rank;
}
int64_t DataParallel::size() const {
  return state_->world.size;
}
torch::Device DataParallel::device() const {
  return state_->world.device;
}
std::string DataParallel::backend() const {
  return flora::distributed::to_string(state_->world.backend);
}

flora::distributed::Group DataParallel::group() const {
  return flora::distributed::Group(state_->world.process_group);
}

namespace {

// All-reduces a CPU tensor in place through the group's CPU backend (Gloo),
// whatever the training device: these are a few scalars per step.
void all_reduce(const flora::distributed::World& world, torch::Tensor& t, c10d::ReduceOp::RedOpType op) {
  std::vector<torch::Tensor> tensors = {t};
  c10d::AllreduceOptions options;
  options.reduceOp = c10d::ReduceOp(op);
  world.process_group->getBackend(c10::DeviceType::CPU)->allreduce(tensors, options)->wait();
}

} // namespace

double DataParallel::mean(double value) const {
  auto t = torch::full({1}, value, torch::kDouble);
  all_reduce(state_->world, t, c10d::ReduceOp::SUM);
  return t.item<double>() / static_cast<double>(size());
}

bool DataParallel::all_equal(uint64_t value) const {
  int64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(bits));
  auto lo = torch::full({1}, bits, torch::kLong);
  auto hi = lo.clone();
  all_reduce(state_->world, lo, c10d::ReduceOp::MIN);
  all_reduce(state_->world, hi, c10d::ReduceOp::MAX);
  return lo.item<int64_t>() == hi.item<int64_t>();
}

#else

struct DataParallel::State {};
DataParallel::DataParallel() : state_(std::make_unique<State>()) {}
DataParallel::~DataParallel() = default;
std::unique_ptr<DataParallel> DataParallel::join(const Launch&, const torch::Device&) {
  TORCH_CHECK(false, "this build of flora has no data-parallel support");
}
int64_t DataParallel::rank() const {
  return 0;
}
int64_t DataParallel::size() const {
  return 1;
}
torch::Device DataParallel::device() const {
  return torch::kCPU;
}
std::string DataParallel::backend() const {
  return "none";
}
double DataParallel::mean(double value) const {
  return value;
}
bool DataParallel::all_equal(uint64_t) const {
  return true;
}

#endif

} // namespace flora::gpt2
