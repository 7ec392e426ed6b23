#pragma once

// Helpers shared by the test files.

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>
#include <string>
#include <vector>

#include <dirent.h>
#include <ftw.h>
#include <unistd.h>

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

/// Three linear layers with tanh between them: the small network the
/// training tests fit.
struct TanhMlp : torch::nn::Module {
  TanhMlp(int64_t in, int64_t hidden, int64_t out) {
    a = register_module("a", torch::nn::Linear(in, hidden));
    b = register_module("b", torch::nn::Linear(hidden, hidden));
    c = register_module("c", torch::nn::Linear(hidden, out));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    return c(torch::tanh(b(torch::tanh(a(x)))));
  }
  torch::nn::Linear a{nullptr}, b{nullptr}, c{nullptr};
};

/// The optimizer's state of `p`, or null if it has none yet.
template <typename State, typename Optimizer>
const State* state_of(const Optimizer& opt, const torch::Tensor& p) {
  const auto it = opt.state().find(p.unsafeGetTensorImpl());
  return it == opt.state().end() ? nullptr : &static_cast<const State&>(*it->second);
}

/// A temporary directory, removed with its contents at the end of the scope.
/// (POSIX calls, not <filesystem>: the LibTorch wheels export their own
/// statically linked std::filesystem symbols, pytorch/pytorch#133437, and a
/// program linked against them can crash calling std::filesystem.)
class TempDir {
 public:
  TempDir() {
    std::string pattern = "/tmp/flora-test-XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) {
      throw std::runtime_error("mkdtemp failed");
    }
    path_ = pattern;
  }
  ~TempDir() {
    ::nftw(path_.c_str(), [](const char* p, const struct stat*, int, struct FTW*) { return ::remove(p); }, 16,
           FTW_DEPTH | FTW_PHYS);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const {
    return path_;
  }
  std::string file(const std::string& name) const {
    return path_ + "/" + name;
  }
  /// Names of the entries in the directory (not . and ..).
  std::vector<std::string> entries() const {
    std::vector<std::string> names;
    if (DIR* d = ::opendir(path_.c_str())) {
      while (const dirent* e = ::readdir(d)) {
        const std::string name = e->d_name;
        if (name != "." && name != "..") {
          names.push_back(name);
        }
      }
      ::closedir(d);
    }
    return names;
  }

 private:
  std::string path_;
};

} // namespace flora::testing
