#!/usr/bin/env bash
# The GPU check: build flora's CUDA tests and GPU step timer on a machine with
# one NVIDIA GPU (an H100/H200), run the CUDA tests once, time one optimizer
# step of Flora against at::_fused_adamw_, torch::optim::Adam and flora-opt
# (bench/gpu_step_bench.cpp, bench/flora_opt_step.py), then run
# compute-sanitizer memcheck on the kernel tests with the time that is left.
# Made for the lent GPU machine's limits: the whole check ends within
# FLORA_GPU_CHECK_BUDGET seconds (default 450, under 8 minutes), every stage
# under `timeout`, and it leaves exactly two files in $OUT: summary.txt
# (printed last: stages, test counts, agreement lines, step times and the
# speed targets) and logs.tar.gz (every log, the test XML, the benchmark JSON).
#
# The machine needs python3 with torch 2.11 (its LibTorch is built against),
# nvcc 13, CMake and ninja; no network. It lacks GoogleTest, which travels in
# third_party/ (made beforehand by scripts/prepare-gpu-carry.sh, with the
# flora-opt wheel). With the device tool:
#     run(command="scripts/gpu-check.sh", carry=["third_party"], timeout_s=540)
#
# Environment:
#   OUT                         where summary.txt and logs.tar.gz go (default /tmp/flora-gpu-check)
#   FLORA_GPU_CHECK_BUDGET      seconds for the whole check (default 450)
#   FLORA_GPU_BUILD_DIR         build directory (default build-gpu)
#   FLORA_GPU_CHECK_SKIP_BUILD  1: use the build directory as it is (no configure, no build)
#   FLORA_PYTHON                the python that has torch (default python3)
#   FLORA_JOBS                  parallel compile jobs (default: all cores)
# Without a GPU (e.g. FLORA_GPU_CHECK_SKIP_BUILD=1 FLORA_GPU_BUILD_DIR=build on
# a development machine) every GPU stage says it was skipped and the rest
# runs: a dry run of the script itself.
#
# Exit status: 0 when the build, the tests and the sanitizer passed (or were
# skipped for want of a GPU; the sanitizer also for want of time), 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
OUT="${OUT:-/tmp/flora-gpu-check}"
BUDGET="${FLORA_GPU_CHECK_BUDGET:-450}"
BUILD="${FLORA_GPU_BUILD_DIR:-build-gpu}"
PYTHON="${FLORA_PYTHON:-python3}"
JOBS="${FLORA_JOBS:-$(nproc)}"
LOGS="$(mktemp -d /tmp/flora-gpu-logs.XXXXXX)"
SUMMARY_RESERVE=25 # seconds kept for the summary and the tarball
mkdir -p "$OUT"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}" # the CPU references in the tests
export TORCH_CUDA_ARCH_LIST="9.0+PTX" # explicit: never detected, never torch's long default list
export PYTHONUNBUFFERED=1

elapsed() { echo $(( $(date +%s) - t0 )); }
stamp() { echo "[gpu-check +$(elapsed)s] $*"; }
# status <stage> <result>: one line per stage for the summary.
status() { printf '%-22s %s\n' "$1" "$2" >> "$LOGS/stages.txt"; }
# stage_timeout <max seconds>: what is left of the budget for a stage, at
# most <max>; 0 when less than 10 s would be left.
stage_timeout() {
  local left=$(( BUDGET - $(elapsed) - SUMMARY_RESERVE ))
  local t=$(( left < $1 ? left : $1 ))
  [ "$t" -ge 10 ] && echo "$t" || echo 0
}
# run_stage <name> <max seconds> <log> <command...>: runs the command under
# timeout with its output in <log>; records PASS / FAIL (rc) / TIMEOUT / SKIPPED.
run_stage() {
  local name=$1 max=$2 log=$3; shift 3
  local t; t=$(stage_timeout "$max")
  if [ "$t" -eq 0 ]; then
    stamp "$name: skipped (time budget)"; status "$name" "SKIPPED (time budget)"; return 125
  fi
  stamp "$name (at most ${t}s)"
  timeout --kill-after=5 "$t" "$@" > "$LOGS/$log" 2>&1
  local rc=$?
  case $rc in
    0) status "$name" "PASS ($(( $(elapsed) ))s elapsed)" ;;
    124|137) status "$name" "TIMEOUT after ${t}s" ;;
    *) status "$name" "FAIL (exit $rc)" ;;
  esac
  return $rc
}

finish() {
  local rc=$1
  stamp "summary"
  timeout 20 "$PYTHON" scripts/gpu_check_summary.py "$LOGS" "$(elapsed)" "$BUDGET" > "$LOGS/summary.txt" 2>&1 \
    || { echo "(summary script failed)"; cat "$LOGS/stages.txt"; } >> "$LOGS/summary.txt"
  cp "$LOGS/summary.txt" "$OUT/summary.txt"
  tar -czf "$OUT/logs.tar.gz" -C "$LOGS" . 2>/dev/null
  rm -rf "$LOGS"
  cat "$OUT/summary.txt"
  exit "$rc"
}

