#include "finetune.h"

#include "file_io.h"
#include "init_config.h"
#include "plot.h"
#include "report.h"
#include "safetensors.h"
#include "train.h"

#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>

#include <sys/stat.h>
#include <unistd.h>

namespace flora::gpt2 {
namespace {

// Why a path given for a file or a directory is not one.
std::string not_found(const std::string& path, bool want_dir) {
  if (want_dir) {
    return is_file(path) ? "is a file, not a directory" : "no such directory";
  }
  return is_dir(path) ? "is a directory, not a file" : "no such file";
}

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) {
    out += (out.empty() ? "" : ",") + item;
  }
  return out;
}

// Runs `load`; a c10::Error becomes a UsageError naming the flag and value.
template <typename Fn>
auto attributed(const std::string& flag, const std::string& value, Fn&& load) {
  try {
    return load();
  } catch (const c10::Error& e) {
    throw_usage_error(flag, value, e.what_without_backtrace());
  }
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

std::string parent_of(std::string path) {
  while (path.size() > 1 && path.back() == '/') {
    path.pop_back();
  }
  const auto slash = path.rfind('/');
  if (slash == std::string::npos) {
    return ".";
  }
  return slash == 0 ? "/" : path.substr(0, slash);
}

// An output directory must exist or be creatable: checked before training
// rather than discovered after it.
void check_output_dir(const std::string& flag, const std::string& path) {
  std::string p = path;
  while (!exists(p) && p != parent_of(p)) {
    p = parent_of(p);
  }
  if (!is_dir(p)) {
    throw_usage_error(flag, path, "'" + p + "' exists and is not a directory");
  }
  if (::access(p.c_str(), W_OK | X_OK) != 0) {
    throw_usage_error(flag, path, "cannot create or write in '" + p + "'");
  }
}

// " (rank k)" in a data-parallel run, where each rank reports its own
// failures; "" otherwise.
std::string rank_suffix() {
  const char* rank = std::getenv("RANK");
  const char* world = std::getenv("WORLD_SIZE");
  if (rank == nullptr || world == nullptr || std::string(world) == "1") {
    return "";
  }
  return std::string(" (rank ") + rank + ")";
}

void log_line(const std::string& line) {
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

// Logits of the fixture's input_ids by the model saved in `dir`, reloaded
// from disk on the CPU in float32: what tests/fixtures/gpt2/generate.py
// --check-saved compares with transformers' logits.
void write_check_logits(const std::string& dir, const std::string& input_file) {
  auto input_ids = SafetensorsReader(input_file).load("input_ids").to(torch::kLong);
  auto model = load_pretrained(dir, torch::kFloat, torch::kCPU);
  model->eval();
  torch::NoGradGuard no_grad;
  auto logits = model->forward(input_ids).contiguous();
  const std::vector<std::pair<std::string, torch::Tensor>> tensors = {{"input_ids", input_ids}, {"logits", logits}};
  save_safetensors(join_path(dir, "flora_check_logits.safetensors"), tensors);
}

// The model's configuration and a description of where it comes from.
std::pair<GPT2Config, std::string> resolve_config(const Settings& s, const Tokenizer& tokenizer) {
  if (s.init_config.empty()) {
    if (!is_dir(s.model_dir)) {
      throw_usage_error("--model-dir", s.model_dir, not_found(s.model_dir, true));
    }
    auto config = attributed("--model-dir", s.model_dir, [&] {
      auto c = load_config(join_path(s.model_dir, "config.json"));
      // The weights' headers now (cheap), the tensors per run.
      for (const auto& file : weight_files(s.model_dir)) {
        SafetensorsReader{file};
      }
      return c;
    });
    return {config, s.model_dir};
  }
  GPT2Config config;
  if (s.init_config == "custom") {
    config = attributed("--init-config", "custom", [&] {
      return sized_config(*s.n_layer, *s.n_embd, *s.n_head, s.n_positions.value_or(1024),
                          s.vocab_size.value_or(tokenizer.vocab_size()));
    });
  } else {
    config = attributed("--init-config", s.init_config, [&] { return named_config(s.init_config); });
  }
  if (config.source_json.empty() && tokenizer.eos_id() >= 0) {
    // Saved with the model: transformers' defaults (50256) would not match a
    // tokenizer of another size.
    config.source_json = nlohmann::json{{"bos_token_id", tokenizer.eos_id()}, {"eos_token_id", tokenizer.eos_id()}}.dump();
  }
  return {config, "untrained " + s.init_config + " (--init-config)"};
}

} // namespace

RunPlan prepare_run(const Settings& settings) {
  RunPlan plan;
  plan.settings = settings;
  const Settings& s = plan.settings;

  if (s.device == "cuda" || (s.device == "auto" && torch::cuda::is_available())) {
    if (!torch::cuda::is_available()) {
      throw_usage_error("--device", s.device, "no CUDA device is available");
    }
    plan.device = torch::Device(torch::kCUDA, 0);
  }
  plan.dtype = s.dtype == "bfloat16" ? torch::kBFloat16 : torch::kFloat;

  // The tokenizer (the custom configuration's vocabulary defaults to its size).
  const bool tokenizer_given = !s.tokenizer_dir.empty();
  plan.tokenizer_dir = tokenizer_given ? s.tokenizer_dir
      : s.init_config.empty()          ? s.model_dir
                                       : shipped_path("assets/tiny-gpt2");
  const std::string tokenizer_flag = tokenizer_given ? "--tokenizer-dir" : "--model-dir";
  if (s.init_config.empty() || tokenizer_given) {
    if (!is_dir(plan.tokenizer_dir)) {
      throw_usage_error(tokenizer_flag, plan.tokenizer_dir, not_found(plan.tokenizer_dir, true));
    }
  }
  plan.tokenizer.emplace(
      attributed(tokenizer_flag, plan.tokenizer_dir, [&] { return Tokenizer::from_dir(plan.tokenizer_dir); }));
  const Tokenizer& tokenizer = *plan.tokenizer;

  std::tie(plan.config, plan.model_source) = resolve_config(s, tokenizer);
  const GPT2Config& config = plan.config;
  // Which flag decided the model's shape, for the messages below.
  const std::string model_flag = !s.init_config.empty() ? "--init-config" : "--model-dir";
  const std::string model_value = !s.init_config.empty() ? s.init_config : s.model_dir;
  if (tokenizer.vocab_size() > config.vocab_size) {
    const std::string flag = s.vocab_size ? "--vocab-size" : model_flag;
    const std::string value = s.vocab_size ? std::to_string(*s.vocab_size) : model_value;
    throw_usage_error(flag, value,
         "the model's vocab_size " + std::to_string(config.vocab_size) + " is smaller than the tokenizer's " +
             std::to_string(tokenizer.vocab_size()) + " tokens (from '" + plan.tokenizer_dir +
             "'); the model must have a row for every token");
  }
  if (s.train.block_size > config.n_positions) {
    const std::string source = s.n_positions ? "--n-positions '" + std::to_string(*s.n_positions) + "'"
                                             : model_flag + " '" + model_value + "'";
    throw_usage_error("--block-size", std::to_string(s.train.block_size),
         "longer than the model's n_positions " + std::to_string(config.n_positions) + " (" + source + ")");
  }

  check_output_dir("--out", s.out);
  if (!s.save_model.empty()) {
    check_output_dir("--save-model", s.save_model);
  }
  if (!s.parameter_checksums.empty()) {
    check_output_dir("--parameter-checksums", s.parameter_checksums);
  }
  if (!s.checkpoint.empty()) {
    check_output_dir("--checkpoint", s.checkpoint);
  }
  if (s.resume) {
    for (const auto& name : s.optimizers) {
      const std::string file = join_path(s.checkpoint, name + ".pt");
      if (!is_file(file)) {
        throw UsageError("--resume: no checkpoint of the " + name + " run in --checkpoint '" + s.checkpoint +
                         "' (" + file + ": " + not_found(file, false) + ")");
      }
    }
  }

  // A data-parallel run: the launcher's variables (checked here, before
  // anything is trained; the job is joined when training starts).
  plan.launch = launch_from_env();
  if (!plan.launch) {
    const std::string why = " applies to data-parallel runs, started by torchrun (scripts/torchrun.sh --standalone "
                            "--nproc-per-node N gpt2-finetune ...), and RANK/WORLD_SIZE are not set";
    if (s.compression_rank) {
      throw_usage_error("--compression-rank", std::to_string(*s.compression_rank), why.substr(1));
    }
    if (s.overlap) {
      throw UsageError("--overlap" + why);
    }
  }
  if (s.check_logits) {
    attributed("--check-input", s.check_input, [&] {
      SafetensorsReader reader(s.check_input);
      const auto ids = reader.load("input_ids");
      TORCH_CHECK(
          ids.dim() == 2 && !at::isFloatingType(ids.scalar_type()), "input_ids must be a 2-d integer tensor, got ",
          ids.scalar_type(), " of shape ", ids.sizes());
      TORCH_CHECK(ids.size(1) <= config.n_positions, "input_ids has ", ids.size(1),
                  " positions, more than the model's n_positions ", config.n_positions);
      TORCH_CHECK(ids.numel() == 0 || (ids.min().item<int64_t>() >= 0 && ids.max().item<int64_t>() < config.vocab_size),
                  "input_ids holds ids outside the model's vocabulary [0, ", config.vocab_size, ")");
      return 0;
    });
  }

  for (const auto& name : s.optimizers) {
    OptimizerSpec spec;
    spec.name = name;
    spec.lr = s.lr ? *s.lr : (name == "flora" ? s.flora_lr : s.adam_lr);
    spec.weight_decay = s.weight_decay;
    spec.accumulation_rank = s.accumulation_rank;
    spec.micro_batches = s.train.grad_accum;
    spec.compression_rank = s.compression_rank;
    spec.overlap = s.overlap;
    if (name == "flora") {
      spec.rank = s.rank > 0 ? std::optional<int64_t>(s.rank) : std::nullopt;
      spec.kappa = s.kappa;
      spec.beta1 = s.beta1 > 0 ? std::optional<double>(s.beta1) : std::nullopt;
      spec.seed = s.flora_seed;
      spec.projection = parse_projection(s.projection);
      spec.quantization = s.quantization;
      spec.quantization_min_size = s.quantization_min_size;
      spec.projection_precision = parse_projection_precision(s.projection_precision);
      spec.fused_backward = s.fused_backward;
      spec.max_aspect_ratio = s.max_aspect_ratio;
      spec.stochastic_rounding = s.stochastic_rounding;
      spec.momentum_projection = parse_momentum_projection(s.momentum_projection);
      spec.momentum_rescale = s.momentum_rescale;
    }
    // The command line has checked every value: an error here is a bug, or
    // a rule of the library that the command line does not know.
    attributed(s.optimizers.size() == 1 ? "--optimizer" : "--compare", join(s.optimizers), [&] {
      validate(spec);
      return 0;
    });
    plan.specs.push_back(spec);
  }

  // The corpus, encoded once for all runs.
  const auto t0 = std::chrono::steady_clock::now();
  for (const auto& file : s.train_files) {
    if (!is_file(file)) {
      throw_usage_error("--train-file", file, not_found(file, false));
    }
  }
  const std::string train_value = join(s.train_files);
  auto train = attributed("--train-file", train_value, [&] { return encode_files(tokenizer, s.train_files); });
  torch::Tensor valid;
  if (!s.valid_file.empty()) {
    if (!is_file(s.valid_file)) {
      throw_usage_error("--valid-file", s.valid_file, not_found(s.valid_file, false));
    }
    valid = attributed("--valid-file", s.valid_file, [&] { return encode_files(tokenizer, {s.valid_file}); });
  }
  plan.split = split_tokens(train, valid, s.valid_file, s.valid_fraction);
  plan.encode_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  const auto& t = s.train;
  const int64_t need = min_training_tokens(t.block_size, t.batch_size);
  if (plan.split.train.numel() < need) {
    throw_usage_error("--train-file", train_value,
         std::to_string(plan.split.train.numel()) + " training tokens are too few for one batch of --batch-size " +
             std::to_string(t.batch_size) + " sequences of --block-size " + std::to_string(t.block_size) +
             " + 1 tokens (at least " + std::to_string(need) + " are needed" +
             (s.valid_file.empty() ? ", after --valid-fraction's share" : "") + ")");
  }
  if (plan.split.valid.numel() < t.block_size + 1) {
    const std::string flag = s.valid_file.empty() ? "--valid-fraction" : "--valid-file";
    const std::string value = s.valid_file.empty() ? format_number(s.valid_fraction) : s.valid_file;
    throw_usage_error(flag, value,
         std::to_string(plan.split.valid.numel()) + " held-out tokens are fewer than one block of --block-size " +
             std::to_string(t.block_size) + " + 1 tokens");
  }
  return plan;
}

GPT2LMHeadModel initial_model(const RunPlan& plan, LoadReport* report, std::optional<torch::Device> on) {
  const torch::Device device = on.value_or(plan.device);
  if (plan.settings.init_config.empty()) {
    return load_pretrained(plan.settings.model_dir, plan.dtype, device, report);
  }
  torch::manual_seed(plan.settings.train.seed);
  GPT2LMHeadModel model = attributed("--init-config", plan.settings.init_config, [&] {
    GPT2LMHeadModel m(plan.config); // GPT-2's initialisation, from torch's generator
    m->to(device, plan.dtype);
    return m;
  });
  if (report != nullptr) {
    report->stored_dtype.clear();
    report->skipped.clear();
  }
  return model;
}

namespace {

// The text of a rank's parameter checksum file: the digest of all
// parameters, then one per parameter (to find which one differs).
std::string checksum_text(const RunResult& result, GPT2LMHeadModel& model) {
  std::string text;
  char line[512];
  std::snprintf(line, sizeof(line), "all %016llx\n", static_cast<unsigned long long>(result.parameter_digest));
  text += line;
  for (const auto& item : model->named_parameters()) {
    std::snprintf(line, sizeof(line), "%s %016llx\n", item.key().c_str(),
                  static_cast<unsigned long long>(tensor_digest({item.value()})));
    text += line;
  }
  return text;
}

} // namespace

int run_all(const RunPlan& plan) {
  const Settings& s = plan.settings;
  const auto& config = plan.config;
  // A data-parallel run joins the job first (a collective); only rank 0
  // speaks and writes.
  std::unique_ptr<DataParallel> parallel;
  if (plan.launch) {
    parallel = DataParallel::join(*plan.launch, plan.device);
  }
  const torch::Device device = parallel ? parallel->device() : plan.device;
  const int64_t rank = parallel ? parallel->rank() : 0;
  const bool speaks = rank == 0;
  auto say = [&](const char* format, auto... args) {
    if (speaks) {
      std::printf(format, args...);
    }
  };
  if (s.threads > 0) {
    torch::set_num_threads(static_cast<int>(s.threads));
  } else if (config.n_embd < 256 && device.is_cpu()) {
    torch::set_num_threads(1); // see README: the small operations gain nothing from more
  }
  say("model %s: %lld layers, %lld heads, n_embd %lld, vocab %lld, n_positions %lld, %s\n", plan.model_source.c_str(),
      static_cast<long long>(config.n_layer), static_cast<long long>(config.n_head),
      static_cast<long long>(config.n_embd), static_cast<long long>(config.vocab_size),
      static_cast<long long>(config.n_positions), config.activation_function.c_str());
  say("tokenizer %s: %lld tokens\n", plan.tokenizer_dir.c_str(), static_cast<long long>(plan.tokenizer->vocab_size()));
  say("data: %lld training tokens, %lld held-out tokens (%s); encoded in %.2f s\n",
      static_cast<long long>(plan.split.train.numel()), static_cast<long long>(plan.split.valid.numel()),
      plan.split.valid_source.c_str(), plan.encode_seconds);
  const auto& t = s.train;
  say("device %s, %s, threads %d; %lld steps of %lld x %lld tokens x %lld micro-batches; warm-up %lld, seed %llu%s\n",
      device.str().c_str(), s.dtype.c_str(), torch::get_num_threads(), static_cast<long long>(t.steps),
      static_cast<long long>(t.batch_size), static_cast<long long>(t.block_size), static_cast<long long>(t.grad_accum),
      static_cast<long long>(t.warmup_steps), static_cast<unsigned long long>(t.seed),
      t.activation_checkpointing ? ", activation checkpointing" : "");
  if (parallel) {
    const std::string exchange = s.compression_rank
        ? "gradients of compressible matrices as rank-" + std::to_string(*s.compression_rank) + " sketches"
        : s.accumulation_rank > 0 ? "the rank-" + std::to_string(s.accumulation_rank) + " accumulators' sketches"
                                  : std::string("plain gradients");
    say("data parallel: %lld ranks (%s), each on its own shard of the batches (a step sees %lld x %lld "
        "sequences); exchange: %s%s%s\n",
        static_cast<long long>(parallel->size()), parallel->backend().c_str(),
        static_cast<long long>(parallel->size()), static_cast<long long>(t.batch_size * t.grad_accum),
        exchange.c_str(), s.overlap ? ", overlapped with backward" : "",
        s.fused_backward ? ", inside the fused backward" : "");
  }
  say("%s", "\n");
  std::fflush(stdout);
  const std::function<void(const std::string&)> log = speaks ? log_line : std::function<void(const std::string&)>();

  std::vector<RunResult> results;
  for (const auto& spec : plan.specs) {
    torch::manual_seed(t.seed);
    LoadReport report;
    auto model = initial_model(plan, &report, device);
    if (results.empty()) {
      if (s.init_config.empty()) {
        std::string skipped;
        for (size_t i = 0; i < report.skipped.size() && i < 4; ++i) {
          skipped += (i ? ", " : ": ") + report.skipped[i];
        }
        if (report.skipped.size() > 4) {
          skipped += ", ...";
        }
        say("weights: stored as %s, trained in %s; %zu tensor(s) in the file skipped%s\n", report.stored_dtype.c_str(),
            s.dtype.c_str(), report.skipped.size(), skipped.c_str());
      } else {
        say("weights: GPT-2's initialisation (seed %llu), trained in %s\n", static_cast<unsigned long long>(t.seed),
            s.dtype.c_str());
      }
    }
    TrainOptions run_options = t;
    if (!s.checkpoint.empty()) {
      run_options.checkpoint_file = join_path(s.checkpoint, spec.name + ".pt");
      run_options.resume = s.resume;
      if (speaks) {
        attributed("--checkpoint", s.checkpoint, [&] {
          make_dirs(s.checkpoint);
          return 0;
        });
      }
    }
    results.push_back(train(model, plan.split, spec, run_options, device, log, parallel.get()));
    if (!s.parameter_checksums.empty()) {
      // Every rank writes its own: a test (or a user) compares them.
      attributed("--parameter-checksums", s.parameter_checksums, [&] {
        make_dirs(s.parameter_checksums);
        write_file_atomic(
            join_path(s.parameter_checksums, spec.name + ".rank" + std::to_string(rank) + ".txt"),
            checksum_text(results.back(), model));
        return 0;
      });
    }
    if (speaks && !s.save_model.empty() && results.back().failure.empty()) {
      const std::string dir = plan.specs.size() == 1 ? s.save_model : join_path(s.save_model, spec.name);
      save_pretrained(model, *plan.tokenizer, dir, s.init_config.empty() ? s.model_dir : plan.tokenizer_dir);
      std::printf("[%s] saved the trained model to %s\n", spec.name.c_str(), dir.c_str());
      if (s.check_logits) {
        write_check_logits(dir, s.check_input);
        std::printf("[%s] wrote %s/flora_check_logits.safetensors\n", spec.name.c_str(), dir.c_str());
      }
    }
    say("%s", "\n");
  }

  int status = 0;
  for (const auto& r : results) {
    if (!r.failure.empty()) {
      status = 1;
    }
  }
  if (!speaks) {
    return status;
  }
  print_table(stdout, results);
  attributed("--out", s.out, [&] {
    make_dirs(s.out);
    return 0;
  });
  write_metrics_csv(join_path(s.out, "metrics.csv"), results);
  write_summary_csv(join_path(s.out, "summary.csv"), results);
  write_loss_svg(join_path(s.out, "loss.svg"), results);
  std::string files = "metrics.csv, summary.csv, loss.svg";
  if (s.train.stats_every > 0) {
    write_statistics_csv(join_path(s.out, "statistics.csv"), results);
    files += ", statistics.csv";
  }
  if (png_supported()) {
    write_loss_png(join_path(s.out, "loss.png"), results);
    files += ", loss.png";
  } else {
    files += " (no loss.png: this build has no cairo)";
  }
  std::printf("\nwrote %s in %s\n", files.c_str(), s.out.c_str());
  std::fflush(stdout);
  for (const auto& r : results) {
    if (!r.failure.empty()) {
      std::fprintf(stderr, "error: the %s run %s\n", r.name.c_str(), r.failure.c_str());
    }
  }
  return status;
}

int run_program(const std::vector<std::string>& args) {
  try {
    const auto command_line = parse_command_line(args);
    if (command_line.help) {
      std::printf("%s", command_line.help_text.c_str());
      return 0;
    }
    return run_all(prepare_run(command_line.settings));
  } catch (const UsageError& e) {
    // The same on every rank of a data-parallel run (same flags, same
    // files): rank 0 says it.
    const char* rank = std::getenv("RANK");
    if (rank == nullptr || std::string(rank) == "0") {
      std::fprintf(stderr, "error: %s\n", e.what());
    }
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "error%s: %s\n", rank_suffix().c_str(), e.what_without_backtrace());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error%s: %s\n", rank_suffix().c_str(), e.what());
  }
  return 1;
}

} // namespace flora::gpt2
