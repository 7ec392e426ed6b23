#include "archive_values.h"
#include "checkpoint_format.h"
#include "option_fields.h"

#include <flora/options.h>

#include <torch/optim/serialize.h>
#include <torch/serialize/archive.h>

#include <torch/torch.h>

#include <cmath>

namespace flora {

FloraOptions::FloraOptions(std::optional<double> lr) : lr_(lr) {}

FloraOptions& FloraOptions::lr(std::optional<double> value) {
  lr_ = value;
  for (auto& t : device_lrs_.tensors) {
    t.fill_(value.value_or(0.0)); // a kernel with the value as argument: no synchronisation
  }
  return *this;
}

torch::Tensor FloraOptions::device_lr(const torch::Device& device) const {
  for (const auto& t : device_lrs_.tensors) {
    if (t.device() == device) {
      return t;
    }
  }
  device_lrs_.tensors.push_back(
      torch::full({1}, lr_.value_or(0.0), torch::TensorOptions().dtype(torch::kDouble).device(device)));
  return device_lrs_.tensors.back();
}

bool operator==(const FloraOptions& lhs, const FloraOptions& rhs) {
  bool equal = true;
  detail::for_each_option([&](const detail::FieldInfo&, const auto& a, const auto& b) { equal = equal && a == b; }, lhs, rhs);
  return equal;
}

void FloraOptions::serialize(torch::serialize::OutputArchive& archive) const {
  detail::for_each_option(
      [&](const detail::FieldInfo& info, const auto& field) { archive.write(info.key, detail::to_ivalue(field)); },
      *this);
}

void FloraOptions::serialize(torch::serialize::InputArchive& archive) {
  detail::read_options(archive, detail::kCheckpointFormat, *this);
}

namespace detail {

void read_options(torch::serialize::InputArchive& archive, int64_t format, FloraOptions& out) {
  // Read everything first, so that a malformed archive leaves `out` as is.
  FloraOptions o;
  for_each_option(
      [&](const FieldInfo& info, auto& field) {
        c10::IValue value;
        if (archive.try_read(info.key, value)) {
          from_ivalue(value, field, "FloraOptions", info.key);
        } else {
          TORCH_CHECK(
              info.since > format, "FloraOptions: the checkpoint (format ", format, ") has no '", info.key,
              "' (not a flora::Flora checkpoint?)");
        }
      },
      o);
  if (format < 4) {
    o.quantization_min_size(0); // what those versions did, whatever today's default
  }
  out = o;
}

} // namespace detail

double FloraOptions::get_lr() const {
  TORCH_CHECK(
      lr().has_value(),
      "FloraOptions::get_lr: lr is not set (relative_step=", relative_step(),
      "); with relative_step the step size is computed from the step count, "
      "so there is no learning rate to read or schedule");
  return *lr();
}

void FloraOptions::set_lr(const double lr) {
  TORCH_CHECK(
      !relative_step(),
      "FloraOptions::set_lr(", lr, "): not allowed with relative_step=true, "
      "which computes its own step size");
  TORCH_CHECK(std::isfinite(lr) && lr > 0, "FloraOptions::set_lr: lr must be positive and finite, got ", lr);
  this->lr(lr);
}

void validate(const FloraOptions& o, const char* where) {
  TORCH_CHECK(
      !(o.lr().has_value() && o.relative_step()),
      where, ": cannot combine a manual lr (", o.lr().value_or(0.0),
      ") with relative_step=true");
  TORCH_CHECK(
      !o.warmup_init() || o.relative_step(),
      where, ": warmup_init=true requires relative_step=true");
  TORCH_CHECK(
      o.lr().has_value() || o.relative_step(),
      where, ": lr is not set; give a learning rate (FloraOptions(1e-3)) or set relative_step(true)");
  if (o.lr().has_value()) {
    const double lr = *o.lr();
    TORCH_CHECK(std::isfinite(lr) && lr > 0, where, ": lr must be positive and finite, got ", lr);
  }
  if (o.rank().has_value()) {
    TORCH_CHECK(*o.rank() > 0, where, ": rank must be positive when given, got ", *o.rank());
  }
  TORCH_CHECK(o.kappa() > 0, where, ": kappa must be positive, got ", o.kappa());
  const auto [eps1, eps2] = o.eps();
  TORCH_CHECK(std::isfinite(eps1) && eps1 >= 0, where, ": eps[0] (eps1) must be non-negative and finite, got ", eps1);
  TORCH_CHECK(std::isfinite(eps2) && eps2 >= 0, where, ": eps[1] (eps2) must be non-negative and finite, got ", eps2);
  TORCH_CHECK(
      std::isfinite(o.clip_threshold()) && o.clip_threshold() > 0,
      where, ": clip_threshold must be positive and finite, got ", o.clip_threshold());
  TORCH_CHECK(
      std::isfinite(o.decay_rate()) && o.decay_rate() <= 0,
      where, ": decay_rate must be <= 0 (beta2_t = 1 - step^decay_rate), got ", o.decay_rate());
  if (o.beta1().has_value()) {
    const double b1 = *o.beta1();
    TORCH_CHECK(b1 >= 0 && b1 < 1, where, ": beta1 must be in [0, 1) when given, got ", b1);
  }
  TORCH_CHECK(
      std::isfinite(o.weight_decay()) && o.weight_decay() >= 0,
      where, ": weight_decay must be non-negative and finite, got ", o.weight_decay());
  TORCH_CHECK(
      o.quantization_block_size() > 0,
      where, ": quantization_block_size must be positive, got ", o.quantization_block_size());
  TORCH_CHECK(
      o.quantization_min_size() >= 0,
      where, ": quantization_min_size must be non-negative (0: quantize every parameter), got ",
      o.quantization_min_size());
  TORCH_CHECK(
      !o.capturable() || o.projection() == ProjectionMode::philox, where,
      ": capturable(true) needs the philox projection (the reference generator runs on the host)");
  TORCH_CHECK(
      !o.capturable() || !o.check_finite(), where,
      ": capturable(true) needs check_finite(false): the check reads the gradients' flags on the host");
  TORCH_CHECK(
      o.max_aspect_ratio() >= 1, where, ": max_aspect_ratio must be at least 1 (infinity: no limit), got ",
      o.max_aspect_ratio());
  TORCH_CHECK(
      !o.stochastic_rounding() || o.projection() == ProjectionMode::philox, where,
      ": stochastic_rounding(true) needs the philox projection (reference mode writes parameters as flora-opt does)");
  const bool variant = o.momentum_projection() != MomentumProjection::gaussian || o.momentum_rescale();
  TORCH_CHECK(
      !variant || o.projection() == ProjectionMode::philox, where, ": momentum_projection(",
      to_string(o.momentum_projection()), ") and momentum_rescale(", o.momentum_rescale(),
      ") other than flora-opt's rule need the philox projection (reference mode is flora-opt's sequence)");
  TORCH_CHECK(
      !variant || !o.capturable(), where, ": momentum_projection(", to_string(o.momentum_projection()),
      ") and momentum_rescale(", o.momentum_rescale(),
      ") are not capturable: their QR decompositions and Gram factors are computed before the step writes, "
      "from host-side seeds; use capturable(false)");
  TORCH_CHECK(
      !(o.momentum_rescale() && o.momentum_projection() == MomentumProjection::subspace), where,
      ": momentum_rescale(true) does nothing with momentum_projection(subspace), where up(M) = Q^T M already has "
      "M's norm; use one or the other");
  TORCH_CHECK(
      o.projection_precision() == ProjectionPrecision::float32 || o.projection() == ProjectionMode::philox, where,
      ": projection_precision(", to_string(o.projection_precision()),
      ") needs the philox projection (reference mode is flora-opt's float32 sequence)");
}

const char* to_string(MomentumProjection p) {
  switch (p) {
    case MomentumProjection::gaussian:
      return "gaussian";
    case MomentumProjection::orthonormal:
      return "orthonormal";
    case MomentumProjection::subspace:
      return "subspace";
  }
  return "unknown";
}

const char* to_string(ProjectionPrecision p) {
  switch (p) {
    case ProjectionPrecision::float32:
      return "float32";
    case ProjectionPrecision::bfloat16:
      return "bfloat16";
    case ProjectionPrecision::tf32:
      return "tf32";
  }
  return "unknown";
}

} // namespace flora
