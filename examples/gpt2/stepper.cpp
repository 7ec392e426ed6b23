#include "stepper.h"

#include "data_parallel.h"

#include <flora/flora.h>

#include <c10/util/Exception.h>
#include <torch/torch.h>

#include <cmath>
#include <sstream>

namespace flora::gpt2 {
namespace {

std::string number(double v) {
  std::ostringstream out;
  out << v;
  return out.str();
}

// torch's Adam and AdamW create their moments lazily, in the parameter's
// dtype; for bfloat16 parameters they are created here in float32 instead,
// as Flora keeps its own (the update is then computed in float32 and
// rounded once into the parameter). Both look a parameter's state up by its
// TensorImpl, and create none where one exists.
void float32_adam_states(torch::optim::Optimizer& optimizer) {
  const bool adamw = dynamic_cast<torch::optim::AdamW*>(&optimizer) != nullptr;
  if (!adamw && dynamic_cast<torch::optim::Adam*>(&optimizer) == nullptr) {
    return;
  }
  for (auto& group : optimizer.param_groups()) {
    for (const auto& p : group.params()) {
      if (p.scalar_type() == torch::kFloat || !at::isFloatingType(p.scalar_type())) {
        continue;
      }
      auto zeros = [&] { return torch::zeros_like(p, torch::TensorOptions().dtype(torch::kFloat)); };
      std::unique_ptr<torch::optim::OptimizerParamState> state;
      if (adamw) {
        auto s = std::make_unique<torch::optim::AdamWParamState>();
        s->step(0).exp_avg(zeros()).exp_avg_sq(zeros());
        state = std::move(s);
      } else {
        auto s = std::make_unique<torch::optim::AdamParamState>();
        s->step(0).exp_avg(zeros()).exp_avg_sq(zeros());
        state = std::move(s);
      }
      optimizer.state()[p.unsafeGetTensorImpl()] = std::move(state);
    }
  }
}

/// The data-parallel exchange of a stepper: a GradientSynchronizer over the
/// parameters, an accumulator or a fused backward, or nothing (one process).
class Exchange {
 public:
  Exchange() = default;
#if FLORA_WITH_DISTRIBUTED
  /// `target`: the parameters (mode 1), a CompressedAccumulator (2) or a
  /// FusedBackward (3), which must outlive this object.
  template <typename Target>
  Exchange(Target&& target, const DataParallel& parallel, const OptimizerSpec& spec, bool compress)
      : sync_(std::make_unique<flora::distributed::GradientSynchronizer>(
            std::forward<Target>(target), parallel.group(), options(spec, compress))) {
    // Every rank builds the same initial model from the same seed, but the
    // library's rule is to start from rank 0's values, whatever they are.
    sync_->broadcast_parameters();
  }
#endif

  /// Averages the gradients (or the accumulator's buffers) across ranks.
  void synchronize() {
#if FLORA_WITH_DISTRIBUTED
    if (sync_) {
      sync_->synchronize();
    }
#endif
  }
  /// Runs a backward pass whose gradients are to stay local (a micro-batch
  /// before the last, with overlap: the hooks stand aside under no_sync()).
  template <typename Fn>
  void without_sync(Fn&& fn) {
#if FLORA_WITH_DISTRIBUTED
    if (sync_ && sync_->options().overlap()) {
      auto guard = sync_->no_sync();
      fn();
      return;
    }
#endif
    fn();
  }
  int64_t bytes() const {
#if FLORA_WITH_DISTRIBUTED
    return sync_ ? sync_->bytes_exchanged() : 0;
#else
    return 0;
#endif
  }
  void broadcast_parameters() {
#if FLORA_WITH_DISTRIBUTED
    if (sync_) {
      sync_->broadcast_parameters();
    }
#endif
  }
  /// The exchange's seeds under "exchange" (when data-parallel). A
  /// checkpoint of a data-parallel run resumes only as one, and the other
  /// way round: the exchange changes the gradients.
  void save(torch::serialize::OutputArchive& archive) const {
    archive.write("data_parallel", c10::IValue(active()));
#if FLORA_WITH_DISTRIBUTED
    if (sync_) {
      torch::serialize::OutputArchive sub;
      sync_->save(sub);
      archive.write("exchange", sub);
    }
#endif
  }
  void load(torch::serialize::InputArchive& archive) {
    c10::IValue saved;
    TORCH_CHECK(archive.try_read("data_parallel", saved) && saved.isBool(), "no 'data_parallel' flag in the checkpoint");
    TORCH_CHECK(
        saved.toBool() == active(), "the checkpoint is of a ", saved.toBool() ? "data-parallel" : "one-process",
        " run, and this run is ", active() ? "data-parallel" : "one process");
#if FLORA_WITH_DISTRIBUTED
    if (sync_) {
      torch::serialize::InputArchive sub;
      TORCH_CHECK(archive.try_read("exchange", sub), "no 'exchange' in the checkpoint");
      sync_->load(sub); // a collective: every rank loads the same seeds
    }
#endif
  }
  bool active() const {
#if FLORA_WITH_DISTRIBUTED
    return sync_ != nullptr;
#else
    return false;
#endif
  }

