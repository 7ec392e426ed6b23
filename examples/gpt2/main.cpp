// gpt2-finetune: fine-tunes a Hugging Face GPT-2 (or trains one from
// scratch) with Adam, AdamW or Flora and compares them side by side. See
// README.md beside this file.
//
// Default (no arguments): the shipped tiny GPT-2 (assets/tiny-gpt2) on the
// shipped corpus (data/train.txt, held-out data/valid.txt), Adam against
// Flora on the same batches, report in ./gpt2-out.

#include "finetune.h"

#include <string>
#include <vector>

int main(int argc, char** argv) {
  return flora::gpt2::run_program(std::vector<std::string>(argv + 1, argv + argc));
}
