#!/usr/bin/env bash
# The measured tables of examples/gpt2/README.md, rerun: each configuration
# runs alone (one at a time, nice -n 10), and the machine and its load
# average (uptime) are written beside every result.
#
#   examples/gpt2/measure.sh aspect|precision|products|memory|parallel|all [RESULTS_DIR]
#
# aspect:    Flora with and without --max-aspect-ratio inf (token embedding
#            momentum compressed), shipped tiny model and 6 x 384 models
#            trained from scratch, 3 seeds
# precision: float32 vs bfloat16 round-to-nearest vs bfloat16 with
#            --stochastic-rounding (Flora), Adam float32 for reference
# products:  Flora's projection products in float32 vs bfloat16
#            (--projection-precision), shipped tiny model (3 seeds) and the
#            6 x 384 model trained from scratch
# memory:    peak training memory with the parameters counted, GPT-2-small
#            body (12 x 768, vocabulary 512, n_positions 128: 85.5 M
#            parameters), batch 4 x 128: Adam float32 vs Flora in bfloat16
#            with every memory feature
# parallel:  2 ranks under torchrun (scripts/torchrun.sh), plain vs
#            compressed exchange: bytes per step and step time
#
# Needs a built gpt2-finetune (scripts/build.sh --target gpt2-finetune).
# Each run writes RESULTS_DIR/<name>/{log.txt,summary.csv,...}; the summary
# lines (one per run, with the load average before and after) go to
# RESULTS_DIR/results.txt. A run whose summary.csv exists is not run again
# (delete its directory to rerun it). FLORA_MEASURE_SEEDS ("0 1 2": tiny
# model), FLORA_MEASURE_SEEDS_LARGE ("0": the 6 x 384 models) and
# FLORA_MEASURE_STEPS_LARGE (200: their step count) override.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$(pwd)"
bin="${FLORA_BUILD_DIR:-build}/examples/gpt2/gpt2-finetune"
[ -x "$bin" ] || { echo "measure.sh: build gpt2-finetune first (scripts/build.sh --target gpt2-finetune)" >&2; exit 2; }
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
what="${1:-all}"
results="${2:-$root/gpt2-measure}"
mkdir -p "$results"
seeds="${FLORA_MEASURE_SEEDS:-0 1 2}"
large_seeds="${FLORA_MEASURE_SEEDS_LARGE:-0}"
large_steps="${FLORA_MEASURE_STEPS_LARGE:-200}"

machine="$(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores, $(uname -m)"
echo "machine: $machine" | tee -a "$results/results.txt"

# run NAME ARGS...: one run of the example, alone, niced; its summary.csv
# rows go to results.txt with the load average before and after.
run() {
  local name="$1"
  shift
  local dir="$results/$name"
  [ -f "$dir/summary.csv" ] && return 0
  mkdir -p "$dir"
  local before after
  before="$(cut -d' ' -f1-3 /proc/loadavg)"
  local start=$SECONDS
  nice -n 10 "$bin" --out "$dir" "$@" >"$dir/log.txt" 2>&1 || echo "($name: exit status $?)" >>"$dir/log.txt"
  after="$(cut -d' ' -f1-3 /proc/loadavg)"
  {
    echo "== $name: $* ($((SECONDS - start)) s; load average before $before, after $after)"
    tail -n +2 "$dir/summary.csv" 2>/dev/null || echo "(no summary: see $dir/log.txt)"
  } | tee -a "$results/results.txt"
}

# The 6 x 384 models trained from scratch (the shipped 512-token tokenizer):
# with its 512-row token embedding (aspect 1.33, compressed under
# flora-opt's rule already), and with 4096 rows (aspect 10.7), where only
# --max-aspect-ratio inf compresses its momentum.
large=(--init-config custom --n-layer 6 --n-embd 384 --n-head 6 --n-positions 256 --eval-every 50 --log-every 50
       --batch-size 8)

aspect() {
  for seed in $seeds; do
    run "aspect-tiny-4-s$seed" --optimizer flora --seed "$seed" --flora-seed "$seed"
    run "aspect-tiny-inf-s$seed" --optimizer flora --seed "$seed" --flora-seed "$seed" --max-aspect-ratio inf
  done
  run "aspect-large512-4-s0" --optimizer flora "${large[@]}" --steps 20
  run "aspect-large512-inf-s0" --optimizer flora "${large[@]}" --steps 20 --max-aspect-ratio inf
  for seed in $large_seeds; do
    run "aspect-large4096-4-s$seed" --optimizer flora "${large[@]}" --steps "$large_steps" --vocab-size 4096 \
        --seed "$seed" --flora-seed "$seed"
    run "aspect-large4096-inf-s$seed" --optimizer flora "${large[@]}" --steps "$large_steps" --vocab-size 4096 \
        --seed "$seed" --flora-seed "$seed" --max-aspect-ratio inf
  done
}

