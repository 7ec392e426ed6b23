#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

/// Skips the current test on a machine without a CUDA device, saying so.
#define FLORA_REQUIRE_CUDA()                                                        \
  do {                                                                              \
    if (!torch::cuda::is_available()) {                                             \
      GTEST_SKIP() << "no CUDA device on this machine: GPU test skipped";           \
    }                                                                               \
  } while (0)
