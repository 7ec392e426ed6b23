#pragma once

// Helpers of the GPT-2 example's tests (self-contained: the example's tests
// do not depend on the optimizer tests' helpers).

#include <c10/util/Exception.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include <dirent.h>
#include <ftw.h>
#include <stdlib.h>
#include <sys/stat.h>

namespace flora::gpt2::testing {

inline std::string fixture(const std::string& name) {
  return std::string(FLORA_GPT2_FIXTURE_DIR) + "/" + name;
}

/// The shipped tiny model directory (examples/gpt2/assets/tiny-gpt2).
inline std::string tiny_model_dir() {
  return std::string(FLORA_GPT2_SOURCE_DIR) + "/assets/tiny-gpt2";
}

inline std::string example_file(const std::string& name) {
  return std::string(FLORA_GPT2_SOURCE_DIR) + "/" + name;
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

/// A temporary directory, removed with its contents at the end of the scope.
/// POSIX calls, not <filesystem> (the LibTorch wheels export their own
/// std::filesystem symbols, pytorch/pytorch#133437).
class TempDir {
 public:
  TempDir() {
    std::string pattern = "/tmp/flora-gpt2-test-XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) {
      throw std::runtime_error("mkdtemp failed");
    }
    path_ = pattern;
  }
  ~TempDir() {
    ::nftw(path_.c_str(), [](const char* p, const struct stat*, int, struct FTW*) { return std::remove(p); }, 16,
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

} // namespace flora::gpt2::testing
