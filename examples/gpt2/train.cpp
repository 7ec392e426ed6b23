#include "train.h"

#include <flora/atomic_file.h>

#include <c10/util/Exception.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>

namespace flora::gpt2 {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

void synchronize(const torch::Device& device) {
  if (device.is_cuda()) {
    torch::cuda::synchronize(device.index() < 0 ? -1 : device.index());
  }
}

// ---------------------------------------------------------------- checkpoints
//
// One file per run: the parameters, the stepper's state (optimizer,
// accumulator and data-parallel exchange seeds), the step reached, the
// loss curve so far, and what the run must match to continue it exactly
// (its optimizer label, schedule, batch shape, seed, ranks, dtype).

constexpr int64_t kCheckpointFormat = 1;

using Identity = std::vector<std::pair<std::string, std::string>>;

Identity run_identity(const OptimizerSpec& spec, const TrainOptions& options, int64_t world, torch::Dtype dtype) {
  return {
      {"optimizer", spec.label()},
      {"steps", std::to_string(options.steps)},
      {"warm-up steps", std::to_string(options.warmup_steps)},
      {"batch size", std::to_string(options.batch_size)},
      {"block size", std::to_string(options.block_size)},
      {"micro-batches", std::to_string(options.grad_accum)},
      {"seed", std::to_string(options.seed)},
      {"ranks", std::to_string(world)},
      {"dtype", c10::toString(dtype)},
      {"activation checkpointing", options.activation_checkpointing ? "on" : "off"},
  };
}

// Archive keys cannot hold '.', parameter names do.
std::string parameter_key(std::string name) {
  for (auto& c : name) {
    c = c == '.' ? '/' : c;
  }
  return name;
}

void save_checkpoint(
    const std::string& path, GPT2LMHeadModel& model, const TrainStepper& stepper, const RunResult& result,
    int64_t step, const Identity& identity) {
  torch::serialize::OutputArchive archive;
  archive.write("format", c10::IValue(kCheckpointFormat));
  for (size_t i = 0; i < identity.size(); ++i) {
    archive.write("identity/" + std::to_string(i), c10::IValue(identity[i].first + "=" + identity[i].second));
  }
  archive.write("step", c10::IValue(step));
  archive.write("initial_eval_loss", c10::IValue(result.initial_eval_loss));
  archive.write("train_seconds", c10::IValue(result.train_seconds));
  auto records = torch::empty({static_cast<int64_t>(result.records.size()), 5}, torch::kDouble);
  auto r = records.accessor<double, 2>();
  for (size_t i = 0; i < result.records.size(); ++i) {
    const auto& rec = result.records[i];
    r[i][0] = static_cast<double>(rec.step);
    r[i][1] = rec.train_loss;
    r[i][2] = rec.eval_loss;
    r[i][3] = rec.lr;
    r[i][4] = rec.elapsed_s;
  }
  archive.write("records", records);
  torch::serialize::OutputArchive parameters;
  for (const auto& item : model->named_parameters()) {
    parameters.write(parameter_key(item.key()), item.value().detach().cpu());
  }
  archive.write("model", parameters);
  torch::serialize::OutputArchive state;
  stepper.save(state);
  archive.write("stepper", state);
  flora::save_atomic(archive, path); // a crash never leaves half a checkpoint
}

// Loads everything into `model`, `stepper` and `result` and returns the
// step reached. Every rank of a data-parallel run calls it.
int64_t load_checkpoint(
    const std::string& path, GPT2LMHeadModel& model, TrainStepper& stepper, RunResult& result,
    const Identity& identity) {
  torch::serialize::InputArchive archive;
  try {
    archive.load_from(path);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "cannot read the checkpoint '", path, "': ", e.what_without_backtrace());
  }
  auto read = [&](const std::string& key) {
    c10::IValue v;
    TORCH_CHECK(archive.try_read(key, v), "the checkpoint '", path, "' has no '", key, "'");
    return v;
  };
  const auto format = read("format");
  TORCH_CHECK(
      format.isInt() && format.toInt() == kCheckpointFormat, "the checkpoint '", path, "' has format ", format,
      "; this program reads format ", kCheckpointFormat);
  for (size_t i = 0; i < identity.size(); ++i) {
    const auto saved = read("identity/" + std::to_string(i));
    const std::string want = identity[i].first + "=" + identity[i].second;
    TORCH_CHECK(
        saved.isString() && saved.toStringRef() == want, "the checkpoint '", path, "' is of another run: it has ",
        saved.isString() ? saved.toStringRef() : std::string("?"), ", this run ", want,
        " (a run continues only with the flags it started with)");
  }
  const int64_t step = read("step").toInt();
  {
    torch::NoGradGuard no_grad;
    torch::serialize::InputArchive parameters;
    TORCH_CHECK(archive.try_read("model", parameters), "the checkpoint '", path, "' has no 'model'");
    for (auto& item : model->named_parameters()) {
      torch::Tensor saved;
      TORCH_CHECK(
          parameters.try_read(parameter_key(item.key()), saved), "the checkpoint '", path, "' has no parameter ",
          item.key());
      TORCH_CHECK(
          saved.sizes() == item.value().sizes() && saved.scalar_type() == item.value().scalar_type(),
          "the checkpoint '", path, "' has ", item.key(), " of shape ", saved.sizes(), " (", saved.scalar_type(),
          "), the model ", item.value().sizes(), " (", item.value().scalar_type(), ")");
      item.value().copy_(saved);
    }
  }
  torch::serialize::InputArchive state;
  TORCH_CHECK(archive.try_read("stepper", state), "the checkpoint '", path, "' has no 'stepper'");
  try {
    stepper.load(state);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "the checkpoint '", path, "': ", e.what_without_backtrace());
  }
  result.initial_eval_loss = read("initial_eval_loss").toDouble();
  result.train_seconds = read("train_seconds").toDouble();
  torch::Tensor records;
  TORCH_CHECK(archive.try_read("records", records), "the checkpoint '", path, "' has no 'records'");
  const auto r = records.accessor<double, 2>();
  for (int64_t i = 0; i < records.size(0); ++i) {
    StepRecord rec;
    rec.step = static_cast<int64_t>(r[i][0]);
    rec.train_loss = r[i][1];
    rec.eval_loss = r[i][2];
    rec.lr = r[i][3];
    rec.elapsed_s = r[i][4];
    result.records.push_back(rec);
  }
  return step;
}

} // namespace

