#!/usr/bin/env bash
# Set up (scripts/setup.sh), configure and build flora into ${FLORA_BUILD_DIR:-build}.
# Extra arguments go to CMake's configure step, e.g. -DFLORA_CUDA=OFF.
set -euo pipefail
cd "$(dirname "$0")/.."

prefix="$(scripts/setup.sh)"
build="${FLORA_BUILD_DIR:-build}"
jobs="${FLORA_JOBS:-$(nproc)}"

cmake -S . -B "$build" -G Ninja \
  -DCMAKE_BUILD_TYPE="${FLORA_BUILD_TYPE:-Release}" \
  -DCMAKE_PREFIX_PATH="$prefix" \
  "$@" >/dev/null
cmake --build "$build" --parallel "$jobs"
