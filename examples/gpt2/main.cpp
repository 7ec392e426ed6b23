// gpt2-finetune: fine-tunes a Hugging Face GPT-2 (or trains one from
// scratch) with Adam, AdamW or Flora and compares them side by side. See
// README.md beside this file.
//
// Default (no arguments): the shipped tiny GPT-2 (assets/tiny-gpt2) on the
// shipped corpus (data/train.txt, held-out data/valid.txt), Adam against
// Flora on the same batches, report in ./gpt2-out.

#include "cli.h"
#include "finetune.h"

#include <c10/util/Exception.h>

#include <cstdio>
#include <exception>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  namespace gpt2 = flora::gpt2;
  try {
    const auto command_line = gpt2::parse_command_line(std::vector<std::string>(argv + 1, argv + argc));
    if (command_line.help) {
      std::printf("%s", command_line.help_text.c_str());
      return 0;
    }
    return gpt2::run_all(gpt2::prepare_run(command_line.settings));
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what_without_backtrace());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
  }
  return 1;
}