 private:
#if FLORA_WITH_DISTRIBUTED
  static flora::distributed::SynchronizerOptions options(const OptimizerSpec& spec, bool compress) {
    flora::distributed::SynchronizerOptions o;
    if (compress) {
      o.compression_rank(spec.compression_rank);
    }
    // The compressed exchange follows Flora's rule for its momentum, and
    // draws its projections like the accumulator does (seed, generator).
    o.max_aspect_ratio(spec.max_aspect_ratio).overlap(spec.overlap).seed(spec.seed).projection(spec.projection);
    return o;
  }
  std::unique_ptr<flora::distributed::GradientSynchronizer> sync_;
#endif
};

/// Gradients summed by autograd in .grad, then one optimizer.step().
class OptimizerStepper : public TrainStepper {
 public:
  OptimizerStepper(OptimizerSpec spec, std::unique_ptr<torch::optim::Optimizer> optimizer)
      : TrainStepper(std::move(spec)), optimizer_(std::move(optimizer)) {}

  /// Averages the gradients over `parallel`'s ranks before each step.
  void exchange_over(const std::vector<torch::Tensor>& params, const DataParallel& parallel) {
#if FLORA_WITH_DISTRIBUTED
    exchange_ = Exchange(params, parallel, spec(), /*compress=*/true);
#endif
  }

  void begin_step() override {
    optimizer_->zero_grad();
  }
  void backward(const torch::Tensor& loss, bool last) override {
    // With overlap, only the last micro-batch's backward starts the
    // exchange: the earlier ones accumulate locally in .grad.
    if (last) {
      loss.backward();
    } else {
      exchange_.without_sync([&] { loss.backward(); });
    }
  }
  void finish_step() override {
    exchange_.synchronize(); // between the last backward and the step
    optimizer_->step();
  }
  int64_t bytes_communicated() const override {
    return exchange().bytes();
  }
  void save(torch::serialize::OutputArchive& archive) const override {
    torch::serialize::OutputArchive optimizer;
    optimizer_->save(optimizer);
    archive.write("optimizer", optimizer);
    exchange().save(archive);
  }
  void load(torch::serialize::InputArchive& archive) override {
    torch::serialize::InputArchive optimizer;
    TORCH_CHECK(archive.try_read("optimizer", optimizer), "no 'optimizer' in the checkpoint");
    optimizer_->load(optimizer);
    exchange().load(archive);
  }
  void broadcast_parameters() override {
    exchange().broadcast_parameters();
  }
  void set_lr(double lr) override {
    for (auto& group : optimizer_->param_groups()) {
      group.options().set_lr(lr);
    }
  }
  int64_t state_bytes() const override {
    return flora::optimizer_state_bytes(*optimizer_);
  }
  torch::optim::Optimizer& optimizer() override {
    return *optimizer_;
  }

 protected:
  void step_optimizer() {
    optimizer_->step();
  }
  /// The exchange this stepper uses (a subclass may exchange something else).
  virtual const Exchange& exchange() const {
    return exchange_;
  }
  virtual Exchange& exchange() {
    return exchange_;
  }

 private:
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  Exchange exchange_; // declared last: its hooks go first
};

/// Gradients folded into a flora::CompressedAccumulator after each
/// micro-batch and released; restored before optimizer.step().
class AccumulatingStepper : public OptimizerStepper {
 public:
  AccumulatingStepper(
      OptimizerSpec spec, std::unique_ptr<torch::optim::Optimizer> optimizer, const std::vector<torch::Tensor>& params)
      : OptimizerStepper(spec, std::move(optimizer)),
        accumulator_(
            params,
            AccumulationOptions(spec.accumulation_rank).projection(spec.projection).seed(spec.seed)) {}

