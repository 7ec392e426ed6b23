#include "report.h"

#include "file_io.h"

#include <cmath>
#include <cstdio>
#include <sstream>

namespace flora::gpt2 {
namespace {

std::string num(double v, const char* format = "%.17g") {
  if (std::isnan(v)) {
    return "";
  }
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), format, v);
  return buffer;
}

std::string digest_text(uint64_t digest) {
  char buffer[24];
  std::snprintf(buffer, sizeof(buffer), "%016llx", static_cast<unsigned long long>(digest));
  return buffer;
}

} // namespace

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) {
    return s;
  }
  std::string out = "\"";
  for (const char c : s) {
    out += c == '"' ? std::string("\"\"") : std::string(1, c);
  }
  return out + "\"";
}

void print_table(std::FILE* out, const std::vector<RunResult>& runs) {
  size_t width = 9;
  bool parallel = false; // data-parallel runs get a column for their exchange
  for (const auto& r : runs) {
    width = std::max(width, r.label.size());
    parallel = parallel || !std::isnan(r.bytes_per_step);
  }
  const int w = static_cast<int>(width);
  std::fprintf(out, "%-*s %11s %10s %9s %11s %12s %13s %9s %9s", w, "optimizer", "train loss", "eval loss",
               "eval ppl", "parameters", "peak memory", "state bytes", "ms/step", "tokens/s");
  std::fprintf(out, parallel ? " %14s\n" : "\n", "comm/step");
  for (const auto& r : runs) {
    std::fprintf(out, "%-*s %11.4f %10.4f %9.3f %11s %12s %13lld %9.2f %9.0f", w, r.label.c_str(),
                 r.final_train_loss, r.eval_loss, r.eval_perplexity, format_bytes(r.peak.parameter_bytes).c_str(),
                 format_bytes(r.peak.bytes).c_str(), static_cast<long long>(r.state_bytes), r.ms_per_step,
                 r.tokens_per_s);
    if (parallel) {
      std::fprintf(out, " %14s",
                   std::isnan(r.bytes_per_step) ? "-" : format_bytes(std::llround(r.bytes_per_step)).c_str());
    }
    std::fprintf(out, "\n");
  }
  if (runs.empty()) {
    return;
  }
  std::fprintf(out,
               "\ntrain loss: mean of the last steps' losses; eval: held-out split at the end; parameters: their "
               "bytes; peak memory: %s",
               runs.front().peak.kind.c_str());
  if (runs.size() > 1) {
    std::fprintf(out, ", measured per run");
  }
  if (parallel) {
    std::fprintf(out,
                 "; data parallel over %lld ranks: train loss is the mean over ranks, peak memory and ms/step are "
                 "rank 0's, tokens/s counts every rank's; comm/step: bytes each rank hands to the process group per "
                 "optimizer step (the gradient exchange)",
                 static_cast<long long>(runs.front().world_size));
  }
  std::fprintf(out, ".\n");
  for (const auto& r : runs) {
    if (!r.failure.empty()) {
      std::fprintf(out, "%s FAILED (%s); its numbers cover the steps before.\n", r.name.c_str(), r.failure.c_str());
    }
  }
  for (size_t i = 1; i < runs.size(); ++i) {
    if (runs.front().state_bytes > 0) {
      std::fprintf(out, "%s keeps %.1f%% of %s's optimizer-state bytes.\n", runs[i].name.c_str(),
                   100.0 * static_cast<double>(runs[i].state_bytes) / static_cast<double>(runs.front().state_bytes),
                   runs.front().name.c_str());
    }
  }
}

void write_metrics_csv(const std::string& path, const std::vector<RunResult>& runs) {
  std::ostringstream out;
  out << "optimizer,label,step,train_loss,eval_loss,lr,elapsed_s\n";
  for (const auto& r : runs) {
    out << csv_field(r.name) << ',' << csv_field(r.label) << ",0,," << num(r.initial_eval_loss) << ",,0\n";
    for (const auto& s : r.records) {
      out << csv_field(r.name) << ',' << csv_field(r.label) << ',' << s.step << ',' << num(s.train_loss) << ','
          << num(s.eval_loss) << ',' << num(s.lr, "%.8g") << ',' << num(s.elapsed_s, "%.6f") << '\n';
    }
  }
  write_file_atomic(path, out.str());
}

void write_summary_csv(const std::string& path, const std::vector<RunResult>& runs) {
  std::ostringstream out;
  out << "optimizer,label,steps,initial_eval_loss,final_train_loss,eval_loss,eval_perplexity,parameter_bytes,"
         "peak_memory_bytes,peak_memory_kind,optimizer_state_bytes,ms_per_step,tokens_per_s,train_seconds,world_size,"
         "bytes_per_step,parameter_digest,failure\n";
  for (const auto& r : runs) {
    out << csv_field(r.name) << ',' << csv_field(r.label) << ',' << r.records.size() << ','
        << num(r.initial_eval_loss) << ',' << num(r.final_train_loss) << ',' << num(r.eval_loss) << ','
        << num(r.eval_perplexity) << ',' << r.peak.parameter_bytes << ',' << r.peak.bytes << ',' << csv_field(r.peak.kind) << ',' << r.state_bytes
        << ',' << num(r.ms_per_step, "%.4f") << ',' << num(r.tokens_per_s, "%.1f") << ','
        << num(r.train_seconds, "%.3f") << ',' << r.world_size << ',' << num(r.bytes_per_step, "%.1f") << ','
        << digest_text(r.parameter_digest) << ',' << csv_field(r.failure) << '\n';
  }
  write_file_atomic(path, out.str());
}

void write_statistics_csv(const std::string& path, const std::vector<RunResult>& runs) {
  std::ostringstream out;
  out << "optimizer,label,step,parameter,shape,momentum,param_rms,update_rms,clip_factor\n";
  for (const auto& r : runs) {
    for (const auto& s : r.statistics) {
      std::string shape;
      for (const auto d : s.shape) {
        shape += (shape.empty() ? "" : "x") + std::to_string(d);
      }
      out << csv_field(r.name) << ',' << csv_field(r.label) << ',' << s.step << ',' << csv_field(s.parameter) << ','
          << shape << ',' << s.momentum << ',' << num(s.param_rms, "%.6g") << ',' << num(s.update_rms, "%.6g") << ','
          << num(s.clip_factor, "%.6g") << '\n';
    }
  }
  write_file_atomic(path, out.str());
}

} // namespace flora::gpt2
