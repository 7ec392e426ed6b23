#!/usr/bin/env bash
# Runs flora's libFuzzer targets (tests/fuzz/, README.md there), built with
# the sanitizers in the sanitizer build directory (scripts/sanitize.sh's
# configuration), each from its checked-in corpus plus what earlier runs of
# this script found, with a fixed seed, for a bounded number of inputs.
#
#   scripts/fuzz.sh [--runs N | --seconds S] [--seed S] [target...]
#
# Targets: optimizer_checkpoint accumulator_checkpoint synchronizer_checkpoint
# safetensors config tokenizer (default: all), or `probe` (LibTorch's own
# archive reader on raw bytes: not flora's, never part of the default).
# --runs N: N inputs per target (default 2000), --seconds S: S seconds per
# target instead; --seed S: libFuzzer's seed (default 1; another seed's
# run may go on beside it, on the same corpus, with its own log). Inputs that libFuzzer finds new coverage with accumulate
# in $build/fuzz/<target>/corpus (outside the source tree); a crash leaves
# its input in $build/fuzz/<target>/ and makes the script fail. Every run's
# input count is appended to $build/fuzz/<target>/runs.log, and the script
# ends with the totals of those logs. scripts/sanitize.sh, which builds the
# targets, installs clang-14 and libclang-rt-14-dev (libFuzzer, the
# sanitizers' runtimes) through apt-get when they are missing.
#
# Environment: FLORA_SANITIZE_BUILD_DIR (default build-sanitize; a build
# made with FLORA_SANITIZE=undefined runs about 4x as many inputs a second
# as address,undefined), FLORA_FUZZ_FLAGS (more libFuzzer flags, e.g.
# -entropic=0, recorded in runs.log), OMP_NUM_THREADS (default 1: the
# targets' tensors are small, and parallel runs must not share cores).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/sanitize-env.sh

build="${FLORA_SANITIZE_BUILD_DIR:-build-sanitize}"
limit=(-runs=2000)
seed=1
read -r -a extra <<< "${FLORA_FUZZ_FLAGS:-}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
all=(optimizer_checkpoint accumulator_checkpoint synchronizer_checkpoint safetensors config tokenizer)
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) limit=("-runs=$2"); shift 2 ;;
    --seconds) limit=("-max_total_time=$2"); shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    -*) echo "scripts/fuzz.sh: unknown option $1" >&2; exit 2 ;;
    probe) targets+=(libtorch_archive_probe); shift ;;
    *) targets+=("$1"); shift ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

build_targets=()
for t in "${targets[@]}"; do build_targets+=(--target "flora_fuzz_$t"); done
# FLORA_FUZZ_NO_BUILD=1: run the programs as built (e.g. while the tree is
# being edited, or several invocations in parallel on other targets).
if [ "${FLORA_FUZZ_NO_BUILD:-0}" != 1 ]; then
  scripts/sanitize.sh --build-only "${build_targets[@]}"
fi

failed=0
for t in "${targets[@]}"; do
  work="$build/fuzz/$t"
  mkdir -p "$work/corpus"
  seeds=tests/fuzz/corpus/$t
  [ "$t" = libtorch_archive_probe ] && seeds=tests/fixtures/checkpoints/v2
  dict=()
  [ -f "tests/fuzz/dict/$t.dict" ] && dict=("-dict=tests/fuzz/dict/$t.dict")
  log="$work/last.log"
  [ "$seed" = 1 ] || log="$work/last-seed$seed.log"
  echo "[fuzz] $t: ${limit[*]}"
  # -seed: the same inputs every time for the same binary and corpus.
  # -timeout: an input that runs 60 s is a hang (a finding).
  # -rss_limit_mb/-malloc_limit_mb: an input that makes a parser allocate
  #   gigabytes is a finding too.
  set +e
  "$build/tests/fuzz/flora_fuzz_$t" -seed="$seed" "${limit[@]}" -timeout=60 -rss_limit_mb=4096 -malloc_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$work/" "${extra[@]}" "${dict[@]}" "$work/corpus" "$seeds" > "$log" 2>&1
  rc=$?
  set -e
  executed=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  echo "$(date -u +%FT%TZ) ${executed:-0} rc=$rc ${limit[*]} -seed=$seed ${extra[*]}" >> "$work/runs.log"
  echo "[fuzz] $t: ${executed:-?} inputs, exit $rc"
  if [ "$rc" -ne 0 ]; then
    failed=1
    grep -E "ERROR|SUMMARY|property violated|terminate|==[0-9]+==" "$log" | head -20 || true
    echo "[fuzz] $t: see $log and the crash input in $work/"
  fi
done

echo "[fuzz] inputs so far (all runs of this build directory):"
total=0
for t in "${targets[@]}"; do
  n=$(awk '{s += $2} END {print s + 0}' "$build/fuzz/$t/runs.log")
  total=$((total + n))
  printf '[fuzz]   %-26s %12d\n' "$t" "$n"
done
printf '[fuzz]   %-26s %12d\n' total "$total"
exit "$failed"
