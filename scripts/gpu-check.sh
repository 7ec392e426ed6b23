#!/usr/bin/env bash
# The GPU check: build, test, sanitize and benchmark flora on a machine with
# an NVIDIA GPU (made for an H100), in one go, in about 6 minutes.
#
# The machine needs python3 with torch 2.11 (its LibTorch is used), nvcc 13,
# CMake and ninja; no network. What it lacks travels in third_party/, made
# beforehand on a machine with Debian's packages by
#     scripts/prepare-gpu-carry.sh
# (GoogleTest sources, Google Benchmark's install tree, the flora-opt wheel).
#
# Steps: configure and build for sm_90 (+PTX) against python3's torch; run
# every test (CPU and CUDA); run compute-sanitizer memcheck on the CUDA test
# binary; time one optimizer step of Flora and torch::optim::Adam on the
# GPT-2 small shapes with CUDA events (bench/gpu_step_bench.cpp), and
# flora-opt's Python step on the same GPU (bench/flora_opt_step.py); peak
# CUDA memory of one training step per memory mode (bench/memory_bench.cpp);
# the GPT-2 example on the GPU (the default Adam-vs-Flora run, and a
# random-init GPT-2 small for speed and memory). Logs and JSON go to $OUT
# (default /tmp/flora-gpu-check); a short table is printed last. Exit status:
# non-zero if the build, a test or the sanitizer failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/flora-gpu-check}"
BUILD="${FLORA_GPU_BUILD_DIR:-build-gpu}"
mkdir -p "$OUT"
t0=$(date +%s)
stamp() { echo "[gpu-check +$(( $(date +%s) - t0 ))s] $*"; }
# The optional stages (after the sanitizer) run only while the whole check
# stays within FLORA_GPU_CHECK_BUDGET seconds (default 360).
BUDGET="${FLORA_GPU_CHECK_BUDGET:-360}"
within_budget() { [ $(( $(date +%s) - t0 + $1 )) -le "$BUDGET" ] || { echo "skipped (time budget): $2"; return 1; }; }

stamp "machine"
nvidia-smi -L 2>&1 | tee "$OUT/machine.txt"
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())' \
  2>&1 | tee -a "$OUT/machine.txt"
[ -d third_party/googletest ] || { echo "third_party/ missing: run scripts/prepare-gpu-carry.sh first"; exit 2; }

