#!/usr/bin/env bash
# Set up (scripts/setup.sh), configure and build flora into ${FLORA_BUILD_DIR:-build}.
#
#   scripts/build.sh [--target NAME]... [CMake configure arguments]
#
# Without --target everything is built (library, tests, benchmarks,
# examples); with it only the named targets and what they need, e.g.
# --target gpt2-finetune builds the library and the GPT-2 example. Other
# arguments go to CMake's configure step, e.g. -DFLORA_CUDA=OFF.
set -euo pipefail
cd "$(dirname "$0")/.."

targets=()
configure=()
while [ $# -gt 0 ]; do
  case "$1" in
    --target)
      [ $# -ge 2 ] || { echo "scripts/build.sh: --target needs a target name" >&2; exit 2; }
      targets+=(--target "$2"); shift 2 ;;
    -*) configure+=("$1"); shift ;;
    *)
      # CMake would take a bare word for a source directory and drop it.
      echo "scripts/build.sh: '$1' is neither --target NAME nor a CMake option (-D...); give --target before each target" >&2
      exit 2 ;;
  esac
done

prefix="$(scripts/setup.sh)"
build="${FLORA_BUILD_DIR:-build}"
jobs="${FLORA_JOBS:-$(nproc)}"

cmake -S . -B "$build" -G Ninja \
  -DCMAKE_BUILD_TYPE="${FLORA_BUILD_TYPE:-Release}" \
  -DCMAKE_PREFIX_PATH="$prefix" \
  "${configure[@]}" >/dev/null
cmake --build "$build" --parallel "$jobs" "${targets[@]}"
