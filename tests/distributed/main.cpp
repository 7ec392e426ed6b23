// The data-parallel test binary: GoogleTest, or, when started with
// --flora-worker=<name>, one rank of a multi-process test (spawn.h).

#include "spawn.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>

int main(int argc, char** argv) {
  const char* prefix = "--flora-worker=";
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], prefix, std::strlen(prefix)) == 0) {
      return flora::dist_test::run_worker(argv[i] + std::strlen(prefix));
    }
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
