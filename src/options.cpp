#include <flora/options.h>

#include <torch/optim/serialize.h>
#include <torch/serialize/archive.h>

#include <cmath>

namespace flora {

FloraOptions::FloraOptions(std::optional<double> lr) : lr_(lr) {}

bool operator==(const FloraOptions& lhs, const FloraOptions& rhs) {
  return lhs.lr() == rhs.lr() && lhs.rank() == rhs.rank() &&
      lhs.kappa() == rhs.kappa() && lhs.eps() == rhs.eps() &&
      lhs.clip_threshold() == rhs.clip_threshold() &&
      lhs.decay_rate() == rhs.decay_rate() && lhs.beta1() == rhs.beta1() &&
      lhs.weight_decay() == rhs.weight_decay() &&
      lhs.scale_parameter() == rhs.scale_parameter() &&
      lhs.relative_step() == rhs.relative_step() &&
      lhs.warmup_init() == rhs.warmup_init() &&
      lhs.factorize_second_moment() == rhs.factorize_second_moment() &&
      lhs.seed() == rhs.seed() && lhs.quantization() == rhs.quantization() &&
      lhs.quantization_block_size() == rhs.quantization_block_size() &&
      lhs.projection() == rhs.projection() &&
      lhs.check_finite() == rhs.check_finite();
}

void FloraOptions::serialize(torch::serialize::OutputArchive& archive) const {
  // std::nullopt is written as None, as torch does for its own options.
  archive.write("lr", c10::IValue(lr()));
  archive.write("rank", c10::IValue(rank()));
  archive.write("kappa", c10::IValue(kappa()));
  archive.write("eps1", c10::IValue(std::get<0>(eps())));
  archive.write("eps2", c10::IValue(std::get<1>(eps())));
  archive.write("clip_threshold", c10::IValue(clip_threshold()));
  archive.write("decay_rate", c10::IValue(decay_rate()));
  archive.write("beta1", c10::IValue(beta1()));
  archive.write("weight_decay", c10::IValue(weight_decay()));
  archive.write("scale_parameter", c10::IValue(scale_parameter()));
  archive.write("relative_step", c10::IValue(relative_step()));
  archive.write("warmup_init", c10::IValue(warmup_init()));
  archive.write("factorize_second_moment", c10::IValue(factorize_second_moment()));
  archive.write("seed", c10::IValue(seed()));
  archive.write("quantization", c10::IValue(quantization()));
  archive.write("quantization_block_size", c10::IValue(quantization_block_size()));
  archive.write("projection", c10::IValue(static_cast<int64_t>(projection())));
  archive.write("check_finite", c10::IValue(check_finite()));
}

namespace {

c10::IValue read(torch::serialize::InputArchive& archive, const char* key) {
  c10::IValue value;
  TORCH_CHECK(
      archive.try_read(key, value),
      "FloraOptions: the archive has no '", key, "' (not a flora::Flora checkpoint?)");
  return value;
}

} // namespace

void FloraOptions::serialize(torch::serialize::InputArchive& archive) {
  // Read everything first, so that a malformed archive leaves *this as is.
  FloraOptions o;
  o.lr(read(archive, "lr").toOptional<double>());
  o.rank(read(archive, "rank").toOptional<int64_t>());
  o.kappa(read(archive, "kappa").toInt());
  o.eps(std::make_tuple(read(archive, "eps1").toDouble(), read(archive, "eps2").toDouble()));
  o.clip_threshold(read(archive, "clip_threshold").toDouble());
  o.decay_rate(read(archive, "decay_rate").toDouble());
  o.beta1(read(archive, "beta1").toOptional<double>());
  o.weight_decay(read(archive, "weight_decay").toDouble());
  o.scale_parameter(read(archive, "scale_parameter").toBool());
  o.relative_step(read(archive, "relative_step").toBool());
  o.warmup_init(read(archive, "warmup_init").toBool());
  o.factorize_second_moment(read(archive, "factorize_second_moment").toBool());
  o.seed(read(archive, "seed").toInt());
  o.quantization(read(archive, "quantization").toBool());
  o.quantization_block_size(read(archive, "quantization_block_size").toInt());
  const int64_t mode = read(archive, "projection").toInt();
  TORCH_CHECK(
      mode == static_cast<int64_t>(ProjectionMode::philox) ||
          mode == static_cast<int64_t>(ProjectionMode::reference),
      "FloraOptions: unknown projection mode ", mode, " in the archive");
  o.projection(static_cast<ProjectionMode>(mode));
  o.check_finite(read(archive, "check_finite").toBool());
  *this = o;
}

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
}

} // namespace flora
