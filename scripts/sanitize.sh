#!/usr/bin/env bash
# The sanitizer build: flora, its tests and the GPT-2 example compiled with
# clang and -fsanitize=address,undefined (plus libFuzzer's coverage, so that
# the same build serves scripts/fuzz.sh), in its own build directory, then
# every CPU test run under the sanitizers. LibTorch is not instrumented (it
# is the PyPI wheel as shipped); tests/sanitize/ holds the runtime options
# and the suppressions, each entry with its reason.
#
#   scripts/sanitize.sh [--build-only] [--target NAME]...
#
# Default targets: every test binary and fuzz target; --build-only builds
# and runs nothing (scripts/fuzz.sh builds its targets so).
#
# Environment: FLORA_SANITIZE_BUILD_DIR (default build-sanitize),
# FLORA_SANITIZE (default address,undefined), FLORA_JOBS, and
# FLORA_SANITIZE_TESTS, a ctest -R regex (default: all but the CMake
# package tests, which build a consumer project without the sanitizers
# against the instrumented library and so cannot link).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/sanitize-env.sh

build="${FLORA_SANITIZE_BUILD_DIR:-build-sanitize}"
jobs="${FLORA_JOBS:-$(nproc)}"
targets=()
run_tests=1
while [ $# -gt 0 ]; do
  case "$1" in
    --target) targets+=(--target "$2"); shift 2 ;;
    --build-only) run_tests=0; shift ;;
    *) echo "scripts/sanitize.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ ${#targets[@]} -eq 0 ]; then
  targets=(--target flora_tests --target flora_gpt2_tests --target flora_distributed_tests)
  for t in optimizer_checkpoint accumulator_checkpoint synchronizer_checkpoint safetensors config tokenizer; do
    targets+=(--target "flora_fuzz_$t")
  done
fi

t0=$(date +%s)
# clang-14 with its sanitizer and libFuzzer runtimes (Debian's packages),
# installed by scripts/setup.sh through apt-get when missing.
export FLORA_EXTRA_PACKAGES="${FLORA_EXTRA_PACKAGES:-} clang-14 libclang-rt-14-dev"
FLORA_BUILD_DIR="$build" FLORA_BUILD_TYPE=Release scripts/build.sh "${targets[@]}" \
  -DCMAKE_CXX_COMPILER=clang++-14 -DCMAKE_C_COMPILER=clang-14 \
  -DCMAKE_CXX_FLAGS_RELEASE="-O2 -DNDEBUG" \
  -DFLORA_SANITIZE="${FLORA_SANITIZE:-address,undefined}" -DFLORA_FUZZ=ON \
  -DFLORA_CUDA=OFF -DFLORA_BUILD_BENCHMARKS=OFF
t1=$(date +%s)
echo "[sanitize] build: $((t1 - t0)) s"
[ "$run_tests" = 1 ] || exit 0

ctest --test-dir "$build" --output-on-failure --parallel "$jobs" \
  -R "${FLORA_SANITIZE_TESTS:-.}" -E '^package\.'
echo "[sanitize] tests: $(( $(date +%s) - t1 )) s"
