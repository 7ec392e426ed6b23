#include "collective.h"

#include <c10/util/Exception.h>

namespace flora::distributed::detail {

namespace {

[[noreturn]] void fail(const std::string& what, int64_t rank, const std::exception& e) {
  const char* message = e.what();
  if (const auto* error = dynamic_cast<const c10::Error*>(&e)) {
    message = error->what_without_backtrace();
  }
  TORCH_CHECK(
      false, "flora::distributed: ", what, " failed on rank ", rank,
      ". Another rank has probably exited, crashed or stalled past the timeout, or the ranks called different "
      "collectives. The backend said: ",
      message);
}

} // namespace

c10::intrusive_ptr<c10d::Work> start_sum(
    c10d::Backend& backend, torch::Tensor& tensor, std::optional<std::chrono::milliseconds> timeout,
    const std::string& what) {
  c10d::AllreduceOptions options;
  options.reduceOp = c10d::ReduceOp::SUM;
  if (timeout.has_value()) {
    options.timeout = *timeout;
  }
  std::vector<torch::Tensor> tensors{tensor};
  try {
    return backend.allreduce(tensors, options);
  } catch (const std::exception& e) {
    fail(what, backend.getRank(), e);
  }
}

void finish(const c10::intrusive_ptr<c10d::Work>& work, int64_t rank, const std::string& what) {
  try {
    work->wait();
  } catch (const std::exception& e) {
    fail(what, rank, e);
  }
}

void broadcast_from_zero(
    c10d::Backend& backend, torch::Tensor& tensor, std::optional<std::chrono::milliseconds> timeout,
    const std::string& what) {
  c10d::BroadcastOptions options;
  options.rootRank = 0;
  options.rootTensor = 0;
  if (timeout.has_value()) {
    options.timeout = *timeout;
  }
  std::vector<torch::Tensor> tensors{tensor};
  try {
    backend.broadcast(tensors, options)->wait();
  } catch (const std::exception& e) {
    fail(what, backend.getRank(), e);
  }
}

std::vector<torch::Tensor> all_gather(
    c10d::Backend& backend, const torch::Tensor& tensor, std::optional<std::chrono::milliseconds> timeout,
    const std::string& what) {
  c10d::AllgatherOptions options;
  if (timeout.has_value()) {
    options.timeout = *timeout;
  }
  std::vector<torch::Tensor> inputs{tensor};
  std::vector<std::vector<torch::Tensor>> outputs(1);
  for (int r = 0; r < backend.getSize(); ++r) {
    outputs[0].push_back(torch::empty_like(tensor));
  }
  try {
    backend.allgather(outputs, inputs, options)->wait();
  } catch (const std::exception& e) {
    fail(what, backend.getRank(), e);
  }
  return outputs[0];
}

} // namespace flora::distributed::detail