: > "$LOGS/stages.txt"
stamp "machine"
{
  timeout 20 nvidia-smi -L 2>/dev/null || echo "nvidia-smi: no GPU found"
  timeout 60 "$PYTHON" -W ignore -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")' 2>/dev/null \
    || echo "$PYTHON: cannot import torch"
  echo "$(nproc) cores"
} > "$LOGS/machine.txt"
cat "$LOGS/machine.txt"
gpu=0
timeout 20 nvidia-smi -L > /dev/null 2>&1 && gpu=1

failed=0
if [ "${FLORA_GPU_CHECK_SKIP_BUILD:-0}" != 1 ]; then
  [ -d third_party/googletest ] || { echo "third_party/googletest missing: run scripts/prepare-gpu-carry.sh first" | tee -a "$LOGS/stages.txt"; finish 1; }
  prefix=$(timeout 60 "$PYTHON" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)') \
    || { status configure "FAIL (no torch in $PYTHON)"; finish 1; }
  # Only what the check runs: the CUDA tests and the GPU timer; no examples,
  # no precompiled header (a serial step before every compile), no ccache.
  # CMAKE_POLICY_VERSION_MINIMUM lets CMake 4 configure GoogleTest's
  # cmake_minimum_required(VERSION 3.5).
  run_stage configure 90 configure.log \
    cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" \
      -DFLORA_CUDA=ON -DTORCH_CUDA_ARCH_LIST="$TORCH_CUDA_ARCH_LIST" -DFLORA_CUDA_ARCH_LIST="$TORCH_CUDA_ARCH_LIST" \
      -DFLORA_BUILD_TESTS=ON -DFLORA_BUILD_BENCHMARKS=ON -DFLORA_BUILD_EXAMPLES=OFF -DFLORA_CCACHE=OFF \
      -DCMAKE_DISABLE_PRECOMPILE_HEADERS=ON -DCMAKE_POLICY_VERSION_MINIMUM=3.5 \
    || { tail -30 "$LOGS/configure.log"; finish 1; }
  run_stage build 330 build.log \
    cmake --build "$BUILD" --target flora_cuda_tests flora_gpu_bench --parallel "$JOBS" \
    || { grep -E "error|FAILED" "$LOGS/build.log" | head -30; finish 1; }
fi

tests="$BUILD/tests/flora_cuda_tests"
[ -x "$tests" ] || { status tests "FAIL (no $tests)"; finish 1; }
# The CUDA tests, once: operators (the fused step's too) against the CPU,
# every parity configuration on both devices, CUDA graphs (a captured
# capturable step), checkpoints.
run_stage "CUDA tests" 150 cuda_tests.log \
  "$tests" --gtest_brief=1 --gtest_output="xml:$LOGS/cuda_tests.xml" || failed=1

if [ "$gpu" = 1 ]; then
  # Step times next (the speed targets need them), then flora-opt on the same
  # card, then the sanitizer with whatever time is left.
  run_stage "step benchmark" 120 gpu_bench.txt \
    "$BUILD/bench/flora_gpu_bench" --repetitions 30 --json "$LOGS/gpu_bench.json"
  if ls third_party/wheels/*.whl > /dev/null 2>&1; then
    site=$(mktemp -d /tmp/flora-site.XXXXXX)
    "$PYTHON" -m pip install -q --no-index --no-deps --target "$site" third_party/wheels/*.whl > "$LOGS/pip.log" 2>&1
    for dtype in fp32 bf16; do
      run_stage "flora-opt $dtype" 60 "flora_opt_$dtype.jsonl" \
        env PYTHONPATH="$site" "$PYTHON" bench/flora_opt_step.py --device cuda --dtype "$dtype"
    done
  else
    status "flora-opt" "SKIPPED (no wheel in third_party/wheels)"
  fi
  sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
  if [ -n "$sanitizer" ]; then
    # Every kernel and every argument check, and of the parity configurations
    # three that reach every kernel. Without the caching allocator, so that an
    # access past a tensor's end is past an allocation's; CUDA graphs need the
    # allocator, so their tests are left out here (and the longest list of
    # tensors, whose kernels the other fused tests reach). Skipped for want
    # of time, it is reported as skipped, not as a failure.
    run_stage "compute-sanitizer" 150 sanitizer.log \
      env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool memcheck --error-exitcode 99 --print-limit 20 "$tests" --gtest_brief=1 \
      --gtest_filter='CudaFusedOps.*:CudaKernels.*:CudaOpCases.*:CudaCheckpoint.*:*/compressed_philox:*/quantized_compressed_philox:*/full_second_moment_philox-*CudaGraph*:*Captured*:*CapturableGraph*:*ManyTensors*'
    rc=$?
    [ "$rc" -eq 0 ] || [ "$rc" -eq 125 ] || failed=1
  else
    status "compute-sanitizer" "FAIL (not found)"
    failed=1
  fi
else
  for s in "step benchmark" "flora-opt" "compute-sanitizer"; do
    status "$s" "SKIPPED (no GPU)"
  done
fi
finish "$failed"
