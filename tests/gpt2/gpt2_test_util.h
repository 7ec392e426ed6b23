#pragma once

// Helpers of the GPT-2 example's tests.

#include "../test_util.h"

#include <string>

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

// The project's shared test helpers: expect_error, TempDir.
using flora::testing::expect_error;
using flora::testing::TempDir;

} // namespace flora::gpt2::testing
