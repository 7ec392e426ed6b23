#pragma once

// One entry per flora operator: valid arguments on a device, the call through
// flora::ops, the shared argument check alone (src/kernels/checks.h), and
// which arguments the operator writes. tests/ops_test.cpp (CPU) and
// tests/cuda/kernels_test.cpp (CUDA) run the same checks over this table, so
// that an operator added without an entry here fails OpCases.CoverEveryOperator.

#include "fused_ops.h"
#include "kernels/checks.h"
#include "kernels/fused_checks.h"

#include <flora/flora.h>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cctype>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace flora::testing {

/// The tensor arguments of one call, by schema name; list elements as
/// "params[0]", "params[1]", ...
class OpArgs {
 public:
  torch::Tensor& operator[](const std::string& name) {
    for (auto& [key, value] : tensors_) {
      if (key == name) {
        return value;
      }
    }
    tensors_.emplace_back(name, torch::Tensor());
    return tensors_.back().second;
  }
  /// "params" -> params[0], params[1], ... (empty when there are none).
  std::vector<torch::Tensor> list(const std::string& name) {
    std::vector<torch::Tensor> out;
    for (size_t i = 0;; ++i) {
      const std::string key = name + "[" + std::to_string(i) + "]";
      if (!has(key)) {
        return out;
      }
      out.push_back((*this)[key]);
    }
  }
  bool has(const std::string& name) const {
    for (const auto& entry : tensors_) {
      if (entry.first == name) {
        return true;
      }
    }
    return false;
  }
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& entry : tensors_) {
      out.push_back(entry.first);
    }
    return out;
  }

 private:
  std::vector<std::pair<std::string, torch::Tensor>> tensors_;
};

struct OpCase {
  std::string name; // the schema's name, without "flora::"
  std::function<OpArgs(const torch::Device&)> make; // valid arguments
  std::function<void(OpArgs&)> call; // through flora::ops
  std::function<void(OpArgs&)> check; // the kernels' shared argument check alone
  std::vector<std::string> mutated; // arguments the operator writes
  std::vector<std::string> shaped; // arguments whose size the operator prescribes
};

inline torch::Tensor seeded_randn(torch::IntArrayRef shape, uint64_t seed, const torch::Device& device) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return torch::randn(shape, gen).to(device);
}

inline torch::Tensor seeded_rand(torch::IntArrayRef shape, uint64_t seed, const torch::Device& device) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return (torch::rand(shape, gen) + 0.1).to(device);
}

constexpr int64_t kCaseBlockSize = 16;

/// The fused operators' hyper-parameters for the table (beta1 0: no momentum).
inline detail::StepHyper fused_case_hyper(double beta1) {
  detail::StepHyper h;
  h.lr = 0.01;
  h.eps1 = 1e-30;
  h.eps2 = 1e-3;
  h.beta1 = beta1;
  h.weight_decay = 0.01;
  return h;
}

