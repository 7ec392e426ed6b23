// One soak run: the training loop and what it watches.

#include "soak.h"

#include "train.h"

#include <flora/layout.h>

#include <chrono>
#include <cmath>

namespace flora::soak {
namespace {

constexpr int64_t kSampleEvery = 100; // momentum norms, finiteness, the 8-bit probe

FloraOptions flora_options(const RunConfig& c) {
  auto o = FloraOptions(c.lr).beta1(0.9).kappa(c.kappa).quantization(c.quantization)
               .quantization_min_size(c.quantization_min_size).projection(c.projection)
               .stochastic_rounding(c.stochastic_rounding);
  if (c.rank) {
    o.rank(*c.rank);
  }
  return o;
}

const FloraParamState* state_of(const torch::optim::Optimizer& opt, const torch::Tensor& p) {
  const auto it = opt.state().find(p.unsafeGetTensorImpl());
  return it == opt.state().end() ? nullptr : &static_cast<const FloraParamState&>(*it->second);
}

torch::Tensor dequantized(const torch::Tensor& codes, const torch::Tensor& absmax, int64_t block) {
  return dequantize_blockwise(QuantizedTensor{codes, absmax}, block);
}

// The float32 value of a moment (dequantized when 8-bit).
torch::Tensor moment(const torch::Tensor& value, const torch::Tensor& absmax, int64_t block) {
  return value.scalar_type() == torch::kByte ? dequantized(value, absmax, block) : value;
}

double abs_max_of(const torch::Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.abs().max().item<double>() : std::nan("");
}

// One --trace line per parameter (soak.h: kTraceHeader).
void write_trace(std::ostream& out, const RunConfig& c, int64_t step, double loss, double lr,
                 const std::vector<torch::Tensor>& params, const Flora* flora) {
  torch::NoGradGuard no_grad;
  const int64_t block = flora_options(c).quantization_block_size();
  for (size_t i = 0; i < params.size(); ++i) {
    out << '"' << c.model << "\",\"" << c.label << "\"," << step << ',' << loss << ',' << lr << ',' << i << ",\""
        << params[i].sizes() << "\"," << abs_max_of(params[i]);
    const FloraParamState* st = flora == nullptr ? nullptr : state_of(*flora, params[i]);
    if (st == nullptr) {
      out << ",,,,,,\n";
      continue;
    }
    const auto& row = st->exp_avg_sq_row();
    const auto& col = st->exp_avg_sq_col();
    out << ',' << abs_max_of(st->exp_avg().defined() ? moment(st->exp_avg(), st->exp_avg_absmax(), block) : st->exp_avg())
        << ','
        << abs_max_of(st->exp_avg_sq().defined() ? moment(st->exp_avg_sq(), st->exp_avg_sq_absmax(), block)
                                                 : st->exp_avg_sq())
        << ',' << (row.defined() ? row.min().item<double>() : std::nan("")) << ',' << abs_max_of(row) << ','
        << (col.defined() ? col.min().item<double>() : std::nan("")) << ',' << abs_max_of(col) << '\n';
  }
  out.flush();
}

bool all_finite(const torch::Tensor& t) {
  return !t.defined() || t.scalar_type() == torch::kByte || torch::isfinite(t).all().item<bool>();
}

// The 8-bit probe: a float32 twin of the 8-bit optimizer, given the 8-bit
// states dequantized and the same parameters and gradients, steps beside
// it; the 8-bit step computes the same float32 states and then stores them
// in 8 bits, so twin - dequantized(8-bit) after the step is the error of
// that storage.
class QuantizationProbe {
 public:
  QuantizationProbe(const std::vector<torch::Tensor>& params, FloraOptions options) : block_(options.quantization_block_size()) {
    for (const auto& p : params) {
      twins_.push_back(p.detach().clone());
    }
    twin_ = std::make_unique<Flora>(twins_, options.quantization(false));
  }

