#!/usr/bin/env bash
# Prepares what scripts/gpu-check.sh needs on a GPU machine that has torch,
# nvcc, CMake and ninja but no GoogleTest, no Google Benchmark, no flora-opt
# and no network. Everything goes to third_party/ (ignored by git) and must
# travel with the working tree (the device tool's `carry: ["third_party"]`):
#
#   third_party/googletest/   GoogleTest sources (Debian's googletest package)
#   third_party/benchmark/    Debian's Google Benchmark install tree (headers,
#                             shared library, CMake config; built for glibc
#                             >= 2.36, x86-64)
#   third_party/wheels/       flora-opt 0.0.3 (pure Python) for the reference
#                             step-time comparison
#   third_party/prefix/       the header-only nlohmann-json and CLI11 with their
#                             CMake configs, for the GPT-2 example
set -euo pipefail
cd "$(dirname "$0")/.."
out=third_party
multiarch=$(gcc -print-multiarch)
rm -rf "$out"
mkdir -p "$out/benchmark/include" "$out/benchmark/lib/$multiarch/cmake" "$out/wheels"

cp -r /usr/src/googletest "$out/googletest"

# Debian's install tree of Google Benchmark, laid out as under /usr: its CMake
# config finds the prefix relative to itself.
cp -r /usr/include/benchmark "$out/benchmark/include/"
cp -a /usr/lib/"$multiarch"/libbenchmark*.so* /usr/lib/"$multiarch"/libbenchmark_main.a "$out/benchmark/lib/$multiarch/"
cp -r /usr/lib/"$multiarch"/cmake/benchmark "$out/benchmark/lib/$multiarch/cmake/"

mkdir -p "$out/prefix/include" "$out/prefix/share/cmake"
cp -r /usr/include/nlohmann /usr/include/CLI "$out/prefix/include/"
cp -r /usr/share/cmake/nlohmann_json /usr/share/cmake/CLI11 "$out/prefix/share/cmake/"

python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$out/wheels" flora-opt==0.0.3

du -sh "$out"/*
echo "prepared $out/ (carry it: third_party)"