precision() {
  run "precision-tiny-adam-fp32" --optimizer adam
  run "precision-tiny-flora-fp32" --optimizer flora
  run "precision-tiny-flora-bf16" --optimizer flora --dtype bfloat16
  run "precision-tiny-flora-bf16-sr" --optimizer flora --dtype bfloat16 --stochastic-rounding
  run "precision-large-adam-fp32" --optimizer adam "${large[@]}" --steps "$large_steps"
  run "precision-large-flora-fp32" --optimizer flora "${large[@]}" --steps "$large_steps"
  run "precision-large-flora-bf16" --optimizer flora "${large[@]}" --steps "$large_steps" --dtype bfloat16
  run "precision-large-flora-bf16-sr" --optimizer flora "${large[@]}" --steps "$large_steps" --dtype bfloat16 --stochastic-rounding
}

products() {
  for seed in $seeds; do
    run "products-tiny-fp32-s$seed" --optimizer flora --seed "$seed" --flora-seed "$seed"
    run "products-tiny-bf16-s$seed" --optimizer flora --seed "$seed" --flora-seed "$seed" --projection-precision bfloat16
  done
  for seed in $large_seeds; do
    run "products-large-fp32-s$seed" --optimizer flora "${large[@]}" --steps "$large_steps" --seed "$seed" \
        --flora-seed "$seed"
    run "products-large-bf16-s$seed" --optimizer flora "${large[@]}" --steps "$large_steps" --seed "$seed" \
        --flora-seed "$seed" --projection-precision bfloat16
  done
}

memory() {
  local body=(--init-config custom --n-layer 12 --n-embd 768 --n-head 12 --n-positions 128
              --batch-size 4 --block-size 128 --steps 2 --warmup-steps 1 --eval-every 0 --eval-max-blocks 4
              --log-every 1)
  run "memory-adam-fp32" --optimizer adam "${body[@]}"
  run "memory-flora-fp32" --optimizer flora "${body[@]}"
  run "memory-flora-all" --optimizer flora "${body[@]}" --dtype bfloat16 --quantization 8bit --fused-backward \
      --activation-checkpointing
  run "memory-flora-all-aspect-sr" --optimizer flora "${body[@]}" --dtype bfloat16 --quantization 8bit \
      --fused-backward --activation-checkpointing --max-aspect-ratio inf --stochastic-rounding
}

# run_ranks NAME ARGS...: the example as 2 ranks under torchrun, each with
# one thread (the machine has 2 cores).
run_ranks() {
  local name="$1"
  shift
  local dir="$results/$name"
  [ -f "$dir/summary.csv" ] && return 0
  mkdir -p "$dir"
  local before after
  before="$(cut -d' ' -f1-3 /proc/loadavg)"
  local start=$SECONDS
  OMP_NUM_THREADS=1 nice -n 10 "$root/scripts/torchrun.sh" --standalone --nproc-per-node 2 "$bin" \
      --out "$dir" --threads 1 "$@" >"$dir/log.txt" 2>&1 || echo "($name: exit status $?)" >>"$dir/log.txt"
  after="$(cut -d' ' -f1-3 /proc/loadavg)"
  {
    echo "== $name (2 ranks): $* ($((SECONDS - start)) s; load average before $before, after $after)"
    tail -n +2 "$dir/summary.csv" 2>/dev/null || echo "(no summary: see $dir/log.txt)"
  } | tee -a "$results/results.txt"
}

parallel() {
  local tiny=(--optimizer flora --steps 200 --eval-every 0 --eval-max-blocks 16 --log-every 50)
  run "parallel-tiny-one-process" "${tiny[@]}" --threads 1
  run_ranks "parallel-tiny-plain" "${tiny[@]}"
  run_ranks "parallel-tiny-compressed-r64" "${tiny[@]}" --compression-rank 64
  run_ranks "parallel-tiny-compressed-r16" "${tiny[@]}" --compression-rank 16
  local mid=(--optimizer flora --init-config custom --n-layer 6 --n-embd 384 --n-head 6 --n-positions 256
             --batch-size 8 --steps 30 --eval-every 0 --eval-max-blocks 8 --log-every 10)
  run "parallel-large-one-process" "${mid[@]}" --threads 1
  run_ranks "parallel-large-plain" "${mid[@]}"
  run_ranks "parallel-large-compressed-r64" "${mid[@]}" --compression-rank 64
  run_ranks "parallel-large-compressed-r64-overlap" "${mid[@]}" --compression-rank 64 --overlap
}

case "$what" in
  aspect) aspect ;;
  precision) precision ;;
  products) products ;;
  memory) memory ;;
  parallel) parallel ;;
  all) aspect; precision; products; memory; parallel ;;
  *) echo "measure.sh: unknown measurement '$what' (aspect, precision, products, memory, parallel, all)" >&2; exit 2 ;;
esac