  // Before the real step: the twin takes the real state and gradients.
  void before(const Flora& real, const std::vector<torch::Tensor>& params) {
    torch::NoGradGuard no_grad;
    twin_->state().clear();
    for (size_t i = 0; i < params.size(); ++i) {
      twins_[i].copy_(params[i]);
      twins_[i].mutable_grad() = params[i].grad().defined() ? params[i].grad().clone() : torch::Tensor();
      const auto* s = state_of(real, params[i]);
      if (s == nullptr) {
        continue;
      }
      auto t = std::make_unique<FloraParamState>();
      t->step(s->step());
      t->seed(s->seed());
      t->rms(s->rms().clone());
      if (s->exp_avg().defined()) {
        t->exp_avg(moment(s->exp_avg(), s->exp_avg_absmax(), block_).clone());
      }
      if (s->exp_avg_sq().defined()) {
        t->exp_avg_sq(moment(s->exp_avg_sq(), s->exp_avg_sq_absmax(), block_).clone());
      }
      if (s->exp_avg_sq_row().defined()) {
        t->exp_avg_sq_row(s->exp_avg_sq_row().clone());
        t->exp_avg_sq_col(s->exp_avg_sq_col().clone());
      }
      twin_->state()[twins_[i].unsafeGetTensorImpl()] = std::move(t);
    }
    twin_->step();
  }

  // After the real step: the largest error of the 8-bit states.
  void after(const Flora& real, const std::vector<torch::Tensor>& params, double& abs_max, double& rel_max) {
    for (size_t i = 0; i < params.size(); ++i) {
      const auto* s = state_of(real, params[i]);
      const auto* t = state_of(*twin_, twins_[i]);
      if (s == nullptr || t == nullptr) {
        continue;
      }
      compare(s->exp_avg(), s->exp_avg_absmax(), t->exp_avg(), abs_max, rel_max);
      compare(s->exp_avg_sq(), s->exp_avg_sq_absmax(), t->exp_avg_sq(), abs_max, rel_max);
    }
  }

 private:
  void compare(const torch::Tensor& codes, const torch::Tensor& absmax, const torch::Tensor& exact, double& abs_max,
               double& rel_max) const {
    if (!codes.defined() || codes.scalar_type() != torch::kByte) {
      return;
    }
    const auto error = (dequantized(codes, absmax, block_) - exact).abs().flatten();
    abs_max = std::max(abs_max, error.max().item<double>());
    // Relative to each element's block absmax (the scale the 8 bits cover).
    const auto n = error.numel();
    const auto scale = absmax.repeat_interleave(block_).narrow(0, 0, n);
    const auto rel = torch::where(scale > 0, error / scale, torch::zeros_like(error));
    rel_max = std::max(rel_max, rel.max().item<double>());
  }

