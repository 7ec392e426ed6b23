#include <flora/accumulation.h>
#include <flora/layout.h>
#include <flora/projection.h>

#include <torch/torch.h>

namespace flora {
namespace {

int64_t matrix_rows(const torch::Tensor& p) {
  return p.size(0);
}

int64_t matrix_cols(const torch::Tensor& p) {
  return p.numel() / p.size(0);
}

// The buffer of a compressed parameter: down(G) of its (rows, cols) matrix.
std::vector<int64_t> compressed_buffer_shape(const torch::Tensor& param, int64_t rank) {
  return compressed_shape(matrix_rows(param), matrix_cols(param), rank);
}

Projection projection_for(const torch::Tensor& param, int64_t seed, const AccumulationOptions& options) {
  return Projection(
      seed, matrix_rows(param), matrix_cols(param), options.rank(), options.projection(), Projection::Seeding::direct,
      param.options().dtype(torch::kFloat));
}

} // namespace

CompressedAccumulator::CompressedAccumulator(std::vector<torch::Tensor> params, AccumulationOptions options)
    : options_(options) {
  TORCH_CHECK(
      options.rank() >= 0, "AccumulationOptions: rank must be >= 0 (0: uncompressed accumulation), got ",
      options.rank());
  TORCH_CHECK(
      options.max_aspect_ratio() >= 1, "AccumulationOptions: max_aspect_ratio must be at least 1, got ",
      options.max_aspect_ratio());
  int64_t next_seed_value = options.seed();
  for (auto& p : params) {
    TORCH_CHECK(p.defined(), "CompressedAccumulator: parameter ", slots_.size(), " is undefined");
    for (const auto& s : slots_) {
      TORCH_CHECK(!s.param.is_same(p), "CompressedAccumulator: parameter ", slots_.size(), " appears twice");
    }
    Slot slot;
    slot.param = p;
    // flora-opt compresses a matrix whatever its rank and size, so the rank
    // test of the rule is off (rank 1 always fits); the aspect limit is ours.
    slot.compressed = options.rank() > 0 && p.dim() >= 2 && p.numel() > 0 &&
        compresses_momentum(matrix_rows(p), matrix_cols(p), /*rank=*/1, options.max_aspect_ratio());
    if (slot.compressed) {
      slot.seed = next_seed_value++;
    }
    slots_.push_back(std::move(slot));
  }
}

CompressedAccumulator::Slot& CompressedAccumulator::slot_for(const torch::Tensor& param) {
  for (auto& s : slots_) {
    if (s.param.is_same(param)) {
      return s;
    }
  }
  TORCH_CHECK(false, "CompressedAccumulator: the tensor of shape ", param.sizes(), " is not one of its parameters");
}

const CompressedAccumulator::Slot* CompressedAccumulator::find(const torch::Tensor& param) const {
  for (const auto& s : slots_) {
    if (s.param.is_same(param)) {
      return &s;
    }
  }
  return nullptr;
}

bool CompressedAccumulator::compressed(const torch::Tensor& param) const {
  const Slot* s = find(param);
  TORCH_CHECK(s != nullptr, "CompressedAccumulator: the tensor is not one of its parameters");
  return s->compressed;
}

std::vector<torch::Tensor> CompressedAccumulator::parameters() const {
  std::vector<torch::Tensor> params;
  params.reserve(slots_.size());
  for (const auto& s : slots_) {
    params.push_back(s.param);
  }
  return params;
}

std::vector<int64_t> CompressedAccumulator::buffer_shape(const torch::Tensor& param) const {
  const Slot* s = find(param);
  TORCH_CHECK(s != nullptr, "CompressedAccumulator: the tensor of shape ", param.sizes(), " is not one of its parameters");
  return s->compressed ? compressed_buffer_shape(param, options_.rank()) : param.sizes().vec();
}

int64_t CompressedAccumulator::seed(const torch::Tensor& param) const {
  const Slot* s = find(param);
  TORCH_CHECK(s != nullptr, "CompressedAccumulator: the tensor of shape ", param.sizes(), " is not one of its parameters");
  return s->seed;
}

torch::Tensor CompressedAccumulator::buffer(const torch::Tensor& param) const {
  const Slot* s = find(param);
  TORCH_CHECK(s != nullptr, "CompressedAccumulator: the tensor of shape ", param.sizes(), " is not one of its parameters");
  return s->buffer;
}

void CompressedAccumulator::set_buffer(const torch::Tensor& param, torch::Tensor buffer) {
  Slot& s = slot_for(param);
  if (buffer.defined()) {
    const auto expected = buffer_shape(param);
    TORCH_CHECK(
        buffer.sizes() == expected, "CompressedAccumulator::set_buffer: a buffer of shape ", buffer.sizes(),
        " for a parameter whose buffer is ", expected);
    TORCH_CHECK(
        buffer.scalar_type() == torch::kFloat, "CompressedAccumulator::set_buffer: buffers are float32, got ",
        buffer.scalar_type());
    TORCH_CHECK(
        buffer.device() == param.device(), "CompressedAccumulator::set_buffer: a buffer on ", buffer.device(),
        " for a parameter on ", param.device());
  }
  s.buffer = std::move(buffer);
}

void CompressedAccumulator::accumulate() {
  for (auto& s : slots_) {
    accumulate(s.param);
  }
}

void CompressedAccumulator::accumulate(const torch::Tensor& param) {
  Slot& s = slot_for(param);
  const torch::Tensor grad = param.grad();
  if (!grad.defined()) {
    return;
  }
  TORCH_CHECK(!grad.is_sparse(), "CompressedAccumulator: the gradient of a parameter of shape ", param.sizes(), " is sparse");
  TORCH_CHECK(
      grad.sizes() == param.sizes(), "CompressedAccumulator: a gradient of shape ", grad.sizes(),
      " for a parameter of shape ", param.sizes());
  torch::NoGradGuard no_grad;
  if (s.compressed) {
    const auto g = grad.reshape({matrix_rows(param), matrix_cols(param)}).to(torch::kFloat);
    const Projection projection = projection_for(param, s.seed, options_);
    if (!s.buffer.defined()) {
      s.buffer = projection.down(g);
    } else if (options_.projection() == ProjectionMode::reference) {
      s.buffer.add_(projection.down(g)); // flora-opt's rounding: down(g) + C
    } else {
      projection.down_add_(s.buffer, g, 1.0, 1.0);
    }
  } else if (!s.buffer.defined()) {
    s.buffer = grad.to(torch::kFloat, /*non_blocking=*/false, /*copy=*/true);
  } else {
    s.buffer.add_(grad);
  }
  param.mutable_grad() = torch::Tensor(); // the full gradient is released
}

torch::Tensor CompressedAccumulator::take(const torch::Tensor& param) {
  Slot& s = slot_for(param);
  if (!s.buffer.defined()) {
    return {};
  }
  torch::NoGradGuard no_grad;
  torch::Tensor g;
  if (s.compressed) {
    // _unsafe_view: a gradient must not be a view (zero_grad detaches in place).
    g = at::_unsafe_view(projection_for(param, s.seed, options_).up(s.buffer), param.sizes());
    s.seed = next_seed(s.seed, options_.projection());
  } else {
    g = s.buffer;
  }
  s.buffer = torch::Tensor();
  return g;
}

void CompressedAccumulator::restore() {
  for (auto& s : slots_) {
    auto g = take(s.param);
    if (g.defined()) {
      s.param.mutable_grad() = g.to(s.param.scalar_type());
    }
  }
}

int64_t CompressedAccumulator::buffer_bytes() const {
  int64_t total = 0;
  for (const auto& s : slots_) {
    total += s.buffer.defined() ? static_cast<int64_t>(s.buffer.nbytes()) : 0;
  }
  return total;
}

// Format 1: rank, size, seeds and buffers; 2 adds max_aspect_ratio (a
// format-1 checkpoint was written with flora-opt's rule: no limit).
constexpr int64_t kAccumulatorFormat = 2;

void CompressedAccumulator::save(torch::serialize::OutputArchive& archive) const {
  archive.write("flora_accumulator", c10::IValue(kAccumulatorFormat));
  archive.write("rank", c10::IValue(options_.rank()));
  archive.write("max_aspect_ratio", c10::IValue(options_.max_aspect_ratio()));
  archive.write("size", c10::IValue(static_cast<int64_t>(slots_.size())));
  for (size_t i = 0; i < slots_.size(); ++i) {
    archive.write("seed/" + std::to_string(i), c10::IValue(slots_[i].seed));
    if (slots_[i].buffer.defined()) {
      archive.write("buffer/" + std::to_string(i), slots_[i].buffer);
    }
  }
}

void CompressedAccumulator::load(torch::serialize::InputArchive& archive) {
  auto read_int = [&](const std::string& key) {
    c10::IValue v;
    TORCH_CHECK(
        archive.try_read(key, v) && v.isInt(), "CompressedAccumulator::load: no integer '", key,
        "' (not an accumulator checkpoint?)");
    return v.toInt();
  };
  const int64_t format = read_int("flora_accumulator");
  TORCH_CHECK(
      format >= 1 && format <= kAccumulatorFormat, "CompressedAccumulator::load: the checkpoint has format ", format,
      "; this flora reads formats 1 to ", kAccumulatorFormat);
  const int64_t rank = read_int("rank");
  TORCH_CHECK(
      rank == options_.rank(), "CompressedAccumulator::load: the checkpoint has rank ", rank, ", this accumulator ",
      options_.rank());
  double aspect = std::numeric_limits<double>::infinity();
  if (format >= 2) {
    c10::IValue v;
    TORCH_CHECK(
        archive.try_read("max_aspect_ratio", v) && v.isDouble(),
        "CompressedAccumulator::load: no float 'max_aspect_ratio' in a format-2 checkpoint");
    aspect = v.toDouble();
  }
  TORCH_CHECK(
      aspect == options_.max_aspect_ratio(), "CompressedAccumulator::load: the checkpoint has max_aspect_ratio ",
      aspect, ", this accumulator ", options_.max_aspect_ratio());
  const int64_t size = read_int("size");
  TORCH_CHECK(
      size == static_cast<int64_t>(slots_.size()), "CompressedAccumulator::load: the checkpoint has ", size,
      " parameters, this accumulator ", slots_.size());
  std::vector<int64_t> seeds(slots_.size());
  std::vector<torch::Tensor> buffers(slots_.size());
  for (size_t i = 0; i < slots_.size(); ++i) {
    seeds[i] = read_int("seed/" + std::to_string(i));
    c10::IValue v;
    if (archive.try_read("buffer/" + std::to_string(i), v)) {
      TORCH_CHECK(v.isTensor(), "CompressedAccumulator::load: buffer ", i, " is not a tensor");
      const auto& p = slots_[i].param;
      const std::vector<int64_t> expected =
          slots_[i].compressed ? compressed_buffer_shape(p, options_.rank()) : p.sizes().vec();
      TORCH_CHECK(
          v.toTensor().sizes() == expected, "CompressedAccumulator::load: buffer ", i, " has shape ",
          v.toTensor().sizes(), ", expected ", expected);
      buffers[i] = v.toTensor().to(p.device(), torch::kFloat);
    }
  }
  for (size_t i = 0; i < slots_.size(); ++i) {
    slots_[i].seed = seeds[i];
    slots_[i].buffer = buffers[i];
  }
}

} // namespace flora
