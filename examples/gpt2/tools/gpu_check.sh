#!/usr/bin/env bash
# The GPU check of the GPT-2 example, for a machine with an NVIDIA GPU,
# python3 with torch 2.11 (its LibTorch is used), nvcc, CMake and ninja but
# no nlohmann-json / CLI11 and no network.
#
#   examples/gpt2/tools/gpu_check.sh prepare   # here (Debian, packages of scripts/setup.sh):
#                                              # copies the header-only nlohmann-json and CLI11
#                                              # with their CMake configs to build-gpt2-carry/prefix
#                                              # (ignored by git: /build*/), to carry along
#   examples/gpt2/tools/gpu_check.sh run       # there, from the repository root, OUT=... for results
#
# `run` builds gpt2-finetune with the CUDA kernels, then on the GPU: the
# default comparison (tiny model, adam vs flora); a Flora run with gradient
# accumulation and activation checkpointing that saves the model with
# --check-logits (saved.tar comes back: check it here with
# tests/fixtures/gpt2/generate.py --check-saved); and GPT-2 small's shapes
# (a random-init GPT2LMHeadModel saved by the machine's transformers, with the
# tiny tokenizer), adam vs flora, for CUDA peak memory and speed.
set -uo pipefail
cd "$(dirname "$0")/../../.."
case "${1:-}" in
  prepare)
    rm -rf build-gpt2-carry/prefix
    mkdir -p build-gpt2-carry/prefix/include build-gpt2-carry/prefix/share/cmake
    cp -r /usr/include/nlohmann /usr/include/CLI build-gpt2-carry/prefix/include/
    cp -r /usr/share/cmake/nlohmann_json /usr/share/cmake/CLI11 build-gpt2-carry/prefix/share/cmake/
    du -sh build-gpt2-carry
    echo "prepared build-gpt2-carry/ (carry it)"
    exit 0 ;;
  run) ;;
  *) echo "usage: $0 prepare|run"; exit 2 ;;
esac

OUT="${OUT:-/tmp/gpt2-gpu}"; mkdir -p "$OUT"
t0=$(date +%s); stamp() { echo "[+$(( $(date +%s) - t0 ))s] $*"; }
nvidia-smi -L
prefix=$(python3 -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')
stamp configure
cmake -S . -B build-gpu-gpt2 -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix;$PWD/build-gpt2-carry/prefix" \
  -DFLORA_CUDA=ON -DFLORA_CCACHE=OFF -DFLORA_BUILD_TESTS=OFF -DFLORA_BUILD_BENCHMARKS=OFF > "$OUT/build.log" 2>&1 \
  || { tail -30 "$OUT/build.log"; exit 1; }
stamp build
cmake --build build-gpu-gpt2 --parallel "$(nproc)" --target gpt2-finetune >> "$OUT/build.log" 2>&1 \
  || { grep -E "error|FAILED" "$OUT/build.log" | head -30; exit 1; }
B=build-gpu-gpt2/examples/gpt2/gpt2-finetune

stamp "default comparison on cuda (tiny model)"
$B --device cuda --out /tmp/default 2>&1 | tee "$OUT/run.log"
mkdir -p "$OUT/default"; cp /tmp/default/summary.csv /tmp/default/loss.png "$OUT/default/"

stamp "flora, grad accumulation 2, activation checkpointing, save + check logits"
rm -rf /tmp/saved
$B --device cuda --optimizer flora --steps 100 --grad-accum 2 --activation-checkpointing --log-every 50 \
  --save-model /tmp/saved --check-logits --out /tmp/out-saved 2>&1 | tail -6 | tee -a "$OUT/run.log"
tar -C /tmp -cf "$OUT/saved.tar" saved

stamp "GPT-2 small shapes (random init), adam vs flora"
python3 - <<'PY' 2>&1 | tail -2
import torch
from transformers import GPT2Config, GPT2LMHeadModel
torch.manual_seed(0)
GPT2LMHeadModel(GPT2Config()).save_pretrained("/tmp/gpt2-random")
print("saved a random-init gpt2-small")
PY
cp examples/gpt2/assets/tiny-gpt2/vocab.json examples/gpt2/assets/tiny-gpt2/merges.txt /tmp/gpt2-random/
$B --device cuda --model-dir /tmp/gpt2-random --steps 200 --block-size 128 --batch-size 16 --warmup-steps 20 \
  --adam-lr 3e-4 --flora-lr 3e-3 --eval-every 100 --eval-max-blocks 64 --log-every 50 --out /tmp/small 2>&1 \
  | tee "$OUT/run-small.log"
mkdir -p "$OUT/small"; cp /tmp/small/summary.csv "$OUT/small/"
stamp done
