#!/usr/bin/env python3
"""The summary of scripts/gpu-check.sh, from the logs it wrote:

    gpu_check_summary.py LOG_DIR ELAPSED_SECONDS BUDGET_SECONDS

Reads stages.txt (one line per stage), machine.txt, cuda_tests.xml and
cuda_tests.log (the "[ agreement ]" lines the tests print), sanitizer.log,
gpu_bench.json and flora_opt_*.jsonl, whichever exist, and prints a short
report ending with the speed targets (Flora r256 <= 1.0x at::_fused_adamw_,
<= 0.5x torch::optim::Adam, >= 10x faster than flora-opt). Standard library
only.
"""

import json
import os
import re
import sys
import xml.etree.ElementTree as ET


def read(logs, name):
    path = os.path.join(logs, name)
    if not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        return f.read()


def test_counts(logs):
    """(tests, failures, skipped, [failed test names]) from the GoogleTest XML."""
    path = os.path.join(logs, "cuda_tests.xml")
    if not os.path.exists(path):
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return None
    tests = failures = skipped = 0
    failed = []
    for case in root.iter("testcase"):
        tests += 1
        if case.find("failure") is not None:
            failures += 1
            failed.append(f"{case.get('classname')}.{case.get('name')}")
        elif case.find("skipped") is not None or case.get("result") == "skipped":
            skipped += 1
    return tests, failures, skipped, failed


def verdict(value, bound, at_most):
    met = value <= bound if at_most else value >= bound
    return "MET" if met else "MISSED"


def targets(rows, flora_opt):
    """The speed targets of the fused step, per dtype: Flora r256 (eager,
    replayed from a CUDA graph where measured, and with TF32 products) at
    most 1.0x the time of
    at::_fused_adamw_ and 0.5x that of torch::optim::Adam, and at least 10x
    faster than flora-opt on the same card."""
    lines = ["speed targets (Flora r256, median step time on this card):"]
    for dtype in ("fp32", "bf16"):
        fused, adam = rows.get(f"FusedAdamW/{dtype}"), rows.get(f"Adam/{dtype}")
        reference = flora_opt.get(dtype)
        for variant in ("Flora_r256", "Flora_r256_graph", "Flora_r256_tf32"):
            flora = rows.get(f"{variant}/{dtype}")
            if not flora:
                lines.append(f"  {variant}/{dtype}: not measured")
                continue
            ms = flora["median_ms"]
            parts = []
            if fused:
                ratio = ms / fused["median_ms"]
                parts.append(f"{ratio:.2f}x at::_fused_adamw_ (target <= 1.0: {verdict(ratio, 1.0, True)})")
            else:
                parts.append("at::_fused_adamw_ not measured")
            if adam:
                ratio = ms / adam["median_ms"]
                parts.append(f"{ratio:.2f}x torch::optim::Adam (target <= 0.5: {verdict(ratio, 0.5, True)})")
            else:
                parts.append("torch::optim::Adam not measured")
            if reference:
                speedup = reference["median_ms"] / ms
                parts.append(f"{speedup:.1f}x faster than flora-opt (target >= 10: {verdict(speedup, 10.0, False)})")
            else:
                parts.append("flora-opt not measured")
            lines.append(f"  {variant}/{dtype} {ms:.3f} ms: " + "; ".join(parts))
    return lines


def main():
    logs, elapsed, budget = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    lines = []
    machine = " | ".join(line.strip() for line in read(logs, "machine.txt").splitlines() if line.strip())
    lines.append(f"flora GPU check ({elapsed}s of a {budget}s budget): {machine}")
    lines.append("stages:")
    for line in read(logs, "stages.txt").splitlines():
        lines.append(f"  {line}")

    counts = test_counts(logs)
    test_log = read(logs, "cuda_tests.log")
    if counts:
        tests, failures, skipped, failed = counts
        lines.append(f"CUDA tests: {tests} run, {failures} failed, {skipped} skipped")
        for name in failed[:20]:
            lines.append(f"  FAILED {name}")
    elif test_log:  # no XML: the binary died (a crash, a timeout); its last words
        lines.append("CUDA tests: no result file; the log ends with")
        lines.extend(f"  | {line}" for line in test_log.splitlines()[-15:])
    for agreement in re.findall(r"\[ agreement \] (.*)", test_log):
        lines.append(f"  agreement: {agreement}")

    sanitizer = read(logs, "sanitizer.log")
    summary = re.findall(r"ERROR SUMMARY: (\d+) error", sanitizer)
    if summary:
        lines.append(f"compute-sanitizer memcheck: {summary[-1]} errors")
        reports = re.findall(r"========= ((?:Invalid|Program hit|Out-of-range|Misaligned).*)\n=========\s+at (\S+)", sanitizer)
        for what, where in reports[:5]:
            lines.append(f"  {what} at {where}")

    rows = {}
    try:
        with open(os.path.join(logs, "gpu_bench.json")) as f:
            for b in json.load(f)["benchmarks"]:
                rows[b["name"]] = b
    except (OSError, ValueError, KeyError):
        pass
    if rows:
        lines.append(f"{'step, GPT-2 small shapes':<26} {'median ms':>10} {'min ms':>10} {'state MB':>10} {'aten calls':>10}")
        for name, b in rows.items():
            calls = b.get("aten_calls", "")
            lines.append(f"  {name:<24} {b['median_ms']:10.3f} {b['min_ms']:10.3f} {b['state_MB']:10.1f} {calls:>10}")
    flora_opt = {}
    for dtype in ("fp32", "bf16"):
        for line in read(logs, f"flora_opt_{dtype}.jsonl").splitlines():
            try:
                flora_opt[dtype] = json.loads(line)
            except ValueError:
                continue
        if dtype in flora_opt:
            r = flora_opt[dtype]
            lines.append(f"  flora-opt 0.0.3 ({dtype}): {r['median_ms']:.3f} ms, {r['state_MB']:.1f} MB")
    lines.extend(targets(rows, flora_opt))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