double scheduled_lr(double base_lr, int64_t step, int64_t warmup_steps, int64_t total_steps) {
  if (warmup_steps > 0 && step <= warmup_steps) {
    return base_lr * static_cast<double>(step) / static_cast<double>(warmup_steps);
  }
  const int64_t decay_steps = total_steps - warmup_steps;
  if (decay_steps <= 0) {
    return base_lr;
  }
  const double progress =
      std::min(1.0, static_cast<double>(step - warmup_steps) / static_cast<double>(decay_steps));
  return base_lr * (0.1 + 0.9 * 0.5 * (1.0 + std::cos(M_PI * progress)));
}

double evaluate(GPT2LMHeadModel& model, const torch::Tensor& inputs, const torch::Tensor& targets,
                int64_t batch_size, const torch::Device& device) {
  torch::NoGradGuard no_grad;
  const bool was_training = model->is_training();
  model->eval();
  double total = 0;
  int64_t count = 0;
  for (int64_t start = 0; start < inputs.size(0); start += batch_size) {
    const int64_t end = std::min(inputs.size(0), start + batch_size);
    auto x = inputs.slice(0, start, end).to(device);
    auto y = targets.slice(0, start, end).to(device);
    auto logits = model->forward(x);
    auto loss = torch::nn::functional::cross_entropy(
        logits.reshape({-1, logits.size(-1)}).to(torch::kFloat), y.reshape({-1}),
        torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
    total += loss.item<double>();
    count += y.numel();
  }
  model->train(was_training);
  return total / static_cast<double>(count);
}

RunResult train(
    GPT2LMHeadModel& model,
    const TokenSplit& split,
    const OptimizerSpec& spec,
    const TrainOptions& options,
    const torch::Device& device,
    const std::function<void(const std::string&)>& log,
    const DataParallel* parallel) {
  TORCH_CHECK(options.steps > 0, "--steps must be positive, got ", options.steps);
  TORCH_CHECK(options.grad_accum > 0, "--grad-accum must be positive, got ", options.grad_accum);
  TORCH_CHECK(options.batch_size > 0, "--batch-size must be positive, got ", options.batch_size);
  TORCH_CHECK(
      options.block_size > 0 && options.block_size <= model->config().n_positions, "--block-size must be in [1, ",
      model->config().n_positions, "] (the model's n_positions), got ", options.block_size);
  TORCH_CHECK(split.train.numel() > 1, "the training text has no tokens");
  TORCH_CHECK(split.valid.numel() > 1, "the held-out text has no tokens");
  const int64_t eval_batch = options.eval_batch_size > 0 ? options.eval_batch_size : options.batch_size;
  const int64_t max_id = std::max(split.train.max().item<int64_t>(), split.valid.max().item<int64_t>());
  TORCH_CHECK(
      max_id < model->config().vocab_size, "the tokenizer produced id ", max_id, " but the model's vocab_size is ",
      model->config().vocab_size, " (tokenizer and model do not match)");

  RunResult result;
  result.name = spec.name;
  result.label = spec.label();
  auto emit = [&](const std::string& line) {
    if (log) {
      log(line);
    }
  };

  const int64_t rank = parallel ? parallel->rank() : 0;
  const int64_t world = parallel ? parallel->size() : 1;
  // Rank 0 evaluates: the replicas are identical, and the others wait for
  // it in the next step's exchange.
  const bool evaluates = rank == 0;
  result.world_size = world;

  model->set_activation_checkpointing(options.activation_checkpointing);
  BatchSampler sampler(split.train, options.block_size, options.batch_size, options.seed, rank, world);
  const auto [eval_x, eval_y] = eval_blocks(split.valid, options.block_size, options.eval_max_blocks);

  const RunMemory memory(device, model->parameters());
  OptimizerSpec step_spec = spec;
  step_spec.micro_batches = options.grad_accum;
  auto stepper = make_stepper(step_spec, model->parameters(), parallel); // broadcasts rank 0's parameters
  // --stats-every: Flora records each parameter's update RMS before clipping
  // and its clip factor, sampled below (observing only: the step is the same).
  auto* flora_optimizer = dynamic_cast<flora::Flora*>(&stepper->optimizer());
  const bool sample = options.stats_every > 0 && flora_optimizer != nullptr;
  std::vector<std::string> parameter_names;
  if (sample) {
    flora_optimizer->record_statistics(true);
    for (const auto& item : model->named_parameters()) {
      parameter_names.push_back(item.key());
    }
  }
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const Identity identity = run_identity(step_spec, options, world, model->parameters().front().scalar_type());
  int64_t first_step = 1;
  if (options.resume) {
    // Every rank loads (the exchange's seeds are checked to agree), then
    // rank 0's parameters go everywhere, as the library prescribes.
    result.resumed_at = load_checkpoint(options.checkpoint_file, model, *stepper, result, identity);
    stepper->broadcast_parameters();
    first_step = result.resumed_at + 1;
    sampler.skip((first_step - 1) * options.grad_accum);
    char line[320];
    std::snprintf(line, sizeof(line), "[%s] %s: resumed after step %lld from %s", spec.name.c_str(),
                  result.label.c_str(), static_cast<long long>(result.resumed_at), options.checkpoint_file.c_str());
    emit(line);
  } else {
    result.initial_eval_loss = evaluates ? evaluate(model, eval_x, eval_y, eval_batch, device) : nan;
    char line[256];
    std::snprintf(line, sizeof(line), "[%s] %s: initial eval loss %.4f", spec.name.c_str(), result.label.c_str(),
                  result.initial_eval_loss);
    emit(line);
  }
  const int64_t bytes_at_start = stepper->bytes_communicated(); // broadcasts are not a step's
  // This invocation ends after last_step (--stop-after), the schedule after options.steps.
  const int64_t last_step = options.stop_after > 0 ? std::min(options.stop_after, options.steps) : options.steps;
  TORCH_CHECK(
      first_step <= last_step + 1, "the checkpoint '", options.checkpoint_file, "' is at step ", first_step - 1,
      ", past --stop-after ", options.stop_after);

  model->train();
  // Over all ranks.
  const int64_t tokens_per_step = options.batch_size * options.block_size * options.grad_accum * world;
  double train_seconds = 0;
  double window_seconds = 0;
  int64_t window_steps = 0;
  double last_eval = nan;
  for (auto it = result.records.rbegin(); it != result.records.rend() && std::isnan(last_eval); ++it) {
    last_eval = it->eval_loss; // a resumed run's last evaluation
  }
  if (std::isnan(last_eval)) {
    last_eval = result.initial_eval_loss;
  }
  const double seconds_before = result.train_seconds; // of earlier invocations
  for (int64_t step = first_step; step <= last_step; ++step) {
    const auto start = Clock::now();
    const double lr = scheduled_lr(spec.lr, step, options.warmup_steps, options.steps);
    double loss_value = 0;
    try {
      stepper->set_lr(lr);
      stepper->begin_step();
      torch::Tensor step_loss = torch::zeros({}, torch::TensorOptions().device(device));
      for (int64_t micro = 0; micro < options.grad_accum; ++micro) {
        auto [x, y] = sampler.next();
        x = x.to(device, /*non_blocking=*/true);
        y = y.to(device, /*non_blocking=*/true);
        auto loss = model->loss(x, y) / static_cast<double>(options.grad_accum);
        stepper->backward(loss, micro + 1 == options.grad_accum);
        step_loss += loss.detach();
      }
      stepper->finish_step();
      loss_value = step_loss.item<double>(); // synchronises
      if (parallel) {
        // The mean over ranks: what the step trained on, and the same value
        // everywhere, so that every rank stops together on a non-finite loss.
        loss_value = parallel->mean(loss_value);
      }
      TORCH_CHECK(std::isfinite(loss_value), "the loss is ", loss_value, " (learning rate too high?)");
    } catch (const c10::Error& e) {
      result.failure = "stopped at step " + std::to_string(step) + ": " + e.what_without_backtrace();
      emit("[" + spec.name + "] " + result.failure);
      break;
    }
    const double seconds = seconds_since(start);
    if (sample && (step == 1 || step % options.stats_every == 0)) {
      auto rows = sample_statistics(*flora_optimizer, step, parameter_names, model->parameters());
      result.statistics.insert(result.statistics.end(), rows.begin(), rows.end());
    }
    train_seconds += seconds;
    window_seconds += seconds;
    ++window_steps;

    StepRecord record;
    record.step = step;
    record.train_loss = loss_value;
    record.lr = lr;
    record.elapsed_s = seconds_before + train_seconds;
    const bool do_eval = evaluates && (step == options.steps || step == last_step ||
                                       (options.eval_every > 0 && step % options.eval_every == 0));
    if (do_eval) {
      record.eval_loss = evaluate(model, eval_x, eval_y, eval_batch, device);
      last_eval = record.eval_loss;
    }
    result.records.push_back(record);

    if (!options.checkpoint_file.empty() &&
        (step == last_step || (options.checkpoint_every > 0 && step % options.checkpoint_every == 0))) {
      result.train_seconds = seconds_before + train_seconds;
      if (rank == 0) {
        save_checkpoint(options.checkpoint_file, model, *stepper, result, step, identity);
      }
    }
    if ((options.log_every > 0 && step % options.log_every == 0) || step == last_step) {
      const auto peak = memory.peak();
      char eval_text[48] = "";
      if (do_eval) {
        std::snprintf(eval_text, sizeof(eval_text), "  eval %.4f (ppl %.2f)", record.eval_loss,
                      std::exp(record.eval_loss));
      }
      char line[320];
      std::snprintf(
          line, sizeof(line), "[%s] step %5lld/%lld  loss %.4f%s  %7.0f tok/s  lr %.2e  mem %s", spec.name.c_str(),
          static_cast<long long>(step), static_cast<long long>(options.steps), loss_value, eval_text,
          static_cast<double>(tokens_per_step * window_steps) / window_seconds, lr, format_bytes(peak.bytes).c_str());
      emit(line);
      window_seconds = 0;
      window_steps = 0;
    }
  }
  synchronize(device);
  result.peak = memory.peak();
  result.state_bytes = stepper->state_bytes();
  result.train_seconds = seconds_before + train_seconds;
  // The steps of this invocation (the speed figures), and all the run's.
  const int64_t done = static_cast<int64_t>(result.records.size()) - result.resumed_at;
  const auto recorded = static_cast<int64_t>(result.records.size());
  result.parameter_digest = tensor_digest(model->parameters());
  if (parallel) {
    if (done > 0) {
      result.bytes_per_step =
          static_cast<double>(stepper->bytes_communicated() - bytes_at_start) / static_cast<double>(done);
    }
    // Data-parallel training keeps the replicas identical bit for bit; check
    // that it did (a collective: every rank gets here, failed or not, since
    // the loss that stops a run is the same on every rank).
    if (!parallel->all_equal(result.parameter_digest) && result.failure.empty()) {
      result.failure = "finished with parameters that differ between the ranks (data-parallel replicas out of sync)";
      emit("[" + spec.name + "] " + result.failure);
    }
  }
  result.ms_per_step = done > 0 ? 1000.0 * train_seconds / static_cast<double>(done) : nan;
  result.tokens_per_s = done > 0 ? static_cast<double>(tokens_per_step * done) / train_seconds : nan;
  const int64_t window = std::min(options.final_loss_window, recorded);
  double sum = 0;
  for (int64_t i = recorded - window; i < recorded; ++i) {
    sum += result.records[i].train_loss;
  }
  result.final_train_loss = window > 0 ? sum / static_cast<double>(window) : nan;
  result.eval_loss = result.failure.empty() ? last_eval : nan;
  result.eval_perplexity = std::exp(result.eval_loss);
  model->eval();
  return result;
}

} // namespace flora::gpt2
