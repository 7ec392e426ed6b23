// FloraParamState: serialization, comparison and byte counts, all through
// the one field table (state_fields.h); and the state a parameter starts
// with, which is also what checkpoint validation expects.

#include "archive_values.h"
#include "checkpoint_format.h"
#include "param_state.h"
#include "state_fields.h"

#include <flora/quantization.h>

#include <torch/serialize/archive.h>
#include <torch/torch.h>

#include <sstream>

namespace flora {

namespace detail {

namespace {

// A moment: float32 zeros, or 8-bit codes (0) and one float32 absmax (0) per block.
void zero_moment(
    torch::Tensor& value, torch::Tensor& absmax, torch::IntArrayRef shape, const ParamLayout& layout,
    const FloraOptions& options, const torch::TensorOptions& fp32) {
  if (!layout.quantized) {
    value = torch::zeros(shape, fp32);
    return;
  }
  value = torch::zeros(shape, fp32.dtype(torch::kUInt8));
  absmax = torch::zeros(
      {quantization_blocks(c10::multiply_integers(shape), options.quantization_block_size())}, fp32);
}

} // namespace

FloraParamState initial_state(
    torch::IntArrayRef shape, const FloraOptions& options, const torch::TensorOptions& tensor_options) {
  const auto fp32 = tensor_options.dtype(torch::kFloat);
  const auto layout = ParamLayout::of(shape, options);
  FloraParamState state;
  state.rms(torch::zeros({}, fp32));
  if (layout.momentum) {
    zero_moment(
        state.exp_avg(), state.exp_avg_absmax(), layout.momentum_shape(shape, options), layout, options, fp32);
  }
  if (layout.factored) {
    state.exp_avg_sq_row(torch::zeros({shape[0]}, fp32));
    state.exp_avg_sq_col(torch::zeros({shape[1]}, fp32));
  } else {
    zero_moment(state.exp_avg_sq(), state.exp_avg_sq_absmax(), shape, layout, options, fp32);
  }
  return state;
}

void read_state(torch::serialize::InputArchive& archive, int64_t format, FloraParamState& out) {
  FloraParamState s;
  for_each_state_field(
      [&](const FieldInfo& info, auto& field) {
        using T = std::decay_t<decltype(field)>;
        c10::IValue value;
        const bool found = archive.try_read(info.key, value);
        if constexpr (std::is_same_v<T, torch::Tensor>) {
          if (found) { // absent: undefined, as torch's optimizers write it
            TORCH_CHECK(value.isTensor(), "FloraParamState: '", info.key, "' in the checkpoint is not a tensor");
            field = value.toTensor();
          }
        } else {
          TORCH_CHECK(
              found || info.since > format, "FloraParamState: the checkpoint (format ", format, ") has no '", info.key,
              "' (not a flora::Flora checkpoint?)");
          if (found) {
            from_ivalue(value, field, "FloraParamState", info.key);
          }
        }
      },
      s);
  out = std::move(s);
}

std::string group_name(size_t group) {
  return "param group " + std::to_string(group);
}

std::string describe_parameter(int64_t index, size_t group, size_t position, const torch::Tensor& param) {
  std::ostringstream out;
  out << "parameter " << index << " (" << group_name(group) << ", position " << position << ", shape "
      << param.sizes() << ")";
  return out.str();
}

} // namespace detail

void FloraParamState::serialize(torch::serialize::OutputArchive& archive) const {
  // Capturable steps keep the counts on the device: write those.
  FloraParamState current = *this;
  if (counters().defined()) {
    const auto host = counters().cpu();
    current.step(host.data_ptr<int64_t>()[0]);
    current.seed(host.data_ptr<int64_t>()[1]);
  }
  detail::for_each_state_field(
      [&](const detail::FieldInfo& info, const auto& field) {
        if constexpr (std::is_same_v<std::decay_t<decltype(field)>, torch::Tensor>) {
          if (field.defined()) {
            archive.write(info.key, field);
          }
        } else {
          archive.write(info.key, detail::to_ivalue(field));
        }
      },
      current);
}

void FloraParamState::serialize(torch::serialize::InputArchive& archive) {
  detail::read_state(archive, detail::kCheckpointFormat, *this);
}

bool operator==(const FloraParamState& lhs, const FloraParamState& rhs) {
  bool equal = true;
  detail::for_each_state_field(
      [&](const detail::FieldInfo&, const auto& a, const auto& b) {
        if constexpr (std::is_same_v<std::decay_t<decltype(a)>, torch::Tensor>) {
          equal = equal && a.defined() == b.defined() &&
              (!a.defined() ||
               (a.sizes() == b.sizes() && a.dtype() == b.dtype() && torch::equal(a.cpu(), b.cpu())));
        } else {
          equal = equal && a == b;
        }
      },
      lhs, rhs);
  return equal;
}

int64_t FloraParamState::nbytes() const {
  int64_t total = 0;
  detail::for_each_state_tensor(
      [&](const detail::FieldInfo&, const torch::Tensor& t) { total += detail::tensor_bytes(t); }, *this);
  return total;
}

} // namespace flora
