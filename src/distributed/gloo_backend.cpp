// The one translation unit that includes Gloo's headers (vendored in
// third_party/gloo, see its README): c10d::ProcessGroupGloo's declaration
// needs them, its code is in libtorch_cpu.

#include "backends.h"

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include <c10/util/Exception.h>

#include <cstdlib>
#include <sstream>

namespace flora::distributed::detail {

namespace {

// GLOO_SOCKET_IFNAME, as PyTorch reads it: a comma-separated list of
// interfaces, one Gloo device each.
std::vector<std::string> socket_interfaces() {
  std::vector<std::string> names;
  const char* value = std::getenv("GLOO_SOCKET_IFNAME");
  if (value == nullptr) {
    return names;
  }
  std::stringstream list(value);
  std::string name;
  while (std::getline(list, name, ',')) {
    if (!name.empty()) {
      names.push_back(name);
    }
  }
  TORCH_CHECK(!names.empty(), "GLOO_SOCKET_IFNAME is set but names no interface: '", value, "'");
  return names;
}

} // namespace

c10::intrusive_ptr<c10d::Backend> make_gloo_backend(
    const c10::intrusive_ptr<c10d::Store>& store,
    int64_t rank,
    int64_t size,
    std::chrono::milliseconds timeout,
    const std::optional<std::string>& hostname) {
  auto options = c10d::ProcessGroupGloo::Options::create(timeout);
  if (hostname.has_value()) {
    options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(*hostname));
  } else {
    for (const auto& name : socket_interfaces()) {
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(name));
    }
    if (options->devices.empty()) {
      options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
  }
  return c10::make_intrusive<c10d::ProcessGroupGloo>(
      store, static_cast<int>(rank), static_cast<int>(size), std::move(options));
}

} // namespace flora::distributed::detail
