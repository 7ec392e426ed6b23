#!/usr/bin/env bash
# PyTorch's launcher from the cached torch venv (scripts/setup.sh), for flora's C++ programs: scripts/torchrun.sh --standalone --nproc-per-node 2 <program> [args...]
exec "${FLORA_CACHE:-$HOME/.cache/flora}/torch-2.11.0/bin/torchrun" --no-python "$@"
