#!/usr/bin/env bash
# The soak benchmark (bench/soak/): builds flora_soak_bench in the ordinary
# build directory and runs it at low priority, writing its table to
# ${FLORA_SOAK_OUT:-soak.md}. Arguments go to the program, e.g.
#   scripts/soak.sh --steps 10000            (the default)
#   scripts/soak.sh --models mlp --steps 2000
# It takes a long while on a small machine (README: Reliability).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh --target flora_soak_bench
exec nice -n 10 "${FLORA_BUILD_DIR:-build}/bench/flora_soak_bench" --markdown "${FLORA_SOAK_OUT:-soak.md}" "$@"
