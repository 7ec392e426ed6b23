// GradientSynchronizer: what each rank exchanges (decided at construction
// and checked to agree across ranks), the parameters' broadcast, the
// checkpointed seeds, and the public facade over detail::Synchronizer.

#include "synchronizer.h"

#include "agreement.h"
#include "collective.h"
#include "sketch.h"

#include <flora/projection.h>

#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/torch.h>

namespace flora::distributed {

namespace {

constexpr const char* kWho = "flora::distributed::GradientSynchronizer";
constexpr int64_t kFormat = 1;

std::string mode_name(detail::Mode mode) {
  switch (mode) {
    case detail::Mode::gradients:
      return "gradients";
    case detail::Mode::accumulator:
      return "accumulator";
    case detail::Mode::fused:
      return "fused";
  }
  return "unknown";
}

std::string projection_name(ProjectionMode mode) {
  return mode == ProjectionMode::reference ? "reference" : "philox";
}

std::string shape_text(torch::IntArrayRef shape) {
  std::ostringstream out;
  out << shape;
  return out.str();
}

void check_options(const SynchronizerOptions& options) {
  TORCH_CHECK(
      !options.compression_rank().has_value() || *options.compression_rank() > 0, kWho,
      ": compression_rank must be positive when set, got ", options.compression_rank().value_or(0));
  TORCH_CHECK(
      options.max_aspect_ratio() >= 1.0, kWho, ": max_aspect_ratio must be at least 1, got ",
      options.max_aspect_ratio());
  TORCH_CHECK(options.bucket_bytes() > 0, kWho, ": bucket_bytes must be positive, got ", options.bucket_bytes());
  TORCH_CHECK(
      !options.timeout().has_value() || options.timeout()->count() > 0, kWho, ": timeout must be positive when set, got ",
      options.timeout().value_or(std::chrono::milliseconds(0)).count(), " ms");
}

} // namespace

// ---------------------------------------------------------------- Group

Group::Group(c10::intrusive_ptr<c10d::ProcessGroup> process_group) : process_group_(std::move(process_group)) {
  TORCH_CHECK(process_group_, kWho, ": the process group is null");
}

Group::Group(c10::intrusive_ptr<c10d::Backend> backend) : backend_(std::move(backend)) {
  TORCH_CHECK(backend_, kWho, ": the backend is null");
}

Group::Group(const World& world) : Group(world.process_group) {}

int64_t Group::rank() const {
  return process_group_ ? process_group_->getRank() : backend_->getRank();
}

int64_t Group::size() const {
  return process_group_ ? process_group_->getSize() : backend_->getSize();
}

c10::intrusive_ptr<c10d::Backend> Group::backend_for(const torch::Device& device) const {
  if (backend_) {
    return backend_;
  }
  try {
    return process_group_->getBackend(device.type());
  } catch (const c10::Error&) {
    TORCH_CHECK(
        false, kWho, ": the process group has no backend for ", c10::DeviceTypeName(device.type()),
        " tensors (set one with setBackend, or use flora::distributed::init_from_env)");
  }
}

namespace detail {

// ---------------------------------------------------------------- construction

Synchronizer::Synchronizer(
    Mode mode, std::vector<torch::Tensor> params, const Group& group, SynchronizerOptions options,
    CompressedAccumulator* accumulator, const FusedBackward* fused)
    : mode_(mode), options_(options), accumulator_(accumulator), fused_(fused) {
  check_options(options);
  TORCH_CHECK(
      !options.overlap() || mode == Mode::gradients, kWho, ": overlap applies to gradients after backward() (",
      mode == Mode::fused ? "a FusedBackward already reduces each gradient inside backward"
                          : "an accumulator's buffers are exchanged once, after the last micro-batch",
      ")");
  const CompressedAccumulator* acc = mode == Mode::accumulator ? accumulator : (fused ? fused->accumulator() : nullptr);
  TORCH_CHECK(
      !(acc && options.compression_rank().has_value()), kWho, ": compression_rank (",
      options.compression_rank().value_or(0),
      ") cannot be set together with an accumulator: its buffers are exchanged as they are, sketches where it "
      "compresses; set the accumulator's rank instead (AccumulationOptions::rank, "
      "FusedBackwardOptions::accumulation_rank)");

  int64_t next_compressed_seed = options.seed();
  for (auto& p : params) {
    TORCH_CHECK(p.defined(), kWho, ": parameter ", entries_.size(), " is undefined");
    if (mode == Mode::gradients && !p.requires_grad()) {
      continue; // never gets a gradient
    }
    const int64_t index = static_cast<int64_t>(entries_.size());
    if (entries_.empty()) {
      device_ = p.device();
    }
    TORCH_CHECK(
        p.device() == device_, kWho, ": parameter ", index, " is on ", p.device(), " and parameter 0 on ", device_,
        "; data-parallel training keeps each rank's replica on one device");
    TORCH_CHECK(
        index_.emplace(p.unsafeGetTensorImpl(), index).second, kWho, ": parameter ", index, " (shape ", p.sizes(),
        ") appears twice");
    Entry e;
    e.param = p;
    if (acc) {
      e.compressed = acc->compressed(p);
      e.exchange_shape = acc->buffer_shape(p);
      e.exchange_dtype = torch::kFloat;
    } else if (auto shape = sketch_shape(p.sizes(), options.compression_rank(), options.max_aspect_ratio())) {
      e.compressed = true;
      e.seed = next_compressed_seed++;
      e.exchange_shape = *shape;
      e.exchange_dtype = torch::kFloat;
    } else {
      e.exchange_shape = p.sizes().vec();
      e.exchange_dtype = p.scalar_type();
    }
    entries_.push_back(std::move(e));
  }
  if (mode != Mode::fused) {
    std::vector<ExchangeItem> items;
    for (const auto& e : entries_) {
      items.push_back({e.exchange_shape, e.exchange_dtype});
    }
    plan_ = plan_exchange(items, options.bucket_bytes());
  }
  backend_ = group.backend_for(device_);
  rank_ = backend_->getRank();
  size_ = backend_->getSize();
  check_agreement();
}

Synchronizer::~Synchronizer() {
  remove_hooks();
}

int64_t Synchronizer::index_of(const torch::Tensor& param) const {
  const auto it = index_.find(param.unsafeGetTensorImpl());
  TORCH_CHECK(
      it != index_.end(), kWho, ": the tensor of shape ", param.sizes(), " is not one of the synchronised parameters");
  return it->second;
}

bool Synchronizer::compressed(const torch::Tensor& param) const {
  return entries_[index_of(param)].compressed;
}

std::string Synchronizer::bucket_name(size_t bucket) const {
  const auto& b = plan_.buckets[bucket];
  return "the all-reduce of bucket " + std::to_string(bucket + 1) + " of " + std::to_string(plan_.buckets.size()) +
      " (" + std::to_string(b.items.size()) + " tensors, " +
      std::to_string(b.flat_numel() * static_cast<int64_t>(c10::elementSize(b.dtype))) + " bytes)";
}

// ---------------------------------------------------------------- agreement

Fingerprint Synchronizer::fingerprint() const {
  Fingerprint f;
  f.add("format", kFormat);
  f.add("world size", size_);
  f.add("mode", mode_name(mode_));
  f.add("reduction", options_.reduction() == Reduction::mean ? "mean" : "sum");
  f.add("compression_rank",
        options_.compression_rank().has_value() ? std::to_string(*options_.compression_rank()) : "unset");
  f.add("max_aspect_ratio", options_.max_aspect_ratio());
  f.add("bucket_bytes", options_.bucket_bytes());
  f.add("overlap", options_.overlap() ? "true" : "false");
  f.add("seed", options_.seed());
  f.add("projection", projection_name(options_.projection()));
  f.add("device type", c10::DeviceTypeName(device_.type()));
  const CompressedAccumulator* acc = accumulator_ ? accumulator_ : (fused_ ? fused_->accumulator() : nullptr);
  if (fused_) {
    const auto& o = fused_->options();
    f.add("FusedBackward accumulation_steps", o.accumulation_steps());
    f.add("FusedBackward clip_value", o.clip_value().has_value() ? std::to_string(*o.clip_value()) : "unset");
    f.add("FusedBackward max_parameter_norm",
          o.max_parameter_norm().has_value() ? std::to_string(*o.max_parameter_norm()) : "unset");
  }
  if (acc) {
    f.add("accumulator rank", acc->options().rank());
    f.add("accumulator projection", projection_name(acc->options().projection()));
  }
  f.add("parameters", entries_.size());
  for (size_t i = 0; i < entries_.size(); ++i) {
    const auto& e = entries_[i];
    const std::string name = "parameter " + std::to_string(i);
    f.add(name + " shape", shape_text(e.param.sizes()));
    f.add(name + " dtype", e.param.scalar_type());
    if (e.compressed) {
      f.add(name + " exchange", "sketch " + shape_text(e.exchange_shape));
      f.add(name + " seed", acc ? acc->seed(e.param) : e.seed);
    } else {
      f.add(name + " exchange", "plain");
    }
  }
  return f;
}

void Synchronizer::check_agreement() const {
  detail::check_agreement(*backend_, device_, fingerprint(), kWho, options_.timeout());
}

// ---------------------------------------------------------------- broadcast

void Synchronizer::broadcast_parameters() {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<ExchangeItem> items;
  for (const auto& e : entries_) {
    items.push_back({e.param.sizes().vec(), e.param.scalar_type()});
  }
  const ExchangePlan plan = plan_exchange(items, options_.bucket_bytes());
  torch::NoGradGuard no_grad;
  for (size_t b = 0; b < plan.buckets.size(); ++b) {
    const auto& bucket = plan.buckets[b];
    auto flat = torch::empty({bucket.numel}, torch::TensorOptions().dtype(bucket.dtype).device(device_));
    for (const int64_t i : bucket.items) {
      const auto& pe = plan.entries[i];
      flat.narrow(0, pe.offset, pe.numel).copy_(entries_[i].param.reshape(-1));
    }
    broadcast_from_zero(
        *backend_, flat, options_.timeout(),
        "broadcast_parameters (bucket " + std::to_string(b + 1) + " of " + std::to_string(plan.buckets.size()) + ")");
    if (rank_ != 0) {
      for (const int64_t i : bucket.items) {
        const auto& pe = plan.entries[i];
        auto& p = entries_[i].param;
        p.copy_(flat.narrow(0, pe.offset, pe.numel).view(p.sizes()));
      }
    }
  }
}

// ---------------------------------------------------------------- checkpoints

void Synchronizer::save(torch::serialize::OutputArchive& archive) const {
  std::lock_guard<std::mutex> lock(mutex_);
  archive.write("flora_synchronizer", c10::IValue(kFormat));
  archive.write("mode", c10::IValue(mode_name(mode_)));
  archive.write("size", c10::IValue(static_cast<int64_t>(entries_.size())));
  for (size_t i = 0; i < entries_.size(); ++i) {
    if (entries_[i].compressed && mode_ != Mode::accumulator && !(fused_ && fused_->accumulator())) {
      archive.write("seed/" + std::to_string(i), c10::IValue(entries_[i].seed));
    }
  }
}

void Synchronizer::load(torch::serialize::InputArchive& archive) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    TORCH_CHECK(!round_.active, kWho, "::load: an exchange is in progress (call synchronize() first)");
    auto read = [&](const std::string& key) {
      c10::IValue v;
      TORCH_CHECK(
          archive.try_read(key, v), kWho, "::load: no '", key, "' in the archive (not a synchroniser checkpoint?)");
      return v;
    };
    const c10::IValue format = read("flora_synchronizer");
    TORCH_CHECK(
        format.isInt() && format.toInt() == kFormat, kWho, "::load: unknown format ", format, " (this build reads ",
        kFormat, ")");
    const c10::IValue mode = read("mode");
    TORCH_CHECK(
        mode.isString() && mode.toStringRef() == mode_name(mode_), kWho, "::load: the checkpoint is of mode ", mode,
        ", this synchroniser's is ", mode_name(mode_));
    const c10::IValue size = read("size");
    TORCH_CHECK(
        size.isInt() && size.toInt() == static_cast<int64_t>(entries_.size()), kWho, "::load: the checkpoint has ",
        size, " parameters, this synchroniser ", entries_.size());
    std::vector<int64_t> seeds(entries_.size());
    for (size_t i = 0; i < entries_.size(); ++i) {
      seeds[i] = entries_[i].seed;
      c10::IValue seed;
      const bool has = archive.try_read("seed/" + std::to_string(i), seed);
      const bool expects = entries_[i].compressed && mode_ != Mode::accumulator && !(fused_ && fused_->accumulator());
      TORCH_CHECK(
          has == expects, kWho, "::load: parameter ", i, expects ? " is exchanged as a sketch here, but the checkpoint has no seed for it"
                                                                 : " goes plain here, but the checkpoint has a seed for it");
      if (has) {
        TORCH_CHECK(seed.isInt(), kWho, "::load: seed ", i, " is not an integer");
        seeds[i] = seed.toInt();
      }
    }
    for (size_t i = 0; i < entries_.size(); ++i) {
      entries_[i].seed = seeds[i];
    }
  }
  // Every rank must continue from the same seeds.
  check_agreement();
}

