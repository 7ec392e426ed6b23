// flora_fuzz_replay <target> [--mutants N] [--seed S] [--dict FILE]
//                   <file or directory>...
// runs one fuzz target (see fuzz_target.h) over the given inputs, each file
// once (directories file by file in name order), then over N mutants of
// them: a bounded, deterministic fuzz run without libFuzzer (a seeded
// generator picks an input and edits its bytes: bit flips, random bytes,
// insertions, deletions, copies within the input, dictionary words), for
// the ordinary build that CI tests. Exits 0 when every input returned; a
// finding aborts the process as it would under libFuzzer, after printing
// the input's bytes' file (written to flora-fuzz-crash-<target> in the
// working directory) so that it can be replayed and added to the corpus.

#include "fuzz_target.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <csignal>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace flora::fuzz {
namespace {

std::map<std::string, Entry>& targets() {
  static std::map<std::string, Entry> all;
  return all;
}

bool is_dir(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

void collect(const std::string& path, std::vector<std::string>& files) {
  if (!is_dir(path)) {
    files.push_back(path);
    return;
  }
  std::vector<std::string> names;
  if (DIR* dir = ::opendir(path.c_str())) {
    while (const dirent* e = ::readdir(dir)) {
      const std::string name = e->d_name;
      if (name != "." && name != "..") {
        names.push_back(name);
      }
    }
    ::closedir(dir);
  }
  std::sort(names.begin(), names.end());
  for (const auto& name : names) {
    collect(path + "/" + name, files);
  }
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::cerr << "cannot read " << path << '\n';
    std::exit(2);
  }
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// libFuzzer's dictionary format: one "word" per line, \xNN and \\ \" escapes.
std::vector<std::string> read_dict(const std::string& path) {
  std::vector<std::string> words;
  std::istringstream lines(read_all(path));
  std::string line;
  while (std::getline(lines, line)) {
    const auto open = line.find('"');
    const auto close = line.rfind('"');
    if (open == std::string::npos || close <= open) {
      continue;
    }
    std::string word;
    for (size_t i = open + 1; i < close; ++i) {
      if (line[i] == '\\' && i + 1 < close) {
        if (line[i + 1] == 'x' && i + 3 < close) {
          word.push_back(static_cast<char>(std::stoi(line.substr(i + 2, 2), nullptr, 16)));
          i += 3;
        } else {
          word.push_back(line[++i]);
        }
      } else {
        word.push_back(line[i]);
      }
    }
    words.push_back(word);
  }
  return words;
}

// One to four edits of `input`'s bytes.
std::string mutate(std::string input, std::mt19937_64& rng, const std::vector<std::string>& dict) {
  auto below = [&](size_t n) { return n == 0 ? size_t{0} : static_cast<size_t>(rng() % n); };
  const size_t edits = 1 + below(4);
  for (size_t e = 0; e < edits; ++e) {
    const size_t at = below(input.size() + 1);
    switch (below(dict.empty() ? 6 : 7)) {
      case 0:
        if (!input.empty()) {
          input[below(input.size())] ^= static_cast<char>(1u << below(8));
        }
        break;
      case 1:
        if (!input.empty()) {
          input[below(input.size())] = static_cast<char>(rng());
        }
        break;
      case 2:
        input.insert(at, below(8) + 1, static_cast<char>(rng()));
        break;
      case 3:
        input.erase(std::min(at, input.size()), below(16) + 1);
        break;
      case 4: { // copy a piece of the input elsewhere in it
        if (!input.empty()) {
          const size_t from = below(input.size());
          input.insert(at, input.substr(from, below(32) + 1));
        }
        break;
      }
      case 5: { // an interesting byte value
        static const unsigned char values[] = {0, 1, 0x7f, 0x80, 0xff, '0', '9', '"', '{', '}', '[', ']', ',', '\n'};
        if (!input.empty()) {
          input[below(input.size())] = static_cast<char>(values[below(sizeof(values))]);
        }
        break;
      }
      default:
        input.insert(std::min(at, input.size()), dict[below(dict.size())]);
        break;
    }
  }
  return input;
}

std::string current_target;
std::string current_input;

void save_crash_input(int) {
  const std::string path = "flora-fuzz-crash-" + current_target;
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f != nullptr) {
    std::fwrite(current_input.data(), 1, current_input.size(), f);
    std::fclose(f);
    std::fprintf(stderr, "flora_fuzz_replay: the failing input is in %s\n", path.c_str());
  }
  std::signal(SIGABRT, SIG_DFL);
  std::abort();
}

} // namespace

bool register_target(const char* name, Entry entry) {
  targets()[name] = entry;
  return true;
}

} // namespace flora::fuzz

int main(int argc, char** argv) {
  using namespace flora::fuzz;
  if (argc < 3 || targets().count(argv[1]) == 0) {
    std::cerr << "usage: " << argv[0] << " <target> [--mutants N] [--seed S] [--dict FILE] <file or directory>...\ntargets:";
    for (const auto& [name, entry] : targets()) {
      std::cerr << ' ' << name;
    }
    std::cerr << '\n';
    return 2;
  }
  const auto entry = targets()[argv[1]];
  current_target = argv[1];
  int64_t mutants = 0;
  uint64_t seed = 1;
  std::vector<std::string> dict;
  std::vector<std::string> files;
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    if ((arg == "--mutants" || arg == "--seed" || arg == "--dict") && i + 1 < argc) {
      const std::string value = argv[++i];
      if (arg == "--mutants") {
        mutants = std::stoll(value);
      } else if (arg == "--seed") {
        seed = std::stoull(value);
      } else {
        dict = read_dict(value);
      }
    } else {
      collect(arg, files);
    }
  }
  if (files.empty()) {
    std::cerr << argv[0] << ": no input files\n";
    return 2;
  }
  std::signal(SIGABRT, save_crash_input);
  auto run_one = [&](const std::string& bytes) {
    current_input = bytes;
    entry(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  };
  std::vector<std::string> inputs;
  for (const auto& file : files) {
    inputs.push_back(read_all(file));
    run_one(inputs.back());
  }
  std::mt19937_64 rng(seed);
  for (int64_t k = 0; k < mutants; ++k) {
    run_one(mutate(inputs[static_cast<size_t>(rng() % inputs.size())], rng, dict));
  }
  std::cout << argv[1] << ": " << files.size() << " inputs replayed and " << mutants << " mutants (seed " << seed
            << ") run, no finding\n";
  return 0;
}
