// flora_soak_bench: Flora trained for a long time (10,000 steps by default)
// on the MLP of tests/training_test.cpp and on the GPT-2 example's shipped
// tiny model, in float32, bfloat16 (with and without stochastic rounding)
// and 8-bit states, in both projection modes, resampling every 100 steps;
// beside Adam and an uncompressed Flora on the same data. Reports, per run:
// NaN/Inf seen (must be none), the end losses against Adam's, the norm of the
// compressed momentum against the uncompressed run's full momentum, and for
// 8-bit runs the largest dequantization error of the states.
//
//   flora_soak_bench [--steps N] [--gpt2-steps N] [--models mlp,gpt2]
//                    [--batch B] [--block T] [--markdown FILE]
//                    [--runs SUBSTRING] [--trace FILE]
//
// --runs: only the runs whose label contains SUBSTRING (Adam and the
// uncompressed run always, as the others are measured against them).
// --trace: every 100 steps of every run, a CSV line per parameter with the
// largest magnitudes of the parameter and of each state (dequantized when
// 8-bit) and the smallest of the second-moment factors: where a run that
// goes wrong starts to.
//
// Exits 1 if any run saw a NaN or Inf.

#include "soak.h"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include <unistd.h>

namespace {

using flora::ProjectionMode;
using flora::soak::RunConfig;
using flora::soak::RunResult;

struct Settings {
  int64_t steps = 10000;
  int64_t gpt2_steps = -1; // -1: steps
  bool mlp = true, gpt2 = true;
  int64_t batch = 8, block = 64;
  std::string markdown;
  std::string runs;
  std::string trace;
};

Settings parse(int argc, char** argv) {
  Settings s;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        throw std::runtime_error(arg + " needs a value");
      }
      return argv[++i];
    };
    if (arg == "--steps") {
      s.steps = std::stoll(value());
    } else if (arg == "--gpt2-steps") {
      s.gpt2_steps = std::stoll(value());
    } else if (arg == "--models") {
      const auto v = value();
      s.mlp = v.find("mlp") != std::string::npos;
      s.gpt2 = v.find("gpt2") != std::string::npos;
    } else if (arg == "--batch") {
      s.batch = std::stoll(value());
    } else if (arg == "--block") {
      s.block = std::stoll(value());
    } else if (arg == "--markdown") {
      s.markdown = value();
    } else if (arg == "--runs") {
      s.runs = value();
    } else if (arg == "--trace") {
      s.trace = value();
    } else {
      throw std::runtime_error("unknown argument " + arg);
    }
  }
  if (s.gpt2_steps < 0) {
    s.gpt2_steps = s.steps;
  }
  return s;
}

// Adam, the uncompressed Flora the drift is measured against, and Flora at
// rank r in every state format and projection mode (stochastic rounding
// needs the philox projection). 8-bit runs at each of `min_sizes`
// (quantization_min_size; 0 quantizes every parameter, flora-opt's rule).
std::vector<RunConfig> runs_for(double adam_lr, double flora_lr, int64_t rank, const std::vector<int64_t>& min_sizes) {
  std::vector<RunConfig> runs;
  RunConfig adam;
  adam.label = "adam";
  adam.adam = true;
  adam.lr = adam_lr;
  runs.push_back(adam);
  RunConfig base;
  base.lr = flora_lr;
  base.sample_rank = rank;
  RunConfig full = base;
  full.label = "flora, uncompressed momentum";
  runs.push_back(full);
  for (const auto mode : {ProjectionMode::philox, ProjectionMode::reference}) {
    const std::string m = mode == ProjectionMode::philox ? "philox" : "reference";
    RunConfig c = base;
    c.rank = rank;
    c.projection = mode;
    c.label = "flora r=" + std::to_string(rank) + " fp32 " + m;
    runs.push_back(c);
    c.dtype = torch::kBFloat16;
    c.label = "flora r=" + std::to_string(rank) + " bf16 " + m;
    runs.push_back(c);
    if (mode == ProjectionMode::philox) {
      c.stochastic_rounding = true;
      c.label = "flora r=" + std::to_string(rank) + " bf16 stochastic rounding " + m;
      runs.push_back(c);
      c.stochastic_rounding = false;
    }
    c.dtype = torch::kFloat;
    c.quantization = true;
    for (const int64_t min_size : min_sizes) {
      c.quantization_min_size = min_size;
      c.label = "flora r=" + std::to_string(rank) + " 8-bit " +
          (min_size == 0 ? std::string("every parameter ")
                         : "(parameters of " + std::to_string(min_size) + "+ elements) ") +
          m;
      runs.push_back(c);
    }
  }
  return runs;
}

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", digits, v);
  return buf;
}

