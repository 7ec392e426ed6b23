#pragma once

// The gpt2-finetune program after its command line (cli.h):
// prepare_run() checks everything that needs the model, the tokenizer or
// the data, and loads what all runs share (the configuration, the
// tokenizer, the encoded corpus), so that a bad value is refused, naming
// its flag, before anything is trained; run_all() then trains each
// optimizer from the same starting weights and writes the report.

#include "cli.h"
#include "config.h"
#include "data.h"
#include "data_parallel.h"
#include "model.h"
#include "pretrained.h"
#include "stepper.h"
#include "tokenizer.h"

#include <torch/types.h>

#include <optional>
#include <string>
#include <vector>

namespace flora::gpt2 {

struct RunPlan {
  Settings settings;
  torch::Device device = torch::kCPU;
  /// Of the parameters, activations and gradients.
  torch::Dtype dtype = torch::kFloat;
  GPT2Config config;
  /// Where the weights come from, for the report (a directory, or e.g.
  /// "untrained gpt2 (--init-config)").
  std::string model_source;
  std::string tokenizer_dir;
  std::optional<Tokenizer> tokenizer;
  TokenSplit split;
  double encode_seconds = 0;
  std::vector<OptimizerSpec> specs;
  /// Set when a launcher (torchrun) started this process: a data-parallel
  /// run, one rank of launch->world_size.
  std::optional<Launch> launch;
};

/// Checks the settings against the model, tokenizer, data and output
/// locations, and loads what the runs share. Throws UsageError naming the
/// flag (and its value) that a problem comes from.
RunPlan prepare_run(const Settings& settings);

/// The model each run starts from, on `device` (default plan.device) in
/// plan.dtype: the weights of --model-dir, or GPT-2's initialisation of
/// --init-config seeded with --seed (the same for every run).
GPT2LMHeadModel initial_model(
    const RunPlan& plan,
    LoadReport* report = nullptr,
    std::optional<torch::Device> device = std::nullopt);

/// Trains every optimizer of the plan, printing progress and the table on
/// stdout, and writes the report files (and saved models). Returns the
/// program's exit status: 1 if a run diverged, else 0. In a data-parallel
/// run every rank calls it: it joins the job first, and only rank 0 prints,
/// writes the report and saves models.
int run_all(const RunPlan& plan);

/// The whole program (main() is this): parse, check, train; an error
/// becomes one "error: ..." line on stderr and status 1.
int run_program(const std::vector<std::string>& args);

} // namespace flora::gpt2