stamp "configure + build"
prefix=$(python3 -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix;$PWD/third_party/prefix" \
  -DFLORA_CUDA=ON -DFLORA_CCACHE=OFF > "$OUT/configure.log" 2>&1 \
  || { tail -30 "$OUT/configure.log"; exit 1; }
cmake --build "$BUILD" --parallel "$(nproc)" > "$OUT/build.log" 2>&1 || { grep -E "error|FAILED" "$OUT/build.log" | head -30; exit 1; }

stamp "tests"
ctest --test-dir "$BUILD" --parallel 8 --output-on-failure > "$OUT/ctest.log" 2>&1
test_rc=$?
grep -E "tests passed|tests failed" "$OUT/ctest.log"
"$BUILD/tests/flora_cuda_tests" --gtest_brief=1 > "$OUT/cuda_tests.log" 2>&1 || test_rc=1

stamp "compute-sanitizer memcheck"
sanitizer_rc=0
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
if [ -n "$sanitizer" ]; then
  # Every kernel and the graph capture; of the CPU-vs-CUDA configurations the
  # compressed ones (philox), which go through every kernel too.
  timeout 150 "$sanitizer" --tool memcheck --error-exitcode 99 \
    "$BUILD/tests/flora_cuda_tests" --gtest_brief=1 \
    --gtest_filter='CudaKernels.*:CudaGraph.*:CudaCheckpoint.*:*compressed*philox*' > "$OUT/sanitizer.log" 2>&1
  sanitizer_rc=$?
  grep -E "ERROR SUMMARY" "$OUT/sanitizer.log" | tail -1
else
  echo "compute-sanitizer not found" | tee "$OUT/sanitizer.log"
  sanitizer_rc=127
fi

stamp "benchmark: flora vs torch::optim::Adam"
"$BUILD/bench/flora_gpu_bench" --benchmark_out="$OUT/gpu_bench.json" --benchmark_out_format=json \
  > "$OUT/gpu_bench.txt" 2>&1
grep -E "median" "$OUT/gpu_bench.txt"

stamp "benchmark: flora-opt (Python)"
if within_budget 60 "flora-opt timing"; then
  site=/tmp/flora-site
  rm -rf "$site"
  python3 -m pip install -q --no-index --no-deps --target "$site" third_party/wheels/*.whl > "$OUT/pip.log" 2>&1
  for dtype in fp32 bf16; do
    PYTHONPATH="$site" timeout 60 python3 bench/flora_opt_step.py --device cuda --dtype "$dtype" \
      >> "$OUT/flora_opt.jsonl" 2>> "$OUT/flora_opt.err"
  done
  cat "$OUT/flora_opt.jsonl" 2>/dev/null
fi

stamp "peak memory of one step, per mode (CUDA)"
if within_budget 60 "memory benchmark"; then
  timeout 90 "$BUILD/bench/flora_memory_bench" --device=cuda --benchmark_filter=peak > "$OUT/memory_bench.txt" 2>&1
  grep -E "^\|" "$OUT/memory_bench.txt"
fi

gpt2="$BUILD/examples/gpt2/gpt2-finetune"
if [ -x "$gpt2" ] && within_budget 45 "GPT-2 example (default run)"; then
  stamp "GPT-2 example on cuda: the default run (tiny model, adam vs flora)"
  timeout 90 "$gpt2" --device cuda --out "$OUT/gpt2-default" > "$OUT/gpt2-default.log" 2>&1
  tail -6 "$OUT/gpt2-default.log"
fi
if [ -x "$gpt2" ] && within_budget 60 "GPT-2 example (GPT-2 small)"; then
  stamp "GPT-2 example on cuda: random-init GPT-2 small (124M), 60 steps each"
  python3 - <<'PY' > "$OUT/gpt2-small-init.log" 2>&1
import torch
from transformers import GPT2Config, GPT2LMHeadModel
torch.manual_seed(0)
GPT2LMHeadModel(GPT2Config()).save_pretrained("/tmp/gpt2-random")
PY
  cp examples/gpt2/assets/tiny-gpt2/vocab.json examples/gpt2/assets/tiny-gpt2/merges.txt /tmp/gpt2-random/ 2>/dev/null
  timeout 90 "$gpt2" --device cuda --model-dir /tmp/gpt2-random --steps 60 --block-size 256 --batch-size 8 \
    --warmup-steps 10 --adam-lr 3e-4 --flora-lr 3e-3 --rank 256 --eval-every 0 --eval-max-blocks 16 \
    --log-every 20 --out "$OUT/gpt2-small" > "$OUT/gpt2-small.log" 2>&1
  tail -6 "$OUT/gpt2-small.log"
fi

stamp "summary"
python3 - "$OUT" "$test_rc" "$sanitizer_rc" <<'PY'
import json, os, re, sys
out, test_rc, san_rc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
read = lambda name: open(os.path.join(out, name)).read() if os.path.exists(os.path.join(out, name)) else ""
cuda_log = read("cuda_tests.log")
agreement = re.findall(r"\[ agreement \] (.*)", cuda_log)
san = re.findall(r"ERROR SUMMARY: (\d+) error", read("sanitizer.log"))
rows = {}
try:
    for b in json.load(open(os.path.join(out, "gpu_bench.json")))["benchmarks"]:
        if b.get("aggregate_name") == "median":
            rows[b["run_name"].split("/repeats")[0].replace("gpt2_small/", "")] = (b["real_time"], b.get("state_MB", 0))
except Exception as e:  # noqa: BLE001
    print("no benchmark results:", e)
print()
print("flora GPU check:", read("machine.txt").strip().replace("\n", " | "))
passed = re.findall(r"(\d+% tests passed.*)", read("ctest.log"))
print(f"  tests (CPU + CUDA)      : {'PASS' if test_rc == 0 else 'FAIL'}  ({passed[-1] if passed else 'no ctest summary'})")
for line in agreement:
    print(f"  agreement              : {line}")
print(f"  compute-sanitizer      : {'clean' if san_rc == 0 and san and san[-1] == '0' else 'FAIL (rc %d, %s errors)' % (san_rc, san[-1] if san else '?')}")
print(f"  {'step (GPT-2 small)':<22} : {'median ms':>10} {'state MB':>10}")
for name, (ms, mb) in rows.items():
    print(f"  {name:<22} : {ms:10.3f} {mb:10.1f}")
for dtype in ("fp32", "bf16"):
    adam, flora = rows.get(f"Adam/{dtype}"), rows.get(f"Flora_r256/{dtype}")
    if adam and flora:
        print(f"  Flora r256 / Adam ({dtype}) : {flora[0] / adam[0]:.3f}  (target <= 1)")
for line in read("flora_opt.jsonl").splitlines():
    try:
        r = json.loads(line)
        ours = rows.get(f"Flora_r256/{r['dtype']}")
        ratio = f", flora-opt / ours = {r['median_ms'] / ours[0]:.1f}x" if ours else ""
        print(f"  flora-opt 0.0.3 ({r['dtype']})  : {r['median_ms']:.3f} ms, {r['state_MB']:.1f} MB{ratio}")
    except Exception:  # noqa: BLE001
        pass
PY
stamp "done"
[ "$test_rc" -eq 0 ] && [ "$sanitizer_rc" -eq 0 ]
