#!/usr/bin/env bash
# One-time set-up for building flora on a Debian/Ubuntu machine.
#
#  1. System packages (compiler, CMake, Ninja, GoogleTest, Google Benchmark,
#     ccache; for the GPT-2 example nlohmann-json, CLI11, PCRE2, and cairo
#     with a font for its PNG plot) through apt-get, only those that are
#     missing, and only when we are root or have passwordless sudo.
#     FLORA_EXTRA_PACKAGES adds packages to that list (scripts/sanitize.sh
#     and scripts/fuzz.sh ask for clang-14 and its sanitizer and libFuzzer
#     runtimes, libclang-rt-14-dev, so).
#  2. LibTorch: the PyPI wheel torch==2.11.0 (CUDA 13.0 build) installed once
#     into a virtualenv in a cache outside the clone:
#         ${FLORA_CACHE:-$HOME/.cache/flora}/torch-2.11.0
#     A second run is a no-op. The wheel carries LibTorch's headers, shared
#     libraries and CMake config; its nvidia-* dependencies provide the CUDA
#     runtime libraries that libtorch_cuda.so loads, so binaries also run on a
#     machine without a GPU.
#
# The last line printed on stdout is the CMake prefix of that LibTorch
# (pass it as -DCMAKE_PREFIX_PATH=...). Set FLORA_TORCH_PREFIX to use another
# LibTorch instead (anything containing share/cmake/Torch/TorchConfig.cmake);
# the torch install is then skipped.
set -euo pipefail

TORCH_VERSION=2.11.0
CACHE="${FLORA_CACHE:-$HOME/.cache/flora}"
VENV="$CACHE/torch-$TORCH_VERSION"

log() { echo "[flora setup] $*" >&2; }

install_system_packages() {
  local want=(g++ cmake ninja-build ccache libgtest-dev libgmock-dev libbenchmark-dev
              nlohmann-json3-dev libcli11-dev libpcre2-dev libcairo2-dev fonts-dejavu-core
              python3-venv git)
  # shellcheck disable=SC2206 # a space-separated list of package names
  want+=(${FLORA_EXTRA_PACKAGES:-})
  local missing=()
  for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || { log "apt-get not found; please install: ${missing[*]}"; return 1; }
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if sudo -n true 2>/dev/null; then sudo="sudo -n"; else
      log "not root: please install: ${missing[*]}"; return 1; fi
  fi
  log "installing ${missing[*]}"
  $sudo apt-get update -qq >&2 || true
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >&2
}

install_torch() {
  local stamp="$VENV/.flora-torch-ok"
  if [ -f "$stamp" ]; then return 0; fi
  log "installing torch==$TORCH_VERSION into $VENV (once; about 3.5 GB)"
  mkdir -p "$CACHE"
  rm -rf "$VENV"
  python3 -m venv "$VENV" >&2
  local extra=()
  [ -n "${FLORA_WHEEL_DIR:-}" ] && extra+=(--find-links "$FLORA_WHEEL_DIR")
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${extra[@]}" "torch==$TORCH_VERSION" >&2
  "$VENV/bin/python" - <<'PY' >&2
import torch
assert torch.__version__.startswith("2.11.0"), torch.__version__
print("torch", torch.__version__, "cuda", torch.version.cuda)
PY
  touch "$stamp"
}

if [ "${FLORA_SKIP_APT:-0}" != 1 ]; then install_system_packages; fi
if [ -n "${FLORA_TORCH_PREFIX:-}" ]; then
  echo "$FLORA_TORCH_PREFIX"
  exit 0
fi
install_torch
"$VENV/bin/python" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)' 2>/dev/null
