#!/usr/bin/env bash
# Builds everything (with the one-time set-up) and runs the main job: the
# bundled GPT-2 fine-tune example, offline, comparing torch::optim::Adam and
# flora::Flora on the shipped tiny GPT-2 and corpus. Arguments go to the
# example (e.g. --model-dir DIR for a real Hugging Face GPT-2; --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
exec "${FLORA_BUILD_DIR:-build}/examples/gpt2/gpt2-finetune" "$@"
