#pragma once

// Helpers of the GPT-2 example's tests.

#include "test_util.h" // flora::testing::TempDir, expect_error

#include <string>

namespace flora::gpt2::testing {

using flora::testing::expect_error;
using flora::testing::TempDir;

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

} // namespace flora::gpt2::testing
