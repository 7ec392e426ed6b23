#pragma once

// The soak benchmark (flora_soak_bench): long training runs of Flora in every
// state format and projection mode, watched for what goes wrong slowly.
// Not a test: it prints a table (README, "Reliability") and exits 1 only if a
// run produced a NaN or Inf.

#include <flora/flora.h>

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <ostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace flora::soak {

/// A model with its data: the same batches, in the same order, for every
/// run (each run makes its own workload, from the same initial weights).
class Workload {
 public:
  virtual ~Workload() = default;
  virtual std::vector<torch::Tensor> parameters() = 0;
  /// The training loss of batch `step` (0-based), with a graph to backward.
  virtual torch::Tensor train_loss(int64_t step) = 0;
  /// Loss on held-out data (no graph).
  virtual double eval_loss() = 0;
};

/// The teacher-student MLP regression of tests/training_test.cpp (full batch).
std::unique_ptr<Workload> make_mlp(torch::Dtype dtype);
/// The GPT-2 example's shipped tiny model fine-tuned on its shipped corpus
/// (batches of `batch` blocks of `block` tokens, a fixed sampler seed).
std::unique_ptr<Workload> make_gpt2(torch::Dtype dtype, int64_t batch, int64_t block);

/// What a run is.
struct RunConfig {
  std::string label;
  bool adam = false;
  torch::Dtype dtype = torch::kFloat;
  bool quantization = false;
  int64_t quantization_min_size = 4096; // FloraOptions' default; 0: every parameter 8-bit, as flora-opt
  bool stochastic_rounding = false;
  ProjectionMode projection = ProjectionMode::philox;
  std::optional<int64_t> rank; // unset: uncompressed momentum
  /// The rank whose compression rule picks the matrices whose momentum norms
  /// are sampled (the compressed runs' rank, also in the uncompressed run).
  int64_t sample_rank = 0;
  double lr = 0;
  int64_t kappa = 100;
  std::string model;            // for the trace
  std::ostream* trace = nullptr; // --trace: per-parameter statistics every 100 steps
};

/// The columns of --trace.
inline constexpr const char* kTraceHeader =
    "model,run,step,loss,lr,param,shape,param_absmax,exp_avg_absmax,exp_avg_sq_absmax,row_min,row_max,col_min,"
    "col_max";

/// Momentum norms of the compressed matrices, sampled every `every` steps:
/// norms[sample][i] for the i-th compressed parameter.
struct MomentumTrace {
  std::vector<std::vector<double>> norms;
};

struct RunResult {
  RunConfig config;
  int64_t steps = 0;
  int64_t non_finite = 0;        // non-finite losses, gradients refused, params or states with NaN/Inf
  double final_train_loss = 0;   // mean of the last 100 steps
  double eval_loss = 0;
  // Compressed runs: ||compressed momentum|| / ||full momentum of the
  // uncompressed run on the same data||, averaged over the compressed
  // matrices: at the end, and its range over the second half of the run.
  double drift_final = 0, drift_min = 0, drift_max = 0;
  // 8-bit runs: the largest |dequantized - float32| of a state element after
  // a step, absolute and relative to its block's absmax.
  double dequant_error_max = 0, dequant_error_rel_max = 0;
  double seconds = 0;
  MomentumTrace trace; // the uncompressed run's is what the others compare with
};

/// Trains one run for `steps` steps.
RunResult run(
    const RunConfig& config,
    const std::function<std::unique_ptr<Workload>(torch::Dtype)>& make_workload,
    int64_t steps,
    const MomentumTrace* uncompressed);

} // namespace flora::soak