// ---------------------------------------------------------------- sizes

int64_t Synchronizer::bytes_per_exchange() const {
  if (mode_ != Mode::fused) {
    return plan_.bytes();
  }
  int64_t total = 0;
  for (const auto& e : entries_) {
    total += c10::multiply_integers(e.exchange_shape) * static_cast<int64_t>(c10::elementSize(e.exchange_dtype));
  }
  return total;
}

int64_t Synchronizer::bytes_exchanged() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return bytes_exchanged_;
}

int64_t Synchronizer::collectives() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return collectives_;
}

} // namespace detail

// ---------------------------------------------------------------- facade

GradientSynchronizer::GradientSynchronizer(std::vector<torch::Tensor> params, Group group, SynchronizerOptions options)
    : state_(std::make_shared<detail::Synchronizer>(
          detail::Mode::gradients, std::move(params), group, options, nullptr, nullptr)) {
  if (options.overlap()) {
    state_->install_hooks();
  }
}

GradientSynchronizer::GradientSynchronizer(
    CompressedAccumulator& accumulator, Group group, SynchronizerOptions options)
    : state_(std::make_shared<detail::Synchronizer>(
          detail::Mode::accumulator, accumulator.parameters(), group, options, &accumulator, nullptr)) {}

GradientSynchronizer::GradientSynchronizer(FusedBackward& fused, Group group, SynchronizerOptions options)
    : state_(std::make_shared<detail::Synchronizer>(
          detail::Mode::fused, fused.parameters(), group, options, nullptr, &fused)) {
  fused.set_reduction(state_);
}

