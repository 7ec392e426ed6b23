#!/usr/bin/env bash
# Builds everything (with the one-time set-up) and runs the main job: the same
# training run with torch::optim::Adam and flora::Flora, side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
exec "${FLORA_BUILD_DIR:-build}/examples/quickstart/flora_quickstart"
