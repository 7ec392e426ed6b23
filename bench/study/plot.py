#!/usr/bin/env python3
"""Draws the momentum study (bench/study/sweep.py's study.csv) as one PNG:
per block of the study, the held-out loss against the learning rate for
each variant (mean and standard deviation over seeds; a run that diverged
counts as missing and is reported in the legend), and below it the mean
clip factor of the update on the compressible matrices (1: never clipped).
Also prints the table of means and standard deviations (Markdown).

    plot.py STUDY_CSV OUT_PNG

Needs matplotlib (bench/study/run_study.sh installs it in a throw-away
virtual environment).
"""

import csv
import math
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ORDER = ["none", "full", "compressed", "orthonormal", "rescale", "subspace"]
STYLE = {"none": ("black", "o"), "full": ("tab:blue", "s"), "compressed": ("tab:red", "v"),
         "orthonormal": ("tab:orange", "^"), "rescale": ("tab:purple", "D"), "subspace": ("tab:green", "P")}


def stats(values):
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return float("nan"), float("nan"), 0
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var), len(values)


def number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        rows = list(csv.DictReader(f))
    parts = []
    for r in rows:
        if r["part"] not in parts:
            parts.append(r["part"])
    # part -> variant -> lr -> [eval losses], [clip factors], failures
    loss = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    clip = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    failed = defaultdict(lambda: defaultdict(int))
    for r in rows:
        lr = float(r["lr"])
        ok = not r["failure"]
        loss[r["part"]][r["variant"]][lr].append(number(r["eval_loss"]) if ok else float("nan"))
        clip[r["part"]][r["variant"]][lr].append(number(r["clip_factor_mean"]))
        if not ok:
            failed[r["part"]][r["variant"]] += 1

    fig, axes = plt.subplots(2, len(parts), figsize=(4.6 * len(parts), 7.5), squeeze=False,
                             gridspec_kw={"height_ratios": [2.2, 1]})
    print("| block | variant | " + " | ".join(f"lr {lr:g}" for lr in sorted({float(r['lr']) for r in rows})) + " |")
    all_lrs = sorted({float(r["lr"]) for r in rows})
    print("|---|---|" + "---|" * len(all_lrs))
    for col, part in enumerate(parts):
        top, bottom = axes[0][col], axes[1][col]
        variants = [v for v in ORDER if v in loss[part]]
        for v in variants:
            color, marker = STYLE.get(v, ("gray", "x"))
            lrs = sorted(loss[part][v])
            m = [stats(loss[part][v][lr]) for lr in lrs]
            label = v + (f" ({failed[part][v]} diverged)" if failed[part][v] else "")
            top.errorbar(lrs, [x[0] for x in m], yerr=[x[1] for x in m], color=color, marker=marker, capsize=3,
                         label=label)
            c = [stats(clip[part][v][lr]) for lr in lrs]
            bottom.errorbar(lrs, [x[0] for x in c], yerr=[x[1] for x in c], color=color, marker=marker, capsize=3)
            cells = []
            for lr in all_lrs:
                mean, std, n = stats(loss[part][v][lr]) if lr in loss[part][v] else (float("nan"), 0, 0)
                total = len(loss[part][v][lr]) if lr in loss[part][v] else 0
                cells.append("" if total == 0 else ("diverged" if n == 0 else
                             f"{mean:.3f} ± {std:.3f}" + (f" ({total - n} div.)" if n < total else "")))
            print(f"| {part} | {v} | " + " | ".join(cells) + " |")
        top.set_xscale("log", base=2)
        bottom.set_xscale("log", base=2)
        top.set_title(part, fontsize=10)
        top.set_ylabel("held-out loss (mean ± std over seeds)")
        bottom.set_ylabel("mean clip factor")
        bottom.set_xlabel("learning rate (Flora's, relative)")
        top.grid(alpha=0.3)
        bottom.grid(alpha=0.3)
        top.legend(fontsize=8)
    # Each variant at its best learning rate of the grid, against no
    # momentum at its best: the bar is beating no momentum by at
    # least half of full momentum's margin.
    print()
    print("| block | variant | best lr | held-out loss at it | vs none (best) | half of full's margin met? |")
    print("|---|---|---|---|---|---|")
    for part in parts:
        best = {}
        for v in [v for v in ORDER if v in loss[part]]:
            cands = [(stats(loss[part][v][lr])[0], lr) for lr in loss[part][v]]
            cands = [c for c in cands if not math.isnan(c[0])]
            if cands:
                best[v] = min(cands)
        if "none" not in best:
            continue
        margin = best["none"][0] - best["full"][0] if "full" in best else float("nan")
        for v, (value, lr) in best.items():
            gain = best["none"][0] - value
            met = "" if v in ("none", "full") else ("yes" if gain >= margin / 2 and gain > 0 else "no")
            edge = " (grid edge)" if lr in (min(loss[part][v]), max(loss[part][v])) else ""
            print(f"| {part} | {v} | {lr:g}{edge} | {value:.3f} | {gain:+.3f} | {met} |")
    fig.suptitle("Flora's momentum variants: held-out loss vs learning rate, and how much clipping shrank the update",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
