#!/usr/bin/env bash
# The main job: the bundled GPT-2 fine-tune example, offline, comparing
# torch::optim::Adam and flora::Flora on the shipped tiny GPT-2 and corpus.
# Builds (with the one-time set-up) only what it runs: the library and the
# example program, not the tests and benchmarks (scripts/test.sh builds
# those, in the same build directory, reusing what this built). Arguments go
# to the example (e.g. --model-dir DIR for a real Hugging Face GPT-2; --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh --target gpt2-finetune
exec "${FLORA_BUILD_DIR:-build}/examples/gpt2/gpt2-finetune" "$@"
