#pragma once

// A private directory for the files a fuzz target must hand to a reader that
// takes paths (made once per process under $TMPDIR or /tmp, removed at exit).

#include <cstdlib>
#include <string>

#include <unistd.h>

namespace flora::fuzz {

inline const std::string& scratch_dir() {
  static const std::string dir = [] {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/flora-fuzz-XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) {
      std::abort();
    }
    static struct Remover {
      std::string path;
      ~Remover() {
        // The files are the targets' (a handful of names, overwritten per input).
        const std::string command = "rm -rf '" + path + "'";
        [[maybe_unused]] const int rc = std::system(command.c_str());
      }
    } remover{pattern};
    return pattern;
  }();
  return dir;
}

/// Writes `bytes` to scratch_dir()/name (not atomically: only we read it).
std::string write_scratch(const std::string& name, const std::string& bytes);

} // namespace flora::fuzz
