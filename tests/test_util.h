#pragma once

// Helpers shared by the test files.

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>

namespace flora::testing {

/// max |a - b| / max |b| (0 when both are all zero).
inline double relative_error(const torch::Tensor& actual, const torch::Tensor& expected) {
  auto a = actual.to(torch::kDouble).cpu();
  auto b = expected.to(torch::kDouble).cpu();
  const double scale = b.abs().max().item<double>();
  const double diff = (a - b).abs().max().item<double>();
  if (scale == 0.0) {
    return diff;
  }
  return diff / scale;
}

/// Runs `fn` and checks that it throws c10::Error whose message contains
/// `needle`.
template <typename Fn>
void expect_error(Fn&& fn, const std::string& needle) {
  try {
    fn();
  } catch (const c10::Error& e) {
    const std::string message = e.what_without_backtrace();
    EXPECT_NE(message.find(needle), std::string::npos) << "message was: " << message;
    return;
  }
  ADD_FAILURE() << "expected an error containing '" << needle << "'";
}

inline torch::Tensor param(torch::IntArrayRef shape, uint64_t seed, torch::Dtype dtype = torch::kFloat) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return (torch::randn(shape, gen) * 0.5).to(dtype).requires_grad_(true);
}

inline torch::Tensor randn_like_seeded(const torch::Tensor& like, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return torch::randn(like.sizes(), gen).to(like.scalar_type());
}

} // namespace flora::testing
