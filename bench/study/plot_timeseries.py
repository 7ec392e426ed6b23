#!/usr/bin/env python3
"""Draws the momentum study's diagnostics over time (bench/study/sweep.py's
study_timeseries.csv) as one PNG: per block of the study (a pair of rows)
and learning rate (a column), the RMS of the update before clipping and
the clip factor (what clipping multiplied it by; 1: not clipped), on the
matrices a rank-r Flora compresses, against the step, for every variant
(mean over seeds). Also prints, per block, variant and learning rate, the
mean over the steps after the warm-up (step > 50, the example's default) of
both, and the smallest clip factor of any matrix there (Markdown).

    plot_timeseries.py TIMESERIES_CSV OUT_PNG

Needs matplotlib (bench/study/run_study.sh installs it in a throw-away
virtual environment).
"""

import csv
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from plot import ORDER, STYLE  # noqa: E402

WARMUP = 50


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        rows = list(csv.DictReader(f))
    parts, lrs = [], defaultdict(set)
    lowest = {}
    # part -> lr -> variant -> step -> ([rms], [clip])
    data = defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: ([], [])))))
    for r in rows:
        if r["part"] not in parts:
            parts.append(r["part"])
        lr = float(r["lr"])
        lrs[r["part"]].add(lr)
        cell = data[r["part"]][lr][r["variant"]][int(r["step"])]
        cell[0].append(float(r["update_rms"]))
        cell[1].append(float(r["clip_factor"]))
        if int(r["step"]) > WARMUP:
            lowest[(r["part"], lr, r["variant"])] = min(lowest.get((r["part"], lr, r["variant"]), 1.0),
                                                        float(r["clip_factor_min"]))
    columns = max(len(v) for v in lrs.values())
    fig, axes = plt.subplots(2 * len(parts), columns, figsize=(4.4 * columns, 3.0 * 2 * len(parts)), squeeze=False)
    mean = lambda xs: sum(xs) / len(xs)
    print("| block | variant | lr | update RMS before clipping | clip factor | smallest clip factor of a matrix |")
    print("|---|---|---|---|---|---|")
    for p, part in enumerate(parts):
        for c, lr in enumerate(sorted(lrs[part])):
            top, bottom = axes[2 * p][c], axes[2 * p + 1][c]
            for v in [v for v in ORDER if v in data[part][lr]]:
                color, marker = STYLE.get(v, ("gray", "x"))
                steps = sorted(data[part][lr][v])
                rms = [mean(data[part][lr][v][k][0]) for k in steps]
                clip = [mean(data[part][lr][v][k][1]) for k in steps]
                top.plot(steps, rms, color=color, marker=marker, markersize=3, label=v)
                bottom.plot(steps, clip, color=color, marker=marker, markersize=3, label=v)
                after = [i for i, k in enumerate(steps) if k > WARMUP]
                print(f"| {part} | {v} | {lr:g} | {mean([rms[i] for i in after]):.3f} | "
                      f"{mean([clip[i] for i in after]):.3f} | {lowest.get((part, lr, v), 1.0):.2f} |")
            top.set_title(f"{part}, lr {lr:g}", fontsize=9)
            top.set_yscale("log")
            top.set_ylabel("update RMS before clipping")
            bottom.set_ylabel("clip factor")
            bottom.set_xlabel("step")
            top.grid(alpha=0.3)
            bottom.grid(alpha=0.3)
            if c == 0:
                top.legend(fontsize=7)
        for c in range(len(lrs[part]), columns):
            axes[2 * p][c].axis("off")
            axes[2 * p + 1][c].axis("off")
    fig.suptitle("Flora's update on the compressible matrices, before clipping, and the clip factor (mean over seeds)",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=70)


if __name__ == "__main__":
    main()
