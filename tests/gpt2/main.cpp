// The GPT-2 example's test binary: GoogleTest, or, when started with
// --flora-worker=<name>, one rank of a multi-process data-parallel test
// (tests/distributed/spawn.h starts this binary once per rank).

#include <flora/version.h>

#include <gtest/gtest.h>

#include <cstring>

#if FLORA_WITH_DISTRIBUTED
#include "../distributed/spawn.h"
#endif

int main(int argc, char** argv) {
#if FLORA_WITH_DISTRIBUTED
  const char* prefix = "--flora-worker=";
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], prefix, std::strlen(prefix)) == 0) {
      return flora::dist_test::run_worker(argv[i] + std::strlen(prefix));
    }
  }
#endif
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
