// The variables a launcher (torchrun) gives every process, checked one by
// one so that a missing or malformed one is named with its value.

#include <flora/process_group.h>

#include <c10/util/Exception.h>

#include <cerrno>
#include <cstdlib>

namespace flora::distributed {

namespace {

constexpr const char* kLauncherHint =
    " (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT for every process it starts: "
    "torchrun --no-python --nproc-per-node N <program>; when starting processes by hand, set all five)";

const std::string* lookup(const std::map<std::string, std::string>& variables, const std::string& name) {
  const auto it = variables.find(name);
  return it == variables.end() ? nullptr : &it->second;
}

const std::string& required(const std::map<std::string, std::string>& variables, const std::string& name) {
  const std::string* value = lookup(variables, name);
  TORCH_CHECK(value != nullptr, "flora::distributed: the environment variable ", name, " is not set", kLauncherHint);
  TORCH_CHECK(!value->empty(), "flora::distributed: the environment variable ", name, " is empty", kLauncherHint);
  return *value;
}

// The whole value must be a decimal integer (std::stoll would accept "3abc").
int64_t integer(const std::string& name, const std::string& value) {
  errno = 0;
  char* end = nullptr;
  const long long parsed = std::strtoll(value.c_str(), &end, 10);
  TORCH_CHECK(
      !value.empty() && end == value.c_str() + value.size() && errno == 0, "flora::distributed: ", name, "='", value,
      "' is not an integer");
  return parsed;
}

} // namespace

LaunchEnvironment parse_launch_environment(const std::map<std::string, std::string>& variables) {
  LaunchEnvironment env;
  env.world_size = integer("WORLD_SIZE", required(variables, "WORLD_SIZE"));
  TORCH_CHECK(env.world_size >= 1, "flora::distributed: WORLD_SIZE=", env.world_size, " must be at least 1");
  env.rank = integer("RANK", required(variables, "RANK"));
  TORCH_CHECK(
      env.rank >= 0 && env.rank < env.world_size, "flora::distributed: RANK=", env.rank,
      " must be in [0, WORLD_SIZE) = [0, ", env.world_size, ")");
  env.local_rank = integer("LOCAL_RANK", required(variables, "LOCAL_RANK"));
  TORCH_CHECK(
      env.local_rank >= 0 && env.local_rank < env.world_size, "flora::distributed: LOCAL_RANK=", env.local_rank,
      " must be in [0, WORLD_SIZE) = [0, ", env.world_size, ")");
  if (const std::string* local_world = lookup(variables, "LOCAL_WORLD_SIZE")) {
    const int64_t local_size = integer("LOCAL_WORLD_SIZE", *local_world);
    TORCH_CHECK(
        env.local_rank < local_size, "flora::distributed: LOCAL_RANK=", env.local_rank,
        " must be below LOCAL_WORLD_SIZE=", local_size);
  }
  env.master_addr = required(variables, "MASTER_ADDR");
  env.master_port = integer("MASTER_PORT", required(variables, "MASTER_PORT"));
  TORCH_CHECK(
      env.master_port >= 1 && env.master_port <= 65535, "flora::distributed: MASTER_PORT=", env.master_port,
      " is not a TCP port (1-65535)");
  if (const std::string* agent = lookup(variables, "TORCHELASTIC_USE_AGENT_STORE")) {
    // torch.distributed compares with str(True); anything else means no.
    env.agent_store = *agent == "True";
  }
  if (const std::string* restarts = lookup(variables, "TORCHELASTIC_RESTART_COUNT")) {
    env.restart_count = integer("TORCHELASTIC_RESTART_COUNT", *restarts);
    TORCH_CHECK(
        env.restart_count >= 0, "flora::distributed: TORCHELASTIC_RESTART_COUNT=", env.restart_count,
        " must not be negative");
  }
  return env;
}

LaunchEnvironment read_launch_environment() {
  std::map<std::string, std::string> variables;
  for (const char* name :
       {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
        "TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_RESTART_COUNT"}) {
    if (const char* value = std::getenv(name)) {
      variables.emplace(name, value);
    }
  }
  return parse_launch_environment(variables);
}

} // namespace flora::distributed
