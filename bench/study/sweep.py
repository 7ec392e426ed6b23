#!/usr/bin/env python3
"""The momentum study's sweep: the GPT-2 example over optimizer variants x
learning rates x seeds, on two corpora, at two model sizes, from a random
start and fine-tuning a pretrained model. Standard library only.

    bench/study/sweep.py [--binary B] [--out DIR] [--only PART,...] [--dry-run]

PART names one block of the study (see PARTS below), e.g. tiny-scratch-prose.
Every run writes its own directory under DIR/runs/ (the example's
summary.csv and, for Flora, statistics.csv: the update's RMS before clipping
and the clip factor of every parameter every 25 steps); a run whose
summary.csv exists is not run again, so the sweep resumes where it stopped.
After each run DIR/study.csv is rewritten from every run directory: one row
per run with the held-out loss and the diagnostics averaged over the
matrices whose momentum a rank-r Flora compresses (for every variant, so
that compressed, full and no momentum are compared on the same matrices);
DIR/study_timeseries.csv has the same diagnostics at every sampled step.
bench/study/plot.py draws it.

Runs are one at a time under `nice -n 10` (--nice); the machine's load average
before and after each run is recorded (the development VM is shared).
"""

import argparse
import csv
import itertools
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The optimizer variants: the example's flags for each. "compressed" is
# flora-opt's rule; the last three are MomentumProjection variants.
VARIANTS = {
    "none": ["--beta1", "0"],
    "full": [],  # --rank 0 (below): an uncompressed momentum
    "compressed": [],
    "orthonormal": ["--momentum-projection", "orthonormal"],
    "rescale": ["--momentum-rescale"],
    "subspace": ["--momentum-projection", "subspace"],
}

# Model sizes: flags of the example, and the rank used at that size
# (r / n = 1/4 for the tiny model's 64-wide matrices, 1/3 for 384).
SIZES = {
    "tiny": {"flags": ["--init-config", "tiny"], "rank": 16},
    "6x384": {
        "flags": ["--init-config", "custom", "--n-layer", "6", "--n-embd", "384", "--n-head", "6",
                  "--n-positions", "128"],
        "rank": 128,
    },
}


def corpus_files(corpus, out):
    if corpus == "shipped":
        data = os.path.join(ROOT, "examples", "gpt2", "data")
        return os.path.join(data, "train.txt"), os.path.join(data, "valid.txt")
    prose = os.path.join(out, "corpus")
    return os.path.join(prose, "train.txt"), os.path.join(prose, "valid.txt")


# The blocks of the study. Each: size, regime ("scratch", or "finetune" from
# a model pretrained on `pretrain` with Adam), corpus trained on, variants,
# learning rates, seeds, steps, batch size; `extra`: a learning rate run for
# some variants only (the grid's top was the best of most variants in the
# first runs).
PARTS = {
    "tiny-scratch-shipped": dict(size="tiny", regime="scratch", corpus="shipped", variants=list(VARIANTS),
                                 lrs=[0.04, 0.08, 0.16], seeds=[0, 1, 2], steps=300, batch=16,
                                 extra={0.32: ["none", "full", "rescale", "subspace"]}),
    "tiny-scratch-prose": dict(size="tiny", regime="scratch", corpus="prose", variants=list(VARIANTS),
                               lrs=[0.04, 0.08, 0.16], seeds=[0, 1, 2], steps=300, batch=16,
                               extra={0.32: ["none", "full", "rescale", "subspace"]}),
    "tiny-finetune-shipped": dict(size="tiny", regime="finetune", pretrain="prose", corpus="shipped",
                                  variants=list(VARIANTS), lrs=[0.02, 0.04, 0.08], seeds=[0, 1, 2],
                                  steps=300, batch=16, extra={0.16: ["none", "full", "compressed", "subspace"]}),
    "6x384-scratch-prose": dict(size="6x384", regime="scratch", corpus="prose",
                                variants=["none", "full", "compressed", "subspace"], lrs=[0.08],
                                seeds=[0], steps=150, batch=8),
    "6x384-finetune-shipped": dict(size="6x384", regime="finetune", pretrain="prose", corpus="shipped",
                                   variants=["none", "full", "compressed", "subspace"], lrs=[0.04, 0.08],
                                   seeds=[0], steps=100, batch=8),
}
# Pretraining for the fine-tuning regime: Adam at its default rate, seed 0.
PRETRAIN_STEPS = {"tiny": 600, "6x384": 300}
STATS_EVERY = 25
NICE = 10  # --nice