inline const std::vector<OpCase>& op_cases() {
  static const std::vector<OpCase> cases = {
      {"philox_normal_",
       [](const torch::Device& d) {
         OpArgs a;
         a["self"] = torch::empty({5, 7}, torch::device(d));
         return a;
       },
       [](OpArgs& a) { ops::philox_normal_(a["self"], 3, 0.5); },
       [](OpArgs& a) { detail::check_philox_normal_args(a["self"]); },
       {"self"},
       {"self"}},
      {"philox_bits_",
       [](const torch::Device& d) {
         OpArgs a;
         a["self"] = torch::empty({5, 7}, torch::dtype(torch::kInt).device(d));
         return a;
       },
       [](OpArgs& a) { ops::philox_bits_(a["self"], 3); },
       [](OpArgs& a) { detail::check_philox_bits_args(a["self"]); },
       {"self"},
       {"self"}},
      {"second_moment_factored_",
       [](const torch::Device& d) {
         OpArgs a;
         a["grad"] = seeded_randn({6, 9}, 1, d);
         a["exp_avg_sq_row"] = seeded_rand({6}, 2, d);
         a["exp_avg_sq_col"] = seeded_rand({9}, 3, d);
         return a;
       },
       [](OpArgs& a) { ops::second_moment_factored_(a["grad"], a["exp_avg_sq_row"], a["exp_avg_sq_col"], 0.8, 1e-30); },
       [](OpArgs& a) { detail::check_second_moment_factored_args(a["grad"], a["exp_avg_sq_row"], a["exp_avg_sq_col"]); },
       {"exp_avg_sq_row", "exp_avg_sq_col"},
       {"grad", "exp_avg_sq_row", "exp_avg_sq_col"}},
      {"second_moment_full_",
       [](const torch::Device& d) {
         OpArgs a;
         a["grad"] = seeded_randn({3, 4, 5}, 4, d);
         a["exp_avg_sq"] = seeded_rand({3, 4, 5}, 5, d);
         return a;
       },
       [](OpArgs& a) { ops::second_moment_full_(a["grad"], a["exp_avg_sq"], 0.8, 1e-30); },
       [](OpArgs& a) { detail::check_second_moment_full_args(a["grad"], a["exp_avg_sq"]); },
       {"exp_avg_sq"},
       {"exp_avg_sq"}},
      {"apply_update_",
       [](const torch::Device& d) {
         OpArgs a;
         a["param"] = seeded_randn({7, 5}, 6, d);
         a["update"] = seeded_randn({7, 5}, 7, d);
         return a;
       },
       [](OpArgs& a) { ops::apply_update_(a["param"], a["update"], 0.1, 1e-3, true, 1.0, 0.01); },
       [](OpArgs& a) { detail::check_apply_update_args(a["param"], a["update"]); },
       {"param", "update"},
       {"update"}},
      {"full_moment_step_",
       [](const torch::Device& d) {
         OpArgs a;
         const std::vector<std::vector<int64_t>> shapes = {{5}, {3, 4}};
         for (size_t i = 0; i < shapes.size(); ++i) {
           const auto at = [&](const char* list) { return std::string(list) + "[" + std::to_string(i) + "]"; };
           a[at("params")] = seeded_randn(shapes[i], 10 + i, d);
           a[at("grads")] = seeded_randn(shapes[i], 20 + i, d);
           a[at("exp_avg_sqs")] = seeded_rand(shapes[i], 30 + i, d);
           a[at("exp_avgs")] = seeded_randn(shapes[i], 40 + i, d);
         }
         return a;
       },
       [](OpArgs& a) {
         ops::full_moment_step_(
             a.list("params"), a.list("grads"), a.list("exp_avg_sqs"), a.list("exp_avgs"), {0.8, 0.7}, {0.1, 0.2},
             1e-30, 1e-3, 0.9, true, 1.0, 0.01);
       },
       [](OpArgs& a) {
         detail::check_full_moment_step_args(
             a.list("params"), a.list("grads"), a.list("exp_avg_sqs"), a.list("exp_avgs"), {0.8, 0.7}, {0.1, 0.2});
       },
       {"params[0]", "params[1]", "exp_avg_sqs[0]", "exp_avg_sqs[1]", "exp_avgs[0]", "exp_avgs[1]"},
       {"grads[0]", "grads[1]", "exp_avg_sqs[0]", "exp_avg_sqs[1]", "exp_avgs[0]", "exp_avgs[1]"}},
      {"quantize_blockwise_",
       [](const torch::Device& d) {
         OpArgs a;
         a["x"] = seeded_randn({6, 9}, 8, d);
         a["codes"] = torch::empty({6, 9}, torch::dtype(torch::kUInt8).device(d));
         a["absmax"] = torch::empty({4}, torch::device(d)); // 54 elements in blocks of 16
         a["code"] = dynamic_code_map(); // on the CPU for every device
         return a;
       },
       [](OpArgs& a) { ops::quantize_blockwise_(a["x"], a["codes"], a["absmax"], a["code"], kCaseBlockSize); },
       [](OpArgs& a) {
         detail::check_quantize_blockwise_args(a["x"], a["codes"], a["absmax"], a["code"], kCaseBlockSize);
       },
       {"codes", "absmax"},
       {"codes", "absmax", "code"}},
      {"dequantize_blockwise",
       [](const torch::Device& d) {
         OpArgs a;
         auto gen = at::make_generator<at::CPUGeneratorImpl>(9);
         a["codes"] = torch::randint(0, 256, {6, 9}, gen, torch::kUInt8).to(d);
         a["absmax"] = seeded_rand({4}, 10, d);
         a["code"] = dynamic_code_map();
         return a;
       },
       [](OpArgs& a) { ops::dequantize_blockwise(a["codes"], a["absmax"], a["code"], kCaseBlockSize); },
       [](OpArgs& a) { detail::check_dequantize_blockwise_args(a["codes"], a["absmax"], a["code"], kCaseBlockSize); },
       {},
       {"absmax", "code"}},
      // ---- the fused step's operators (src/fused_ops.h)
      {"gradient_sums_",
       [](const torch::Device& d) {
         OpArgs a;
         a["params[0]"] = seeded_randn({6, 9}, 50, d);
         a["params[1]"] = seeded_randn({4, 5}, 51, d);
         a["grads[0]"] = seeded_randn({6, 9}, 52, d);
         a["grads[1]"] = seeded_randn({4, 5}, 53, d);
         a["flags"] = torch::empty({2}, torch::device(d));
         a["sums"] = torch::empty({2 * 2 + 6 + 9 + 4 + 5}, torch::device(d));
         return a;
       },
       [](OpArgs& a) { ops::gradient_sums_(a.list("params"), a.list("grads"), true, a["flags"], a["sums"]); },
       [](OpArgs& a) { detail::check_gradient_sums_args(a.list("params"), a.list("grads"), true, a["flags"], a["sums"]); },
       {"flags", "sums"},
       {"grads[0]", "grads[1]", "flags", "sums"}},
      {"factored_step_",
       [](const torch::Device& d) {
         OpArgs a;
         const std::vector<std::vector<int64_t>> shapes = {{6, 9}, {4, 5}};
         for (size_t i = 0; i < shapes.size(); ++i) {
           const auto at = [&](const char* list) { return detail::item(list, i); };
           a[at("params")] = seeded_randn(shapes[i], 60 + i, d);
           a[at("grads")] = seeded_randn(shapes[i], 62 + i, d);
           a[at("exp_avg_sq_rows")] = seeded_rand({shapes[i][0]}, 64 + i, d);
           a[at("exp_avg_sq_cols")] = seeded_rand({shapes[i][1]}, 66 + i, d);
           a[at("exp_avgs")] = seeded_randn(shapes[i], 68 + i, d);
           a[at("rms")] = torch::zeros({}, torch::device(d));
         }
         a["sums"] = seeded_rand({2 * 2 + 6 + 9 + 4 + 5}, 70, d);
         return a;
       },
       [](OpArgs& a) {
         ops::factored_step_(
             a.list("params"), a.list("grads"), a.list("exp_avg_sq_rows"), a.list("exp_avg_sq_cols"),
             a.list("exp_avgs"), {}, a.list("rms"), a["sums"], {1, 2}, {}, std::nullopt, fused_case_hyper(0.9),
             kCaseBlockSize, std::nullopt);
       },
       [](OpArgs& a) {
         detail::check_factored_step_args(
             a.list("params"), a.list("grads"), a.list("exp_avg_sq_rows"), a.list("exp_avg_sq_cols"),
             a.list("exp_avgs"), {}, a.list("rms"), a["sums"], {1, 2}, {}, std::nullopt,
             ops::hyper_list(fused_case_hyper(0.9)), kCaseBlockSize, std::nullopt);
       },
       {"params[0]", "params[1]", "exp_avg_sq_rows[0]", "exp_avg_sq_rows[1]", "exp_avg_sq_cols[0]",
        "exp_avg_sq_cols[1]", "exp_avgs[0]", "exp_avgs[1]", "rms[0]", "rms[1]", "sums"},
       {"grads[0]", "grads[1]", "exp_avg_sq_rows[0]", "exp_avg_sq_rows[1]", "exp_avg_sq_cols[0]",
        "exp_avg_sq_cols[1]", "exp_avgs[0]", "exp_avgs[1]", "rms[0]", "rms[1]", "sums"}},
      {"full_step_",
       [](const torch::Device& d) {
         OpArgs a;
         const std::vector<std::vector<int64_t>> shapes = {{5}, {3, 4}};
         for (size_t i = 0; i < shapes.size(); ++i) {
           const auto at = [&](const char* list) { return detail::item(list, i); };
           a[at("params")] = seeded_randn(shapes[i], 80 + i, d);
           a[at("grads")] = seeded_randn(shapes[i], 82 + i, d);
           a[at("exp_avg_sqs")] = seeded_rand(shapes[i], 84 + i, d);
           a[at("exp_avgs")] = seeded_randn(shapes[i], 86 + i, d);
           a[at("rms")] = torch::zeros({}, torch::device(d));
         }
         a["sums"] = seeded_rand({4}, 88, d);
         return a;
       },
       [](OpArgs& a) {
         ops::full_step_(
             a.list("params"), a.list("grads"), a.list("exp_avg_sqs"), {}, a.list("exp_avgs"), {}, a.list("rms"),
             a["sums"], {1, 2}, {}, std::nullopt, fused_case_hyper(0.9), kCaseBlockSize, std::nullopt);
       },
       [](OpArgs& a) {
         detail::check_full_step_args(
             a.list("params"), a.list("grads"), a.list("exp_avg_sqs"), {}, a.list("exp_avgs"), {}, a.list("rms"),
             a["sums"], {1, 2}, {}, std::nullopt, ops::hyper_list(fused_case_hyper(0.9)), kCaseBlockSize,
             std::nullopt);
       },
       {"params[0]", "params[1]", "exp_avg_sqs[0]", "exp_avg_sqs[1]", "exp_avgs[0]", "exp_avgs[1]", "rms[0]",
        "rms[1]", "sums"},
       {"grads[0]", "grads[1]", "exp_avg_sqs[0]", "exp_avg_sqs[1]", "exp_avgs[0]", "exp_avgs[1]", "rms[0]",
        "rms[1]", "sums"}},
      // The same with 8-bit second moments: the absmax and code map arguments.
      {"full_step_",
       [](const torch::Device& d) {
         OpArgs a;
         const std::vector<std::vector<int64_t>> shapes = {{40}, {3, 4}};
         for (size_t i = 0; i < shapes.size(); ++i) {
           const auto at = [&](const char* list) { return detail::item(list, i); };
           a[at("params")] = seeded_randn(shapes[i], 90 + i, d);
           a[at("grads")] = seeded_randn(shapes[i], 92 + i, d);
           const auto q = quantize_blockwise(seeded_rand(shapes[i], 94 + i, torch::kCPU), kCaseBlockSize);
           a[at("exp_avg_sqs")] = q.codes.to(d);
           a[at("exp_avg_sq_absmaxs")] = q.absmax.to(d);
           a[at("rms")] = torch::zeros({}, torch::device(d));
         }
         a["sums"] = seeded_rand({4}, 96, d);
         a["code_map"] = dynamic_code_map(); // on the CPU for every device
         return a;
       },
       [](OpArgs& a) {
         ops::full_step_(
             a.list("params"), a.list("grads"), a.list("exp_avg_sqs"), a.list("exp_avg_sq_absmaxs"), {}, {},
             a.list("rms"), a["sums"], {1, 2}, {}, std::nullopt, fused_case_hyper(0.0), kCaseBlockSize, a["code_map"]);
       },
       [](OpArgs& a) {
         detail::check_full_step_args(
             a.list("params"), a.list("grads"), a.list("exp_avg_sqs"), a.list("exp_avg_sq_absmaxs"), {}, {},
             a.list("rms"), a["sums"], {1, 2}, {}, std::nullopt, ops::hyper_list(fused_case_hyper(0.0)),
             kCaseBlockSize, a["code_map"]);
       },
       {"params[0]", "params[1]", "exp_avg_sqs[0]", "exp_avg_sqs[1]", "exp_avg_sq_absmaxs[0]",
        "exp_avg_sq_absmaxs[1]", "rms[0]", "rms[1]", "sums"},
       {"grads[0]", "grads[1]", "exp_avg_sqs[0]", "exp_avg_sqs[1]", "exp_avg_sq_absmaxs[0]",
        "exp_avg_sq_absmaxs[1]", "rms[0]", "rms[1]", "sums", "code_map"}},
      {"factored_normalize_",
       [](const torch::Device& d) {
         OpArgs a;
         for (size_t i = 0; i < 2; ++i) {
           const auto at = [&](const char* list) { return detail::item(list, i); };
           a[at("grads")] = seeded_randn({6, 9}, 100 + i, d);
           a[at("exp_avg_sq_rows")] = seeded_rand({6}, 102 + i, d);
           a[at("exp_avg_sq_cols")] = seeded_rand({9}, 104 + i, d);
         }
         a["sums"] = seeded_rand({2 * 2 + 2 * (6 + 9)}, 106, d);
         a["out"] = torch::empty({2, 6, 9}, torch::device(d));
         return a;
       },
       [](OpArgs& a) {
         ops::factored_normalize_(
             a.list("grads"), a.list("exp_avg_sq_rows"), a.list("exp_avg_sq_cols"), a["sums"], {1, 2}, {}, 1e-30, -0.8,
             a["out"]);
       },
       [](OpArgs& a) {
         detail::check_factored_normalize_args(
             a.list("grads"), a.list("exp_avg_sq_rows"), a.list("exp_avg_sq_cols"), a["sums"], {1, 2}, {}, a["out"]);
       },
       {"exp_avg_sq_rows[0]", "exp_avg_sq_rows[1]", "exp_avg_sq_cols[0]", "exp_avg_sq_cols[1]", "sums", "out"},
       {"grads[1]", "exp_avg_sq_rows[0]", "exp_avg_sq_rows[1]", "exp_avg_sq_cols[0]", "exp_avg_sq_cols[1]", "sums",
        "out"}},
      {"apply_updates_",
       [](const torch::Device& d) {
         OpArgs a;
         for (size_t i = 0; i < 2; ++i) {
           const auto at = [&](const char* list) { return detail::item(list, i); };
           a[at("params")] = seeded_randn({6, 9}, 110 + i, d);
           a[at("rms")] = torch::zeros({}, torch::device(d));
           // Capturable form: step counts from the counters.
           a[at("counters")] = torch::tensor({static_cast<int64_t>(3 + i), int64_t{7}, int64_t{7}}, torch::kLong).to(d);
         }
         a["updates"] = seeded_randn({2, 6, 9}, 112, d);
         a["sums"] = seeded_rand({2 * 2 + 2 * (6 + 9)}, 113, d);
         return a;
       },
       [](OpArgs& a) {
         ops::apply_updates_(
             a.list("params"), a["updates"], a.list("rms"), a["sums"], {}, a.list("counters"), std::nullopt,
             fused_case_hyper(0.9));
       },
       [](OpArgs& a) {
         detail::check_apply_updates_args(
             a.list("params"), a["updates"], a.list("rms"), a["sums"], {}, a.list("counters"), std::nullopt,
             ops::hyper_list(fused_case_hyper(0.9)));
       },
       {"params[0]", "params[1]", "rms[0]", "rms[1]", "sums"},
       {"params[1]", "updates", "rms[0]", "rms[1]", "sums", "counters[0]", "counters[1]"}},
      {"philox_normal_batch_",
       [](const torch::Device& d) {
         OpArgs a;
         a["out"] = torch::empty({2, 5, 7}, torch::device(d));
         for (size_t i = 0; i < 2; ++i) {
           a[detail::item("counters", i)] = torch::tensor({int64_t{1}, int64_t{11 + static_cast<int64_t>(i)}, int64_t{5}}, torch::kLong).to(d);
         }
         return a;
       },
       [](OpArgs& a) { ops::philox_normal_batch_(a["out"], {}, a.list("counters"), 1, ops::SeedSide::right, 0.5); },
       [](OpArgs& a) { detail::check_philox_normal_batch_args(a["out"], {}, a.list("counters"), 1, 2); },
       {"out"},
       {"out", "counters[0]", "counters[1]"}},
      {"gather_moments_",
       [](const torch::Device& d) {
         OpArgs a;
         a["moments[0]"] = seeded_randn({3, 4}, 120, d);
         a["moments[1]"] = seeded_randn({3, 4}, 121, d);
         a["out"] = torch::empty({2, 3, 4}, torch::device(d));
         return a;
       },
       [](OpArgs& a) { ops::gather_moments_(a.list("moments"), {}, kCaseBlockSize, std::nullopt, a["out"]); },
       [](OpArgs& a) { detail::check_gather_moments_args(a.list("moments"), {}, kCaseBlockSize, std::nullopt, a["out"]); },
       {"out"},
       {"moments[1]", "out"}},
      {"scatter_moments_",
       [](const torch::Device& d) {
         OpArgs a;
         a["src"] = seeded_randn({2, 3, 4}, 122, d);
         a["mix"] = seeded_randn({2, 3, 4}, 123, d);
         a["moments[0]"] = torch::empty({3, 4}, torch::device(d));
         a["moments[1]"] = torch::empty({3, 4}, torch::device(d));
         return a;
       },
       [](OpArgs& a) {
         ops::scatter_moments_(a["src"], a.list("moments"), {}, kCaseBlockSize, std::nullopt, a["mix"], 0.9);
       },
       [](OpArgs& a) {
         detail::check_scatter_moments_args(a["src"], a.list("moments"), {}, kCaseBlockSize, std::nullopt, a["mix"]);
       },
       {"moments[0]", "moments[1]"},
       {"src", "mix", "moments[1]"}},
      {"advance_counters_",
       [](const torch::Device& d) {
         OpArgs a;
         a["counters[0]"] = torch::tensor({int64_t{0}, int64_t{5}, int64_t{5}}, torch::kLong).to(d);
         a["counters[1]"] = torch::tensor({int64_t{1}, int64_t{6}, int64_t{6}}, torch::kLong).to(d);
         return a;
       },
       [](OpArgs& a) { ops::advance_counters_(a.list("counters"), 2); },
       [](OpArgs& a) { detail::check_advance_counters_args(a.list("counters"), 2); },
       {"counters[0]", "counters[1]"},
       {"counters[0]", "counters[1]"}},
      {"keep_unless_resampled_",
       [](const torch::Device& d) {
         OpArgs a;
         a["transforms"] = seeded_randn({2, 4, 4}, 130, d);
         a["counters[0]"] = torch::tensor({int64_t{2}, int64_t{5}, int64_t{4}}, torch::kLong).to(d);
         a["counters[1]"] = torch::tensor({int64_t{3}, int64_t{6}, int64_t{6}}, torch::kLong).to(d);
         return a;
       },
       [](OpArgs& a) { ops::keep_unless_resampled_(a["transforms"], a.list("counters"), 2); },
       [](OpArgs& a) { detail::check_keep_unless_resampled_args(a["transforms"], a.list("counters"), 2); },
       {"transforms"},
       {"transforms", "counters[0]", "counters[1]"}},
  };
  return cases;
}

/// Whether `message` mentions `name` as a whole argument name (not as part
/// of a longer one: "exp_avg_sq" is not named by "exp_avg_sq_row").
inline bool names_argument(const std::string& message, const std::string& name) {
  const auto is_name_char = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '['; };
  for (size_t at = message.find(name); at != std::string::npos; at = message.find(name, at + 1)) {
    const bool starts = at == 0 || !is_name_char(message[at - 1]);
    const size_t end = at + name.size();
    const bool ends = end == message.size() || !is_name_char(message[end]);
    if (starts && ends) {
      return true;
    }
  }
  return false;
}

/// Runs `fn`, which must throw c10::Error; returns the message ("" and a
/// test failure when it does not throw).
template <typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  ADD_FAILURE() << "no error was raised";
  return "";
}

/// The same tensor with a size the operator cannot accept: one element more,
/// flattened (1-d where the operator wants 2-d).
inline torch::Tensor misshapen(const torch::Tensor& valid) {
  return torch::zeros({valid.numel() + 1}, valid.options());
}

} // namespace flora::testing
