#pragma once

// One fuzz target per file:
//
//   FLORA_FUZZ_TARGET(safetensors) { ... data, size ...; return 0; }
//
// In the libFuzzer build (FLORA_FUZZ=ON, FLORA_LIBFUZZER defined) the body is
// LLVMFuzzerTestOneInput of its own program, flora_fuzz_<name>. In every
// build the same file is also compiled into flora_fuzz_replay, which runs a
// target over files (the checked-in corpus, a crash input): CTest replays the
// corpus in the ordinary build too, without libFuzzer or clang.
//
// A target returns normally for an input that loads and for one that fails
// with the documented exception (c10::Error); anything else that goes wrong
// is a finding: an uncaught exception of another type terminates, and
// FLORA_FUZZ_CHECK aborts with a message when a property of the target does
// not hold (e.g. a failed load changed the optimizer).

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace flora::fuzz {

using Entry = int (*)(const uint8_t* data, size_t size);

/// Called by FLORA_FUZZ_TARGET in the replay build; returns true.
bool register_target(const char* name, Entry entry);

[[noreturn]] inline void fail(const char* file, int line, const char* what) {
  std::fprintf(stderr, "\nflora fuzz: property violated at %s:%d: %s\n", file, line, what);
  std::fflush(stderr);
  std::abort();
}

} // namespace flora::fuzz

#define FLORA_FUZZ_CHECK(condition, what)            \
  do {                                               \
    if (!(condition)) {                              \
      ::flora::fuzz::fail(__FILE__, __LINE__, what); \
    }                                                \
  } while (0)

#ifdef FLORA_LIBFUZZER
#define FLORA_FUZZ_TARGET(name) extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
#else
#define FLORA_FUZZ_TARGET(name)                                                    \
  static int flora_fuzz_target_##name(const uint8_t* data, size_t size);           \
  [[maybe_unused]] static const bool flora_fuzz_registered_##name =                \
      ::flora::fuzz::register_target(#name, &flora_fuzz_target_##name);            \
  static int flora_fuzz_target_##name(const uint8_t* data, size_t size)
#endif