def combos(spec):
    """(variant, lr, seed) of every run of a block: the full grid, then
    spec["extra"] (lr -> variants), learning rates added for some variants
    only, where the grid's edge was their best."""
    out = list(itertools.product(spec["variants"], spec["lrs"], spec["seeds"]))
    for lr, variants in spec.get("extra", {}).items():
        out += list(itertools.product(variants, [lr], spec["seeds"]))
    return out


def load_average():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def run(cmd, log_path, dry):
    if dry:
        print(" ".join(cmd))
        return 0
    with open(log_path, "w") as log:
        return subprocess.call(["nice", "-n", str(NICE)] + cmd, stdout=log, stderr=subprocess.STDOUT)


def pretrained_dir(args, size, corpus):
    """The model the fine-tuning runs of `size` start from, pretrained with
    Adam on `corpus` (made once)."""
    where = os.path.join(args.out, "pretrained", f"{size}-{corpus}")
    if os.path.exists(os.path.join(where, "model.safetensors")):
        return where
    train, valid = corpus_files(corpus, args.out)
    logs = os.path.join(args.out, "pretrained", f"{size}-{corpus}-run")
    os.makedirs(logs, exist_ok=True)
    cmd = [args.binary, "--optimizer", "adam", *SIZES[size]["flags"], "--train-file", train, "--valid-file", valid,
           "--steps", str(PRETRAIN_STEPS[size]), "--eval-every", "0", "--log-every", "100", "--seed", "0",
           "--batch-size", "16" if size == "tiny" else "8", "--out", logs, "--save-model", where]
    print(f"pretraining {size} on {corpus} with adam ({PRETRAIN_STEPS[size]} steps)", flush=True)
    if run(cmd, os.path.join(logs, "log.txt"), args.dry_run) != 0 and not args.dry_run:
        sys.exit(f"pretraining failed: see {logs}/log.txt")
    return where


def run_dir(args, part, variant, lr, seed):
    return os.path.join(args.out, "runs", part, f"{variant}-lr{lr}-seed{seed}")


def one_run(args, part, spec, variant, lr, seed):
    where = run_dir(args, part, variant, lr, seed)
    if os.path.exists(os.path.join(where, "summary.csv")):
        return
    os.makedirs(where, exist_ok=True)
    size = SIZES[spec["size"]]
    train, valid = corpus_files(spec["corpus"], args.out)
    model = size["flags"]
    if spec["regime"] == "finetune":
        model = ["--model-dir", pretrained_dir(args, spec["size"], spec["pretrain"])]
    cmd = [args.binary, "--optimizer", "flora", *model, "--train-file", train, "--valid-file", valid,
           "--steps", str(spec["steps"]), "--batch-size", str(spec["batch"]), "--flora-lr", str(lr),
           "--seed", str(seed), "--flora-seed", str(seed), "--rank", "0" if variant == "full" else str(size["rank"]),
           "--eval-every", "0", "--log-every", "0", "--stats-every", str(STATS_EVERY), "--out", where,
           *VARIANTS[variant]]
    before = load_average()
    start = time.time()
    status = run(cmd, os.path.join(where, "log.txt"), args.dry_run)
    if args.dry_run:
        return
    with open(os.path.join(where, "machine.txt"), "w") as f:
        f.write(f"load_before={before}\nload_after={load_average()}\nwall_s={time.time() - start:.1f}\n"
                f"exit_status={status}\n")
    print(f"{part} {variant} lr={lr} seed={seed}: exit {status}, {time.time() - start:.0f} s, "
          f"load {before:.1f}", flush=True)


def compressible(shape, rank):
    """The matrices whose momentum Flora keeps compressed at `rank` (2-d,
    smaller side >= rank, aspect ratio <= 4: embeddings are not)."""
    if len(shape) != 2:
        return False
    small, large = min(shape), max(shape)
    return small >= rank and large <= 4 * small


