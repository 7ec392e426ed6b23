#!/usr/bin/env bash
# Prepares what scripts/gpu-check.sh needs on a GPU machine that has torch,
# nvcc, CMake and ninja but no GoogleTest, no flora-opt and no network.
# Everything goes to third_party/ (ignored by git, except the vendored
# third_party/gloo/ headers, which this script leaves alone), which travels
# with the working tree (the device tool's `carry: ["third_party"]`):
#
#   third_party/googletest/   GoogleTest sources (Debian's googletest
#                             package; googlemock left out), built there
#   third_party/wheels/       flora-opt 0.0.3 (pure Python) for the reference
#                             step-time comparison (optional: skipped without
#                             network here, and then by the check)
#
# Sources, not binaries: the GPU machine runs another distribution. The GPU
# step timer needs no Google Benchmark. The tree that travels (working tree
# plus carried paths) must stay under 64 MiB; this checks third_party/ against
# a 16 MiB share of it.
set -euo pipefail
cd "$(dirname "$0")/.."
out=third_party
# third_party/gloo/ holds vendored headers (tracked in git): keep it.
find "$out" -mindepth 1 -maxdepth 1 ! -name gloo -exec rm -rf {} + 2>/dev/null || true
mkdir -p "$out/googletest" "$out/wheels"

src=/usr/src/googletest
[ -f "$src/googletest/CMakeLists.txt" ] || { echo "GoogleTest sources not found in $src (apt-get install googletest)"; exit 1; }
cp "$src/CMakeLists.txt" "$out/googletest/"
cp -r "$src/googletest" "$out/googletest/googletest"

python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$out/wheels" flora-opt==0.0.3 \
  || echo "flora-opt wheel not downloaded (no network?): the check will skip the flora-opt timing"

kib=$(du -sk "$out" | cut -f1)
du -sh "$out"/*
if [ "$kib" -gt $((16 * 1024)) ]; then
  echo "third_party/ is ${kib} KiB, over its 16 MiB share of the 64 MiB that may travel"
  exit 1
fi
echo "prepared $out/ (${kib} KiB; carry it: third_party)"
