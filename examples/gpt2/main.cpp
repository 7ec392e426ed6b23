// gpt2-finetune: fine-tunes a Hugging Face GPT-2 with Adam, AdamW or Flora
// and compares them side by side. See README.md beside this file.
//
// Default (no arguments): the shipped tiny GPT-2 (assets/tiny-gpt2) on the
// shipped corpus (data/train.txt, held-out data/valid.txt), Adam against
// Flora on the same batches, report in ./gpt2-out.

#include "data.h"
#include "file_io.h"
#include "plot.h"
#include "pretrained.h"
#include "report.h"
#include "safetensors.h"
#include "stepper.h"
#include "tokenizer.h"
#include "train.h"

#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace gpt2 = flora::gpt2;

namespace {

const std::string kSourceDir = FLORA_GPT2_SOURCE_DIR;

struct Cli {
  std::string optimizer;
  std::string compare;
  std::optional<double> lr;
  double adam_lr = 3e-3;
  double flora_lr = 8e-2; // relative to each parameter's RMS (Flora's scale_parameter)
  double weight_decay = 0.0;
  int64_t rank = 32;
  int64_t kappa = 1000;
  double beta1 = 0.9;
  int64_t flora_seed = 0;
  std::string projection = "philox";
  std::string quantization = "none";
  int64_t accumulation_rank = 0;
  bool fused_backward = false;
  gpt2::TrainOptions train;
  std::string device = "auto";
  std::string model_dir = kSourceDir + "/assets/tiny-gpt2";
  std::vector<std::string> train_files = {kSourceDir + "/data/train.txt"};
  std::string valid_file = kSourceDir + "/data/valid.txt";
  double valid_fraction = 0.1;
  std::string out = "gpt2-out";
  std::string save_model;
  bool check_logits = false;
  std::string check_input = kSourceDir + "/../../tests/fixtures/gpt2/logits.safetensors";
  int threads = 0;

  Cli() {
    train.steps = 1000;
    train.warmup_steps = 50;
    train.eval_every = 100;
    train.log_every = 100;
  }
};

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (!item.empty()) {
      out.push_back(item);
    }
  }
  return out;
}

void log_line(const std::string& line) {
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

// Logits of the fixture's input_ids by the model saved in `dir`, reloaded
// from disk on the CPU in float32: what tests/fixtures/gpt2/generate.py
// --check-saved compares with transformers' logits.
void write_check_logits(const std::string& dir, const std::string& input_file) {
  auto input_ids = gpt2::SafetensorsReader(input_file).load("input_ids").to(torch::kLong);
  auto model = gpt2::load_pretrained(dir, torch::kFloat, torch::kCPU);
  model->eval();
  torch::NoGradGuard no_grad;
  auto logits = model->forward(input_ids).contiguous();
  const std::vector<std::pair<std::string, torch::Tensor>> tensors = {{"input_ids", input_ids}, {"logits", logits}};
  gpt2::save_safetensors(gpt2::join_path(dir, "flora_check_logits.safetensors"), tensors);
}

} // namespace

