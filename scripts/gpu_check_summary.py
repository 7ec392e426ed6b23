#!/usr/bin/env python3
"""The summary of scripts/gpu-check.sh, from the logs it wrote:

    gpu_check_summary.py LOG_DIR ELAPSED_SECONDS BUDGET_SECONDS

Reads stages.txt (one line per stage), machine.txt, cuda_tests.xml and
cuda_tests.log (the "[ agreement ]" lines the tests print), sanitizer.log,
gpu_bench.json and flora_opt_*.jsonl, whichever exist, and prints a short
report. Standard library only.
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
        lines.append(f"{'step, GPT-2 small shapes':<26} {'median ms':>10} {'min ms':>10} {'state MB':>10}")
        for name, b in rows.items():
            lines.append(f"  {name:<24} {b['median_ms']:10.3f} {b['min_ms']:10.3f} {b['state_MB']:10.1f}")
        for dtype in ("fp32", "bf16"):
            adam, flora = rows.get(f"Adam/{dtype}"), rows.get(f"Flora_r256/{dtype}")
            if adam and flora:
                lines.append(f"  Flora r256 / Adam ({dtype}): {flora['median_ms'] / adam['median_ms']:.3f}")
    for dtype in ("fp32", "bf16"):
        for line in read(logs, f"flora_opt_{dtype}.jsonl").splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            ours = rows.get(f"Flora_r256/{dtype}")
            ratio = f", flora-opt / ours = {r['median_ms'] / ours['median_ms']:.1f}x" if ours else ""
            lines.append(f"  flora-opt 0.0.3 ({dtype}): {r['median_ms']:.3f} ms, {r['state_MB']:.1f} MB{ratio}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