  int64_t block_;
  std::vector<torch::Tensor> twins_;
  std::unique_ptr<Flora> twin_;
};

} // namespace

RunResult run(
    const RunConfig& config,
    const std::function<std::unique_ptr<Workload>(torch::Dtype)>& make_workload,
    int64_t steps,
    const MomentumTrace* uncompressed) {
  RunResult r;
  r.config = config;
  auto workload = make_workload(config.dtype);
  auto params = workload->parameters();
  std::unique_ptr<torch::optim::Optimizer> opt;
  Flora* flora = nullptr;
  if (config.adam) {
    opt = std::make_unique<torch::optim::Adam>(params, torch::optim::AdamOptions(config.lr));
  } else {
    opt = std::make_unique<Flora>(params, flora_options(config));
    flora = static_cast<Flora*>(opt.get());
  }
  // The matrices whose momentum a rank-r run compresses (the same for the
  // uncompressed run, which samples their full momenta for the comparison).
  std::vector<size_t> compressed;
  if (!config.adam && config.sample_rank > 0) {
    const auto rule = FloraOptions(config.lr).beta1(0.9).rank(config.sample_rank);
    for (size_t i = 0; i < params.size(); ++i) {
      if (ParamLayout::of(params[i].sizes(), rule).compressed) {
        compressed.push_back(i);
      }
    }
  }
  std::unique_ptr<QuantizationProbe> probe;
  if (config.quantization) {
    probe = std::make_unique<QuantizationProbe>(params, flora_options(config));
  }

  std::vector<double> recent;
  double last_loss = 0;
  std::vector<double> ratios;
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t s = 0; s < steps; ++s) {
    const double lr = gpt2::scheduled_lr(config.lr, s + 1, 50, steps);
    for (auto& group : opt->param_groups()) {
      group.options().set_lr(lr);
    }
    opt->zero_grad();
    auto loss = workload->train_loss(s);
    const double value = loss.item<double>();
    if (!std::isfinite(value)) {
      ++r.non_finite;
    }
    if (s >= steps - 100) {
      recent.push_back(value);
    }
    last_loss = value;
    loss.backward();
    const bool sample = (s + 1) % kSampleEvery == 0;
    if (probe && sample) {
      probe->before(*flora, params);
    }
    try {
      opt->step();
    } catch (const c10::Error&) {
      ++r.non_finite; // Flora refuses a non-finite gradient (check_finite)
    }
    if (!sample) {
      continue;
    }
    if (probe) {
      probe->after(*flora, params, r.dequant_error_max, r.dequant_error_rel_max);
    }
    if (config.trace != nullptr) {
      write_trace(*config.trace, config, s + 1, last_loss, lr, params, flora);
    }
    torch::NoGradGuard no_grad;
    for (const auto& p : params) {
      r.non_finite += all_finite(p) ? 0 : 1;
      if (flora != nullptr) {
        if (const auto* st = state_of(*flora, p)) {
          for (const auto* t : {&st->rms(), &st->exp_avg(), &st->exp_avg_sq_row(), &st->exp_avg_sq_col(),
                                &st->exp_avg_sq(), &st->exp_avg_absmax(), &st->exp_avg_sq_absmax()}) {
            r.non_finite += all_finite(*t) ? 0 : 1;
          }
        }
      }
    }
    if (flora != nullptr && !compressed.empty()) {
      std::vector<double> norms;
      for (const auto i : compressed) {
        const auto* st = state_of(*flora, params[i]);
        norms.push_back(
            st == nullptr ? 0.0
                          : moment(st->exp_avg(), st->exp_avg_absmax(), flora_options(config).quantization_block_size())
                                .norm()
                                .item<double>());
      }
      r.trace.norms.push_back(norms);
      const size_t sample_index = r.trace.norms.size() - 1;
      if (config.rank && uncompressed != nullptr && sample_index < uncompressed->norms.size()) {
        double sum = 0;
        for (size_t k = 0; k < norms.size(); ++k) {
          sum += norms[k] / uncompressed->norms[sample_index][k];
        }
        ratios.push_back(sum / static_cast<double>(norms.size()));
      }
    }
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.steps = steps;
  double sum = 0;
  for (const double v : recent) {
    sum += v;
  }
  r.final_train_loss = recent.empty() ? 0 : sum / static_cast<double>(recent.size());
  r.eval_loss = workload->eval_loss();
  r.non_finite += std::isfinite(r.eval_loss) ? 0 : 1;
  if (!ratios.empty()) {
    r.drift_final = ratios.back();
    // The range over the second half of the run (the first steps' norms are
    // still growing from zero at different rates).
    r.drift_min = r.drift_max = ratios[ratios.size() / 2];
    for (size_t k = ratios.size() / 2; k < ratios.size(); ++k) {
      r.drift_min = std::min(r.drift_min, ratios[k]);
      r.drift_max = std::max(r.drift_max, ratios[k]);
    }
  }
  return r;
}

} // namespace flora::soak