  /// Averages the accumulator's buffers over `parallel`'s ranks before
  /// each step: one exchange of sketches per step.
  void exchange_over(const DataParallel& parallel) {
#if FLORA_WITH_DISTRIBUTED
    accumulated_exchange_ = Exchange(accumulator_, parallel, spec(), /*compress=*/false);
#endif
  }

  void backward(const torch::Tensor& loss, bool /*last*/) override {
    loss.backward();
    accumulator_.accumulate();
  }
  void finish_step() override {
    accumulated_exchange_.synchronize(); // before restore(), as the library prescribes
    accumulator_.restore();
    step_optimizer();
  }
  void save(torch::serialize::OutputArchive& archive) const override {
    OptimizerStepper::save(archive);
    torch::serialize::OutputArchive accumulator;
    accumulator_.save(accumulator); // its seeds (and empty buffers, between steps)
    archive.write("accumulator", accumulator);
  }
  void load(torch::serialize::InputArchive& archive) override {
    torch::serialize::InputArchive accumulator;
    TORCH_CHECK(archive.try_read("accumulator", accumulator), "no 'accumulator' in the checkpoint");
    accumulator_.load(accumulator);
    OptimizerStepper::load(archive); // last: the exchange's load checks the ranks agree on the seeds
  }

 protected:
  const Exchange& exchange() const override {
    return accumulated_exchange_;
  }
  Exchange& exchange() override {
    return accumulated_exchange_;
  }

 private:
  CompressedAccumulator accumulator_;
  Exchange accumulated_exchange_; // refers to accumulator_: declared after it
};

/// Each parameter updated inside backward by a flora::FusedBackward.
class FusedStepper : public TrainStepper {
 public:
  FusedStepper(OptimizerSpec spec, std::unique_ptr<Flora> optimizer)
      : TrainStepper(spec), optimizer_(std::move(optimizer)) {
    auto options = FusedBackwardOptions().accumulation_steps(spec.micro_batches).projection(spec.projection);
    if (spec.accumulation_rank > 0) {
      options.accumulation_rank(spec.accumulation_rank).accumulation_seed(spec.seed);
    }
    fused_ = std::make_unique<FusedBackward>(*optimizer_, options);
  }

  /// Averages each gradient (or sketch, or accumulated buffer) over
  /// `parallel`'s ranks inside its hook, right before its update.
  void exchange_over(const DataParallel& parallel) {
#if FLORA_WITH_DISTRIBUTED
    // A fused backward that accumulates exchanges its accumulator's buffers
    // as they are (the accumulator's rank decides).
    exchange_ = Exchange(*fused_, parallel, spec(), /*compress=*/spec().micro_batches == 1);
#endif
  }

  void begin_step() override {} // gradients are released inside backward
  void backward(const torch::Tensor& loss, bool /*last*/) override {
    loss.backward();
  }
  void finish_step() override {}
  int64_t bytes_communicated() const override {
    return exchange_.bytes();
  }
  void save(torch::serialize::OutputArchive& archive) const override {
    // A FusedBackward that accumulates at a rank keeps its accumulator's
    // seeds to itself (flora::FusedBackward has no save/load): such a run
    // could not resume exactly, so it is not checkpointed at all.
    TORCH_CHECK(
        !(spec().micro_batches > 1 && spec().accumulation_rank > 0),
        "checkpoints of --fused-backward with --grad-accum > 1 and --accumulation-rank need the fused backward's "
        "accumulator seeds, which flora::FusedBackward does not save");
    torch::serialize::OutputArchive optimizer;
    optimizer_->save(optimizer);
    archive.write("optimizer", optimizer);
    exchange_.save(archive);
  }
  void load(torch::serialize::InputArchive& archive) override {
    torch::serialize::InputArchive optimizer;
    TORCH_CHECK(archive.try_read("optimizer", optimizer), "no 'optimizer' in the checkpoint");
    optimizer_->load(optimizer);
    exchange_.load(archive);
  }
  void broadcast_parameters() override {
    exchange_.broadcast_parameters();
  }
  void set_lr(double lr) override {
    for (auto& group : optimizer_->param_groups()) {
      group.options().set_lr(lr);
    }
  }
  int64_t state_bytes() const override {
    return optimizer_->state_bytes();
  }
  torch::optim::Optimizer& optimizer() override {
    return *optimizer_;
  }

