#pragma once

// The check that every rank set up the same exchange: each rank describes
// its set-up as lines "what: value", the ranks all-gather the descriptions,
// and every rank compares each with rank 0's and throws the same error,
// naming the first line that differs and both values, if any does.

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/types.h>

#include <chrono>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace flora::distributed::detail {

class Fingerprint {
 public:
  template <typename T>
  void add(const std::string& what, const T& value) {
    std::ostringstream line;
    line << what << ": " << value;
    lines_.push_back(line.str());
  }
  const std::vector<std::string>& lines() const {
    return lines_;
  }
  std::string text() const;
  static std::vector<std::string> parse(const std::string& text);

 private:
  std::vector<std::string> lines_;
};

/// The first difference between rank 0's lines and another rank's, as an
/// error message ("" when all agree). Pure, for the tests.
std::string first_difference(const std::vector<std::vector<std::string>>& per_rank, const std::string& who);

/// A collective: all-gathers every rank's fingerprint (as bytes on `device`)
/// and throws on every rank if they differ.
void check_agreement(
    c10d::Backend& backend,
    const torch::Device& device,
    const Fingerprint& mine,
    const std::string& who,
    std::optional<std::chrono::milliseconds> timeout);

} // namespace flora::distributed::detail
