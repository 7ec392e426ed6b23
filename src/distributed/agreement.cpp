#include "agreement.h"

#include "collective.h"

#include <c10/util/Exception.h>
#include <torch/torch.h>

#include <algorithm>

namespace flora::distributed::detail {

std::string Fingerprint::text() const {
  std::string out;
  for (const auto& line : lines_) {
    out += line;
    out += '\n';
  }
  return out;
}

std::vector<std::string> Fingerprint::parse(const std::string& text) {
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < text.size()) {
    const size_t end = text.find('\n', start);
    const size_t stop = end == std::string::npos ? text.size() : end;
    lines.push_back(text.substr(start, stop - start));
    start = stop + 1;
  }
  return lines;
}

namespace {

std::string what_of(const std::string& line) {
  const size_t colon = line.find(": ");
  return colon == std::string::npos ? line : line.substr(0, colon);
}

std::string value_of(const std::string& line) {
  const size_t colon = line.find(": ");
  return colon == std::string::npos ? std::string() : line.substr(colon + 2);
}

} // namespace

std::string first_difference(const std::vector<std::vector<std::string>>& per_rank, const std::string& who) {
  if (per_rank.empty()) {
    return "";
  }
  const auto& reference = per_rank[0];
  for (size_t r = 1; r < per_rank.size(); ++r) {
    const auto& other = per_rank[r];
    const size_t common = std::min(reference.size(), other.size());
    for (size_t i = 0; i < common; ++i) {
      if (reference[i] == other[i]) {
        continue;
      }
      const std::string a = what_of(reference[i]);
      const std::string b = what_of(other[i]);
      if (a == b) {
        return who + ": the ranks disagree on " + a + ": rank 0 has " + value_of(reference[i]) + ", rank " +
            std::to_string(r) + " has " + value_of(other[i]) + ". Every rank must build the same model, options and seeds";
      }
      return who + ": the ranks disagree: rank 0 has '" + reference[i] + "' where rank " + std::to_string(r) +
          " has '" + other[i] + "'. Every rank must build the same model, options and seeds";
    }
    if (reference.size() != other.size()) {
      const bool longer = reference.size() > other.size();
      const std::string& extra = longer ? reference[common] : other[common];
      return who + ": the ranks disagree: rank " + (longer ? std::string("0") : std::to_string(r)) + " has '" +
          extra + "' and rank " + (longer ? std::to_string(r) : std::string("0")) +
          " has nothing there. Every rank must build the same model, options and seeds";
    }
  }
  return "";
}

void check_agreement(
    c10d::Backend& backend, const torch::Device& device, const Fingerprint& mine, const std::string& who,
    std::optional<std::chrono::milliseconds> timeout) {
  const std::string text = mine.text();
  // Lengths first, so that every rank can pad its bytes to the longest.
  auto length = torch::tensor({static_cast<int64_t>(text.size())}, torch::kLong).to(device);
  const auto lengths = all_gather(backend, length, timeout, who + ": the agreement check (lengths)");
  std::vector<int64_t> sizes;
  int64_t longest = 0;
  for (const auto& l : lengths) {
    sizes.push_back(l.cpu().item<int64_t>());
    longest = std::max(longest, sizes.back());
  }
  auto bytes = torch::zeros({std::max<int64_t>(longest, 1)}, torch::kUInt8);
  std::copy(text.begin(), text.end(), bytes.data_ptr<uint8_t>());
  const auto gathered = all_gather(backend, bytes.to(device), timeout, who + ": the agreement check");
  std::vector<std::vector<std::string>> per_rank;
  for (size_t r = 0; r < gathered.size(); ++r) {
    const auto host = gathered[r].cpu();
    const auto* data = reinterpret_cast<const char*>(host.data_ptr<uint8_t>());
    per_rank.push_back(Fingerprint::parse(std::string(data, data + sizes[r])));
  }
  const std::string difference = first_difference(per_rank, who);
  TORCH_CHECK(difference.empty(), difference);
}

} // namespace flora::distributed::detail