std::string sci(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.2e", v);
  return buf;
}

std::string row(const std::string& model, const RunResult& r, double adam_eval) {
  std::ostringstream out;
  out << "| " << model << " | " << r.config.label << " | " << r.steps << " | " << r.non_finite << " | "
      << fixed(r.final_train_loss, 4) << " | " << fixed(r.eval_loss, 4) << " | " << fixed(r.eval_loss / adam_eval, 3)
      << " | ";
  if (r.config.rank) {
    out << fixed(r.drift_final, 3) << " [" << fixed(r.drift_min, 3) << ", " << fixed(r.drift_max, 3) << "]";
  } else {
    out << "-";
  }
  out << " | ";
  if (r.config.quantization) {
    out << sci(r.dequant_error_max) << " (" << sci(r.dequant_error_rel_max) << " of absmax)";
  } else {
    out << "-";
  }
  out << " | " << fixed(r.seconds, 0) << " |";
  return out.str();
}

} // namespace

int main(int argc, char** argv) {
  Settings s;
  try {
    s = parse(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "flora_soak_bench: " << e.what() << "\n";
    return 2;
  }
  torch::set_num_threads(1); // one core per run; the machine is shared
  const std::string header =
      "| model | run | steps | NaN/Inf | train loss (last 100) | eval loss | eval / Adam's | momentum norm / "
      "uncompressed run's, end [range, 2nd half] | 8-bit max dequantization error | s |\n"
      "|---|---|---|---|---|---|---|---|---|---|";
  std::vector<std::string> rows;
  int64_t non_finite = 0;
  struct Model {
    std::string name;
    bool on;
    int64_t steps;
    double adam_lr, flora_lr;
    int64_t rank;
    std::vector<int64_t> min_sizes;
    std::function<std::unique_ptr<flora::soak::Workload>(torch::Dtype)> make;
  };
  const std::vector<Model> models = {
      // The MLP's matrices are all under 4096 elements: 8-bit only at min size 0.
      {"MLP", s.mlp, s.steps, 3e-3, 3e-2, 8, {0}, [](torch::Dtype d) { return flora::soak::make_mlp(d); }},
      {"GPT-2 tiny", s.gpt2, s.gpt2_steps, 3e-3, 3e-2, 16, {4096, 0},
       [&](torch::Dtype d) { return flora::soak::make_gpt2(d, s.batch, s.block); }},
  };
  std::unique_ptr<std::ofstream> trace;
  if (!s.trace.empty()) {
    trace = std::make_unique<std::ofstream>(s.trace);
    if (!*trace) {
      std::cerr << "flora_soak_bench: cannot write --trace " << s.trace << "\n";
      return 2;
    }
    *trace << flora::soak::kTraceHeader << "\n";
  }
  std::cout << header << std::endl;
  for (const auto& m : models) {
    if (!m.on) {
      continue;
    }
    double adam_eval = 1;
    flora::soak::MomentumTrace uncompressed;
    for (auto config : runs_for(m.adam_lr, m.flora_lr, m.rank, m.min_sizes)) {
      if (config.rank && config.label.find(s.runs) == std::string::npos) {
        continue;
      }
      config.trace = trace.get();
      config.model = m.name;
      const auto r = flora::soak::run(config, m.make, m.steps, uncompressed.norms.empty() ? nullptr : &uncompressed);
      if (config.adam) {
        adam_eval = r.eval_loss;
      } else if (!config.rank) {
        uncompressed = r.trace;
      }
      non_finite += r.non_finite;
      rows.push_back(row(m.name, r, adam_eval));
      std::cout << rows.back() << std::endl;
    }
  }
  if (!s.markdown.empty()) {
    // Written beside the target and renamed over it: a reader never sees half a table.
    const std::string tmp = s.markdown + ".tmp-" + std::to_string(::getpid());
    {
      std::ofstream out(tmp);
      out << header << "\n";
      for (const auto& r : rows) {
        out << r << "\n";
      }
      out.flush();
      if (!out) {
        std::cerr << "flora_soak_bench: cannot write " << tmp << "\n";
        return 2;
      }
    }
    if (std::rename(tmp.c_str(), s.markdown.c_str()) != 0) {
      std::cerr << "flora_soak_bench: cannot rename " << tmp << " to " << s.markdown << "\n";
      return 2;
    }
  }
  std::cout << (non_finite == 0 ? "no NaN or Inf in any run" : "NaN or Inf seen: " + std::to_string(non_finite))
            << std::endl;
  return non_finite == 0 ? 0 : 1;
}
