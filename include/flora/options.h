#pragma once

// FloraOptions: the hyper-parameters of one parameter group, with the names
// and defaults of the reference Python package flora-opt 0.0.3. Where Python
// takes None, C++ takes std::nullopt.

#include <flora/export.h>
#include <torch/arg.h>
#include <torch/optim/optimizer.h>
#include <torch/types.h>

#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

namespace torch::serialize {
class OutputArchive;
class InputArchive;
} // namespace torch::serialize

namespace flora {

/// Where the random projection matrices come from.
enum class ProjectionMode : int64_t {
  /// Counter-based Philox4x32-10 with the Box-Muller transform: the stream of
  /// cuRAND's device API. A (seed, shape) gives the same matrix on the CPU and
  /// on any GPU, and generating it needs no generator object and no host
  /// synchronisation. Seeds advance and split by an integer hash (see
  /// projection.h).
  philox = 0,
  /// flora-opt's own seeding: torch's CPU generator (mt19937) seeded per
  /// projection. Bit-parity with the Python package on the CPU. For CUDA
  /// parameters the matrix is drawn on the CPU and copied over (a
  /// synchronising copy), which is what flora-opt does on the CPU; flora-opt
  /// itself on a GPU uses the device's generator, whose stream depends on the
  /// GPU model, so no implementation can match it across machines.
  reference = 1,
};

/// The arithmetic of the projection products of the compressed momentum
/// (down(u) = P u and the mixing of up(M) = P^T M into the update: the
/// products whose inner side is the parameter's). Accumulation is float32 in
/// every case; the step's other arithmetic and every state stay float32.
/// Not in flora-opt.
enum class ProjectionPrecision : int64_t {
  /// float32 products (flora-opt's).
  float32 = 0,
  /// Operands rounded to bfloat16, products accumulated in float32 (oneDNN
  /// on CPUs with AVX512-BF16 or AMX, cuBLAS on GPUs). Rounds u and M to 8
  /// significant bits in the products: the README measures the loss.
  bfloat16 = 1,
  /// TF32 tensor-core products on CUDA devices (10-bit mantissas, float32
  /// accumulation), as torch's allow_tf32; on a CPU, which has no TF32, the
  /// products stay float32, as torch's flag has no effect there.
  tf32 = 2,
};

/// How a compressed momentum is projected and mixed into the update (not in
/// flora-opt, whose rule is `gaussian`). With P the projection of a
/// parameter, u its normalised gradient and M its compressed momentum
/// (README, "Quality", measures all three).
enum class MomentumProjection : int64_t {
  /// flora-opt's rule: P Gaussian, scaled so that E[P^T P] = I (up(down(X))
  /// is unbiased); update = (1 - b1) u + b1 up(M).
  gaussian = 0,
  /// The same rule with P's r rows (or columns) orthonormal, times
  /// sqrt(d / r) (d the projected side) so that E[P^T P] = I still: the
  /// Gaussian draw orthonormalised by a QR decomposition, signs fixed by
  /// R's diagonal (a Haar-distributed subspace). Removes the spread of the
  /// Gaussian's singular values, not the d / r inflation of up(down(X)).
  orthonormal = 1,
  /// Q with orthonormal rows and no scaling; the momentum lives in Q's
  /// subspace and the current gradient is used outside it:
  /// update = u + b1 Q^T (M - Q u), M' = b1 M + (1 - b1) Q u. Biased (the
  /// momentum is not rescaled by d / r) but without the projection's
  /// noise; at r = d it is exactly the full momentum.
  subspace = 2,
};

struct FLORA_API FloraOptions
    : public torch::optim::OptimizerCloneableOptions<FloraOptions> {
  /// The learning rate. Required unless relative_step is true.
  FloraOptions(std::optional<double> lr = std::nullopt);

  /// Step size. Must be unset when relative_step is true. Setting it (here
  /// or through set_lr) also writes the device copy that capturable steps
  /// read, without a synchronisation.
  FloraOptions& lr(std::optional<double> value);
  const std::optional<double>& lr() const noexcept {
    return lr_;
  }
  /// Writing through this reference bypasses the device copy: use lr(value).
  std::optional<double>& lr() noexcept {
    return lr_;
  }
  /// Rank r of the random projections of the momentum; unset: no compression.
  TORCH_ARG(std::optional<int64_t>, rank);
  /// Resample the projection every kappa steps (momentum carried over).
  TORCH_ARG(int64_t, kappa) = 1000;
  typedef std::tuple<double, double> eps_t;
  /// (eps1 added to g^2, eps2 floor of the parameter RMS scale).
  TORCH_ARG(eps_t, eps) = std::make_tuple(1e-30, 1e-3);
  /// Clip the update to this RMS.
  TORCH_ARG(double, clip_threshold) = 1.0;
  /// beta2_t = 1 - step^decay_rate.
  TORCH_ARG(double, decay_rate) = -0.8;
  /// Momentum coefficient; unset or 0: no first moment.
  TORCH_ARG(std::optional<double>, beta1);
  /// Decoupled weight decay: p -= weight_decay * lr_t * p.
  TORCH_ARG(double, weight_decay) = 0.0;
  /// Multiply the step size by max(eps2, RMS(p)).
  TORCH_ARG(bool, scale_parameter) = true;
  /// lr_t = min(warmup_init ? 1e-6 * step : 1e-2, 1 / sqrt(step)).
  TORCH_ARG(bool, relative_step) = false;
  /// Linear warm-up of the relative step; requires relative_step.
  TORCH_ARG(bool, warmup_init) = false;
  /// Adafactor's factored (row, column) second moment for 2-d parameters.
  TORCH_ARG(bool, factorize_second_moment) = true;
  /// Base seed: the i-th parameter (1-based, counted over all groups in
  /// order, including those that do not require grad) gets seed + i.
  TORCH_ARG(int64_t, seed) = 0;
  /// Keep exp_avg and exp_avg_sq (not the factored row/column moments) as
  /// blockwise dynamic 8-bit tensors, as flora-opt does with bitsandbytes
  /// (see quantization.h): a quarter of the bytes.
  TORCH_ARG(bool, quantization) = false;
  /// Elements per quantization block (one float32 absmax each); flora-opt
  /// uses bitsandbytes' 4096. Not in flora-opt.
  TORCH_ARG(int64_t, quantization_block_size) = 4096;
  /// With quantization, parameters of fewer elements keep float32 moments
  /// (bitsandbytes' min_8bit_size, the same default). Small parameters
  /// (biases, norms) cost little memory, and 8-bit loses them what they
  /// cannot spare: a second moment far below its block's absmax rounds to
  /// 0, and the next update of that element is g / sqrt((1 - beta2_t) g^2),
  /// up to 1 / sqrt(1 - beta2_t) times too large; on an attention key bias
  /// (a gradient of rounding noise) that grows the bias without bound and
  /// the whole tensor's relative step with it (README: Reliability).
  /// 0 quantizes every parameter, as flora-opt does. Not in flora-opt.
  TORCH_ARG(int64_t, quantization_min_size) = 4096;
  /// Source of the projection matrices (not in flora-opt, which has only the
  /// reference behaviour).
  TORCH_ARG(ProjectionMode, projection) = ProjectionMode::philox;
  /// Before updating anything, verify that every gradient is finite and throw
  /// (naming the parameter, leaving parameters and state untouched) if not.
  /// Costs one host synchronisation per step on a GPU; with false, non-finite
  /// gradients propagate into parameters and state exactly as in flora-opt
  /// and torch::optim::Adam.
  TORCH_ARG(bool, check_finite) = true;
  /// A step that never waits for the host, so that it can be captured once
  /// in a CUDA graph and replayed for every later step (as torch's Adam
  /// names it). Step counts and projection seeds live on the device
  /// (advanced there, the kappa resampling decided there) and the learning
  /// rate is read from a device copy that set_lr writes. Needs the philox
  /// projection and check_finite(false) (the check reads flags on the
  /// host). Costs two small extra products per compressed matrix and step
  /// (the basis change is computed every step and kept only when due).
  /// Take the first step eagerly (it allocates the state), then capture.
  /// With capturable steps, FloraParamState::step()/seed() are refreshed
  /// only by eager steps and at save(); the device counters are the truth.
  TORCH_ARG(bool, capturable) = false;
  /// The largest aspect ratio (larger side over smaller) of a matrix whose
  /// momentum is kept compressed. flora-opt's 4 keeps embeddings' momentum
  /// uncompressed; a larger value (or infinity) compresses them on their
  /// small side too (a 50257 x 768 token embedding keeps 50257 x rank
  /// instead of 50257 x 768). Not in flora-opt.
  TORCH_ARG(double, max_aspect_ratio) = 4.0;
  /// Write bfloat16 parameters rounded up or down at random, with
  /// probability proportional to the distance, instead of to nearest: the
  /// stored value is right in expectation, so updates smaller than a
  /// bfloat16 ulp are not lost and a float32 master copy is not needed. The
  /// random bits come from a Philox stream keyed by (seed, parameter,
  /// step): runs are reproducible and resume bit for bit. float32
  /// parameters are unaffected; float16 ones are refused. Needs the philox
  /// projection (the fused step). Not in flora-opt.
  TORCH_ARG(bool, stochastic_rounding) = false;
  /// How the compressed momentum is projected and applied (see
  /// MomentumProjection; `gaussian` is flora-opt's rule). The other two
  /// orthonormalise each projection with a batched QR decomposition before
  /// the step writes anything; they need the philox projection and are not
  /// capturable. Not in flora-opt.
  TORCH_ARG(MomentumProjection, momentum_projection) = MomentumProjection::gaussian;
  /// Scale the decompressed momentum up(M) in the update by
  /// ||M|| / ||up(M)||: the RMS it would have without the projection's
  /// d / r inflation (E||M||^2 = ||EMA of u||^2 since E[P^T P] = I), from
  /// the r x r Gram matrix of P, nothing of the parameter's size. With
  /// `gaussian` or `orthonormal` (with `subspace`, ||Q^T M|| = ||M||
  /// already); philox only, not capturable. Not in flora-opt.
  TORCH_ARG(bool, momentum_rescale) = false;
  /// The arithmetic of the projection products (see ProjectionPrecision);
  /// needs the philox projection (reference mode is flora-opt's float32
  /// sequence). Not in flora-opt.
  TORCH_ARG(ProjectionPrecision, projection_precision) = ProjectionPrecision::float32;

 public:
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
  FLORA_API friend bool operator==(
      const FloraOptions& lhs,
      const FloraOptions& rhs);
  /// The learning rate, for schedulers. Throws when lr is unset
  /// (relative_step computes its own step size, which has nothing to scale).
  double get_lr() const override;
  void set_lr(const double lr) override;

  /// The device copy of lr on `device` (float64, one element), made on
  /// first use: what capturable steps read. Internal to flora's step.
  torch::Tensor device_lr(const torch::Device& device) const;

 private:
  std::optional<double> lr_;
  // One device copy of lr per device the group's parameters live on. A copy
  // of the options (a clone for another group, or options loaded from a
  // checkpoint) starts without them: a group's copy is its own.
  struct DeviceCopies {
    DeviceCopies() = default;
    DeviceCopies(const DeviceCopies&) {}
    DeviceCopies& operator=(const DeviceCopies&) {
      tensors.clear();
      return *this;
    }
    std::vector<torch::Tensor> tensors;
  };
  mutable DeviceCopies device_lrs_;
};

/// Throws c10::Error (naming the option and its value) unless the options
/// are usable. `where` prefixes the message, e.g. "param group 2".
FLORA_API void validate(const FloraOptions& options, const char* where = "FloraOptions");

/// "gaussian", "orthonormal" or "subspace".
FLORA_API const char* to_string(MomentumProjection projection);
/// "float32", "bfloat16" or "tf32".
FLORA_API const char* to_string(ProjectionPrecision precision);

} // namespace flora