 private:
  std::unique_ptr<Flora> optimizer_;
  std::unique_ptr<FusedBackward> fused_; // its hooks go before the optimizer
  Exchange exchange_; // declared last: removed before the fused backward
};

} // namespace

std::string OptimizerSpec::label() const {
  std::string s = name + "(lr=" + number(lr);
  if (name == "flora") {
    s += ",rank=" + (rank ? std::to_string(*rank) : std::string("none"));
    s += ",kappa=" + std::to_string(kappa);
    s += ",b1=" + (beta1 ? number(*beta1) : std::string("none"));
    if (projection == ProjectionMode::reference) {
      s += ",reference";
    }
    if (max_aspect_ratio != 4.0) {
      s += ",aspect=" + number(max_aspect_ratio); // "inf" for no limit
    }
    if (stochastic_rounding) {
      s += ",sr";
    }
    if (momentum_projection != MomentumProjection::gaussian) {
      s += std::string(",") + to_string(momentum_projection);
    }
    if (momentum_rescale) {
      s += ",rescale";
    }
    if (projection_precision != ProjectionPrecision::float32) {
      s += std::string(",") + to_string(projection_precision) + "_products";
    }
    if (quantization == "8bit") {
      s += ",8bit";
      if (quantization_min_size != FloraOptions().quantization_min_size()) {
        s += ",min_size=" + std::to_string(quantization_min_size);
      }
    }
    if (fused_backward) {
      s += ",fused";
    }
  }
  if (accumulation_rank > 0) {
    s += ",acc_rank=" + std::to_string(accumulation_rank);
  }
  if (compression_rank) {
    s += ",exchange_rank=" + std::to_string(*compression_rank);
  }
  if (overlap) {
    s += ",overlap";
  }
  if (weight_decay != 0.0) {
    s += ",wd=" + number(weight_decay);
  }
  return s + ")";
}

ProjectionMode parse_projection(const std::string& name) {
  if (name == "philox") {
    return ProjectionMode::philox;
  }
  if (name == "reference") {
    return ProjectionMode::reference;
  }
  TORCH_CHECK(false, "--projection must be philox or reference, got '", name, "'");
}

ProjectionPrecision parse_projection_precision(const std::string& name) {
  for (auto p : {ProjectionPrecision::float32, ProjectionPrecision::bfloat16, ProjectionPrecision::tf32}) {
    if (name == to_string(p)) {
      return p;
    }
  }
  TORCH_CHECK(false, "--projection-precision must be float32, bfloat16 or tf32, got '", name, "'");
}

MomentumProjection parse_momentum_projection(const std::string& name) {
  for (auto p : {MomentumProjection::gaussian, MomentumProjection::orthonormal, MomentumProjection::subspace}) {
    if (name == to_string(p)) {
      return p;
    }
  }
  TORCH_CHECK(false, "--momentum-projection must be gaussian, orthonormal or subspace, got '", name, "'");
}

FloraOptions flora_options(const OptimizerSpec& spec) {
  FloraOptions options(spec.lr);
  options.rank(spec.rank)
      .kappa(spec.kappa)
      .beta1(spec.beta1)
      .seed(spec.seed)
      .projection(spec.projection)
      .momentum_projection(spec.momentum_projection)
      .momentum_rescale(spec.momentum_rescale)
      .weight_decay(spec.weight_decay)
      .quantization(spec.quantization == "8bit")
      .quantization_min_size(spec.quantization_min_size)
      .projection_precision(spec.projection_precision)
      .max_aspect_ratio(spec.max_aspect_ratio)
      .stochastic_rounding(spec.stochastic_rounding);
  return options;
}

// Only what is the example's own; Flora's options are flora::validate's,
// and torch's Adam checks its own (but accepts lr = 0 and a NaN weight
// decay, which are refused here).
void validate(const OptimizerSpec& spec) {
  TORCH_CHECK(
      spec.name == "adam" || spec.name == "adamw" || spec.name == "flora", "unknown optimizer '", spec.name,
      "' (expected adam, adamw or flora)");
  const bool flora = spec.name == "flora";
  TORCH_CHECK(
      spec.quantization == "none" || spec.quantization == "8bit", "--quantization must be none or 8bit, got '",
      spec.quantization, "'");
  TORCH_CHECK(
      flora || spec.quantization != "8bit", "--quantization 8bit applies to flora only, not ", spec.name);
  TORCH_CHECK(flora || !spec.fused_backward, "--fused-backward applies to flora only, not ", spec.name);
  TORCH_CHECK(flora || !spec.stochastic_rounding, "--stochastic-rounding applies to flora only, not ", spec.name);
  TORCH_CHECK(
      flora || spec.max_aspect_ratio == 4.0, "--max-aspect-ratio applies to flora only, not ", spec.name);
  TORCH_CHECK(spec.micro_batches >= 1, "--grad-accum must be positive, got ", spec.micro_batches);
  TORCH_CHECK(spec.accumulation_rank >= 0, "--accumulation-rank must be >= 0, got ", spec.accumulation_rank);
  TORCH_CHECK(
      spec.accumulation_rank == 0 || spec.micro_batches > 1, "--accumulation-rank ", spec.accumulation_rank,
      " needs --grad-accum > 1: with one micro-batch there is nothing to accumulate");
  TORCH_CHECK(
      !spec.compression_rank || *spec.compression_rank > 0, "--compression-rank must be positive, got ",
      spec.compression_rank.value_or(0));
  TORCH_CHECK(
      !spec.overlap || !spec.fused_backward,
      "--overlap applies to gradients after backward; --fused-backward already exchanges each gradient inside "
      "backward");
  TORCH_CHECK(
      !spec.overlap || spec.accumulation_rank == 0,
      "--overlap applies to gradients after backward; with --accumulation-rank the accumulator's buffers are "
      "exchanged once, after the last micro-batch");
  TORCH_CHECK(
      !spec.compression_rank || spec.accumulation_rank == 0, "--compression-rank ", spec.compression_rank.value_or(0),
      " cannot be combined with --accumulation-rank ", spec.accumulation_rank,
      ": the accumulator's sketches are what is exchanged");
  TORCH_CHECK(
      !spec.compression_rank || !spec.fused_backward || spec.micro_batches == 1, "--compression-rank ",
      spec.compression_rank.value_or(0), " with --fused-backward and --grad-accum ", spec.micro_batches,
      ": the fused backward's accumulated gradients are exchanged as they are; compress them with "
      "--accumulation-rank instead");
  if (flora) {
    flora::validate(flora_options(spec), "flora");
  } else {
    TORCH_CHECK(std::isfinite(spec.lr) && spec.lr > 0, spec.name, ": lr must be positive and finite, got ", spec.lr);
    TORCH_CHECK(
        std::isfinite(spec.weight_decay) && spec.weight_decay >= 0, spec.name,
        ": weight_decay must be non-negative and finite, got ", spec.weight_decay);
  }
}

std::unique_ptr<TrainStepper> make_stepper(
    const OptimizerSpec& spec, const std::vector<torch::Tensor>& params, const DataParallel* parallel) {
  validate(spec);
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  if (spec.name == "adam") {
    optimizer = std::make_unique<torch::optim::Adam>(
        params, torch::optim::AdamOptions(spec.lr)
                    .betas({spec.adam_beta1, spec.adam_beta2})
                    .eps(spec.adam_eps)
                    .weight_decay(spec.weight_decay));
  } else if (spec.name == "adamw") {
    optimizer = std::make_unique<torch::optim::AdamW>(
        params, torch::optim::AdamWOptions(spec.lr)
                    .betas({spec.adam_beta1, spec.adam_beta2})
                    .eps(spec.adam_eps)
                    .weight_decay(spec.weight_decay));
  } else {
    const auto options = flora_options(spec);
    if (spec.fused_backward) {
      auto stepper = std::make_unique<FusedStepper>(spec, std::make_unique<Flora>(params, options));
      if (parallel != nullptr) {
        stepper->exchange_over(*parallel);
      }
      return stepper;
    }
    optimizer = std::make_unique<Flora>(params, options);
  }
  float32_adam_states(*optimizer);
  if (spec.accumulation_rank > 0) {
    auto stepper = std::make_unique<AccumulatingStepper>(spec, std::move(optimizer), params);
    if (parallel != nullptr) {
      stepper->exchange_over(*parallel);
    }
    return stepper;
  }
  auto stepper = std::make_unique<OptimizerStepper>(spec, std::move(optimizer));
  if (parallel != nullptr) {
    stepper->exchange_over(params, *parallel);
  }
  return stepper;
}

} // namespace flora::gpt2
