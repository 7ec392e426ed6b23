#!/usr/bin/env bash
# Builds everything (with the one-time set-up) and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh "$@"
ctest --test-dir "${FLORA_BUILD_DIR:-build}" --output-on-failure --parallel "${FLORA_JOBS:-$(nproc)}"
