#pragma once

// The end-of-run report: a side-by-side table on stdout and the raw numbers
// as CSV (metrics.csv: one row per optimizer and step; summary.csv: one row
// per optimizer).

#include "train.h"

#include <cstdio>
#include <string>
#include <vector>

namespace flora::gpt2 {

/// The table: optimizer, final train loss, eval loss, eval perplexity,
/// parameter bytes, peak memory (parameters included), optimizer-state
/// bytes, ms per step, tokens/s; then what the memory column measures and
/// each run's state bytes relative to the first run's.
void print_table(std::FILE* out, const std::vector<RunResult>& runs);

/// metrics.csv: optimizer,label,step,train_loss,eval_loss,lr,elapsed_s.
/// Step 0 holds the initial eval loss; eval_loss is empty where it was not
/// measured.
void write_metrics_csv(const std::string& path, const std::vector<RunResult>& runs);

/// summary.csv: one row per run with every number of the table, unrounded.
void write_summary_csv(const std::string& path, const std::vector<RunResult>& runs);

/// statistics.csv (--stats-every): optimizer,label,step,parameter,shape,
/// momentum,param_rms,update_rms,clip_factor; one row per sampled
/// parameter and step.
void write_statistics_csv(const std::string& path, const std::vector<RunResult>& runs);

/// A CSV field, quoted when needed.
std::string csv_field(const std::string& s);

} // namespace flora::gpt2