int main(int argc, char** argv) {
  Cli cli;
  CLI::App app{
      "gpt2-finetune: fine-tune a Hugging Face GPT-2 with Adam, AdamW or Flora, and compare them.\n"
      "Without arguments: the shipped tiny GPT-2 on the shipped corpus, adam vs flora."};
  app.option_defaults()->always_capture_default();
  auto* opt_optimizer =
      app.add_option("--optimizer", cli.optimizer, "one optimizer: adam, adamw or flora (default: --compare)")
          ->check(CLI::IsMember({"adam", "adamw", "flora"}));
  app.add_option("--compare", cli.compare, "comma-separated optimizers to run on the same data and seed")
      ->excludes(opt_optimizer)
      ->default_str("adam,flora");
  app.add_option("--lr", cli.lr, "peak learning rate of every optimizer (overrides --adam-lr/--flora-lr)");
  app.add_option("--adam-lr", cli.adam_lr, "peak learning rate of adam/adamw");
  app.add_option("--flora-lr", cli.flora_lr, "peak learning rate of flora (relative to each parameter's RMS)");
  app.add_option("--weight-decay", cli.weight_decay, "weight decay (adam: L2; adamw, flora: decoupled)");
  app.add_option("--rank", cli.rank, "flora: rank of the compressed momentum (0: no compression)");
  app.add_option("--kappa", cli.kappa, "flora: resample the projection every kappa steps");
  app.add_option("--beta1", cli.beta1, "flora: momentum (0: none)");
  app.add_option("--flora-seed", cli.flora_seed, "flora: seed of the random projections");
  app.add_option("--projection", cli.projection, "flora: philox or reference")
      ->check(CLI::IsMember({"philox", "reference"}));
  app.add_option("--quantization", cli.quantization, "flora: none or 8bit (blockwise 8-bit optimizer states)")
      ->check(CLI::IsMember({"none", "8bit"}));
  app.add_option("--accumulation-rank", cli.accumulation_rank,
                 "compress the gradient accumulation of --grad-accum micro-batches to this rank (any optimizer)");
  app.add_flag("--fused-backward", cli.fused_backward,
               "flora: update each parameter inside backward and release its gradient at once");
  app.add_option("--steps", cli.train.steps, "optimizer steps per run");
  app.add_option("--batch-size", cli.train.batch_size, "sequences per micro-batch");
  app.add_option("--block-size", cli.train.block_size, "tokens per sequence (<= the model's n_positions)");
  app.add_option("--grad-accum", cli.train.grad_accum, "micro-batches per step (gradients summed, scaled by 1/N)");
  app.add_option("--warmup-steps", cli.train.warmup_steps, "linear warm-up steps (then cosine decay to 10%)");
  app.add_option("--eval-every", cli.train.eval_every, "evaluate every N steps (0: only at the end)");
  app.add_option("--eval-max-blocks", cli.train.eval_max_blocks, "evaluate on at most N held-out blocks (0: all)");
  app.add_option("--log-every", cli.train.log_every, "progress line every N steps (0: none)");
  app.add_flag("--activation-checkpointing", cli.train.activation_checkpointing,
               "recompute transformer blocks in backward instead of storing activations");
  app.add_option("--seed", cli.train.seed, "seed of the batch order");
  app.add_option("--device", cli.device, "cpu, cuda or auto (cuda when available)")
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}));
  app.add_option("--model-dir", cli.model_dir, "Hugging Face GPT-2 directory (config.json, model.safetensors, "
                                               "vocab.json, merges.txt)");
  app.add_option("--train-file", cli.train_files, "training text file(s)");
  app.add_option("--valid-file", cli.valid_file, "held-out text file (\"\": use --valid-fraction of the training text)");
  app.add_option("--valid-fraction", cli.valid_fraction, "held-out fraction of the training text without --valid-file");
  app.add_option("--out", cli.out, "directory for metrics.csv, summary.csv, loss.svg, loss.png");
  app.add_option("--save-model", cli.save_model,
                 "save the fine-tuned model as a Hugging Face directory (with several optimizers: DIR/<optimizer>)");
  app.add_flag("--check-logits", cli.check_logits,
               "with --save-model: also write flora_check_logits.safetensors (logits of --check-input's input_ids)");
  app.add_option("--check-input", cli.check_input, "safetensors file with the input_ids for --check-logits");
  app.add_option("--threads", cli.threads,
                 "CPU threads (0: auto: 1 for models with n_embd < 256, whose small operations gain nothing from "
                 "more, else LibTorch's default)");
  CLI11_PARSE(app, argc, argv);

  try {
    torch::Device device(torch::kCPU);
    if (cli.device == "cuda" || (cli.device == "auto" && torch::cuda::is_available())) {
      TORCH_CHECK(torch::cuda::is_available(), "--device cuda: no CUDA device is available");
      device = torch::Device(torch::kCUDA, 0);
    }
    TORCH_CHECK(!cli.check_logits || !cli.save_model.empty(), "--check-logits needs --save-model DIR");

    // The optimizers, all validated before anything runs.
    const auto names = cli.optimizer.empty() ? split_list(cli.compare.empty() ? "adam,flora" : cli.compare)
                                             : std::vector<std::string>{cli.optimizer};
    TORCH_CHECK(!names.empty(), "--compare: no optimizer given");
    std::vector<gpt2::OptimizerSpec> specs;
    for (const auto& name : names) {
      gpt2::OptimizerSpec spec;
      spec.name = name;
      spec.lr = cli.lr ? *cli.lr : (name == "flora" ? cli.flora_lr : cli.adam_lr);
      spec.weight_decay = cli.weight_decay;
      spec.rank = cli.rank > 0 ? std::optional<int64_t>(cli.rank) : std::nullopt;
      spec.kappa = cli.kappa;
      spec.beta1 = cli.beta1 > 0 ? std::optional<double>(cli.beta1) : std::nullopt;
      spec.seed = cli.flora_seed;
      spec.projection = gpt2::parse_projection(cli.projection);
      spec.quantization = cli.quantization;
      spec.accumulation_rank = cli.accumulation_rank;
      spec.fused_backward = cli.fused_backward;
      spec.micro_batches = cli.train.grad_accum;
      gpt2::validate(spec);
      specs.push_back(spec);
    }

    const auto t0 = std::chrono::steady_clock::now();
    const auto config = gpt2::load_config(gpt2::join_path(cli.model_dir, "config.json"));
    if (cli.threads > 0) {
      torch::set_num_threads(cli.threads);
    } else if (config.n_embd < 256 && device.is_cpu()) {
      torch::set_num_threads(1);
    }
    const auto tokenizer = gpt2::Tokenizer::from_dir(cli.model_dir);
    const auto split = gpt2::make_split(tokenizer, cli.train_files, cli.valid_file, cli.valid_fraction);
    const double encode_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf(
        "model %s: %lld layers, %lld heads, n_embd %lld, vocab %lld, n_positions %lld, %s\n", cli.model_dir.c_str(),
        static_cast<long long>(config.n_layer), static_cast<long long>(config.n_head),
        static_cast<long long>(config.n_embd), static_cast<long long>(config.vocab_size),
        static_cast<long long>(config.n_positions), config.activation_function.c_str());
    std::printf(
        "data: %lld training tokens, %lld held-out tokens (%s); encoded in %.2f s\n",
        static_cast<long long>(split.train.numel()), static_cast<long long>(split.valid.numel()),
        split.valid_source.c_str(), encode_s);
    std::printf(
        "device %s, threads %d; %lld steps of %lld x %lld tokens x %lld micro-batches; warm-up %lld, seed %llu%s\n\n",
        device.str().c_str(), torch::get_num_threads(), static_cast<long long>(cli.train.steps),
        static_cast<long long>(cli.train.batch_size), static_cast<long long>(cli.train.block_size),
        static_cast<long long>(cli.train.grad_accum), static_cast<long long>(cli.train.warmup_steps),
        static_cast<unsigned long long>(cli.train.seed),
        cli.train.activation_checkpointing ? ", activation checkpointing" : "");
    std::fflush(stdout);

    std::vector<gpt2::RunResult> results;
    for (const auto& spec : specs) {
      torch::manual_seed(cli.train.seed);
      gpt2::LoadReport report;
      auto model = gpt2::load_pretrained(cli.model_dir, torch::kFloat, device, &report);
      if (results.empty()) {
        std::string skipped;
        for (size_t i = 0; i < report.skipped.size() && i < 4; ++i) {
          skipped += (i ? ", " : ": ") + report.skipped[i];
        }
        if (report.skipped.size() > 4) {
          skipped += ", ...";
        }
        std::printf("weights: stored as %s, trained in float32; %zu tensor(s) in the file skipped%s\n",
                    report.stored_dtype.c_str(), report.skipped.size(), skipped.c_str());
      }
      results.push_back(gpt2::train(model, split, spec, cli.train, device, log_line));
      if (!cli.save_model.empty() && results.back().failure.empty()) {
        const std::string dir = specs.size() == 1 ? cli.save_model : gpt2::join_path(cli.save_model, spec.name);
        gpt2::save_pretrained(model, tokenizer, dir, cli.model_dir);
        std::printf("[%s] saved the fine-tuned model to %s\n", spec.name.c_str(), dir.c_str());
        if (cli.check_logits) {
          write_check_logits(dir, cli.check_input);
          std::printf("[%s] wrote %s/flora_check_logits.safetensors\n", spec.name.c_str(), dir.c_str());
        }
      }
      std::printf("\n");
    }

    gpt2::print_table(stdout, results);
    gpt2::make_dirs(cli.out);
    gpt2::write_metrics_csv(gpt2::join_path(cli.out, "metrics.csv"), results);
    gpt2::write_summary_csv(gpt2::join_path(cli.out, "summary.csv"), results);
    gpt2::write_loss_svg(gpt2::join_path(cli.out, "loss.svg"), results);
    std::string files = "metrics.csv, summary.csv, loss.svg";
    if (gpt2::png_supported()) {
      gpt2::write_loss_png(gpt2::join_path(cli.out, "loss.png"), results);
      files += ", loss.png";
    }
    std::printf("\nwrote %s in %s\n", files.c_str(), cli.out.c_str());
    std::fflush(stdout);
    for (const auto& r : results) {
      if (!r.failure.empty()) {
        std::fprintf(stderr, "error: the %s run %s\n", r.name.c_str(), r.failure.c_str());
        return 1;
      }
    }
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