GradientSynchronizer::~GradientSynchronizer() {
  // The overlap hooks stop with this object; a FusedBackward keeps its
  // reduction (and so the shared state) for as long as it lives, since
  // updating without reducing would let the replicas drift apart.
  if (state_) {
    state_->remove_hooks();
  }
}

void GradientSynchronizer::broadcast_parameters() {
  state_->broadcast_parameters();
}

void GradientSynchronizer::synchronize() {
  state_->synchronize();
}

GradientSynchronizer::NoSync::NoSync(std::shared_ptr<detail::Synchronizer> state) : state_(std::move(state)) {
  ++state_->no_sync_depth;
}

GradientSynchronizer::NoSync::NoSync(NoSync&& other) noexcept : state_(std::move(other.state_)) {}

GradientSynchronizer::NoSync::~NoSync() {
  if (state_) {
    --state_->no_sync_depth;
  }
}

GradientSynchronizer::NoSync GradientSynchronizer::no_sync() {
  return NoSync(state_);
}

int64_t GradientSynchronizer::rank() const {
  return state_->rank();
}

int64_t GradientSynchronizer::world_size() const {
  return state_->size();
}

const SynchronizerOptions& GradientSynchronizer::options() const {
  return state_->options();
}

bool GradientSynchronizer::compressed(const torch::Tensor& param) const {
  return state_->compressed(param);
}

int64_t GradientSynchronizer::bytes_per_exchange() const {
  return state_->bytes_per_exchange();
}

int64_t GradientSynchronizer::bytes_exchanged() const {
  return state_->bytes_exchanged();
}

int64_t GradientSynchronizer::collectives() const {
  return state_->collectives();
}

void GradientSynchronizer::save(torch::serialize::OutputArchive& archive) const {
  state_->save(archive);
}

void GradientSynchronizer::load(torch::serialize::InputArchive& archive) {
  state_->load(archive);
}

int64_t bytes_per_exchange(
    const std::vector<std::vector<int64_t>>& shapes, torch::ScalarType dtype, const SynchronizerOptions& options) {
  check_options(options);
  std::vector<detail::ExchangeItem> items;
  for (const auto& shape : shapes) {
    if (auto sketch = detail::sketch_shape(shape, options.compression_rank(), options.max_aspect_ratio())) {
      items.push_back({*sketch, torch::kFloat});
    } else {
      items.push_back({shape, dtype});
    }
  }
  return detail::plan_exchange(items, options.bucket_bytes()).bytes();
}

} // namespace flora::distributed