def summarize(args):
    rows = []
    series = []  # the diagnostics over time: one row per run and sampled step
    for part, spec in PARTS.items():
        rank = SIZES[spec["size"]]["rank"]
        for variant, lr, seed in combos(spec):
            where = run_dir(args, part, variant, lr, seed)
            summary = os.path.join(where, "summary.csv")
            if not os.path.exists(summary):
                continue
            with open(summary) as f:
                s = next(csv.DictReader(f))
            machine = {}
            if os.path.exists(os.path.join(where, "machine.txt")):
                with open(os.path.join(where, "machine.txt")) as f:
                    machine = dict(line.strip().split("=", 1) for line in f if "=" in line)
            # Diagnostics over the compressible matrices: per sampled step the
            # numel-weighted mean of the update RMS and of the clip factor.
            per_step = {}
            stats = os.path.join(where, "statistics.csv")
            if os.path.exists(stats):
                with open(stats) as f:
                    for r in csv.DictReader(f):
                        shape = [int(x) for x in r["shape"].split("x")]
                        if not compressible(shape, rank):
                            continue
                        n = shape[0] * shape[1]
                        acc = per_step.setdefault(int(r["step"]), [0.0, 0.0, 0.0, 1.0])
                        acc[0] += n
                        acc[1] += n * float(r["update_rms"])
                        acc[2] += n * float(r["clip_factor"])
                        acc[3] = min(acc[3], float(r["clip_factor"]))
            steps = sorted(per_step)
            rms = [per_step[k][1] / per_step[k][0] for k in steps]
            clip = [per_step[k][2] / per_step[k][0] for k in steps]
            for k in steps:
                series.append({"part": part, "variant": variant, "lr": lr, "seed": seed, "step": k,
                               "update_rms": f"{per_step[k][1] / per_step[k][0]:.5f}",
                               "clip_factor": f"{per_step[k][2] / per_step[k][0]:.5f}",
                               "clip_factor_min": f"{per_step[k][3]:.5f}"})
            mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")
            rows.append({
                "part": part, "size": spec["size"], "regime": spec["regime"], "corpus": spec["corpus"],
                "variant": variant, "rank": rank if variant != "full" else "", "lr": lr, "seed": seed,
                "steps": spec["steps"], "batch": spec["batch"],
                "initial_eval_loss": s["initial_eval_loss"], "eval_loss": s["eval_loss"],
                "final_train_loss": s["final_train_loss"], "failure": s["failure"],
                "update_rms_mean": f"{mean(rms):.4f}", "update_rms_first": f"{rms[0]:.4f}" if rms else "",
                "update_rms_last": f"{rms[-1]:.4f}" if rms else "",
                "clip_factor_mean": f"{mean(clip):.4f}",
                "clip_factor_min": f"{min(per_step[k][3] for k in steps):.4f}" if steps else "",
                "ms_per_step": s["ms_per_step"], "load_before": machine.get("load_before", ""),
                "load_after": machine.get("load_after", ""), "wall_s": machine.get("wall_s", ""),
            })
    path = os.path.join(args.out, "study.csv")
    if rows:
        with open(path + ".tmp", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        os.replace(path + ".tmp", path)
    if series:
        timeseries = os.path.join(args.out, "study_timeseries.csv")
        with open(timeseries + ".tmp", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(series[0]))
            w.writeheader()
            w.writerows(series)
        os.replace(timeseries + ".tmp", timeseries)
    return path, len(rows)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--binary", default=os.path.join(ROOT, "build", "examples", "gpt2", "gpt2-finetune"))
    p.add_argument("--out", default=os.path.join(ROOT, "build", "study"))
    p.add_argument("--only", default=",".join(PARTS), help="comma-separated parts: " + ", ".join(PARTS))
    p.add_argument("--dry-run", action="store_true", help="print the commands")
    p.add_argument("--nice", type=int, default=10, help="niceness of the runs (default 10)")
    p.add_argument("--summarize", action="store_true", help="only rewrite study.csv from the run directories")
    args = p.parse_args()
    args.out = os.path.abspath(args.out)
    global NICE
    NICE = args.nice
    if not args.summarize:
        if not os.path.exists(args.binary):
            sys.exit(f"no {args.binary}: build it with scripts/build.sh --target gpt2-finetune")
        subprocess.check_call([os.path.join(ROOT, "bench", "study", "prose_corpus.sh"),
                               os.path.join(args.out, "corpus")])
        parts = args.only.split(",")
        for part in parts:
            if part not in PARTS:
                sys.exit(f"unknown part '{part}' (expected one of {', '.join(PARTS)})")
        # Seed by seed over all the requested parts, so that a sweep cut
        # short has every block at its first seeds rather than some blocks
        # complete and others missing.
        jobs = []
        for order, part in enumerate(parts):
            spec = PARTS[part]
            for variant, lr, seed in combos(spec):
                jobs.append((seed, order, part, lr, variant))
        for seed, _, part, lr, variant in sorted(jobs, key=lambda j: (j[0], j[1])):
            one_run(args, part, PARTS[part], variant, lr, seed)
            if not args.dry_run:
                summarize(args)
    path, count = summarize(args)
    print(f"{count} runs in {path}")


if __name__ == "__main__":
    main()
