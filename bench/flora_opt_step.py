#!/usr/bin/env python3
"""Step time of the Python reference, flora-opt 0.0.3, on the GPT-2 small
shapes, for comparison with bench/gpu_step_bench.cpp on the same GPU.

    python3 bench/flora_opt_step.py [--device cuda] [--dtype fp32|bf16]

Needs torch and flora-opt importable (scripts/gpu-check.sh installs the
carried wheel into a scratch directory). flora-opt imports bitsandbytes and
accelerate at module load although its optimizer step uses neither (no
quantization, no accelerator); when they are missing this script installs
stand-in modules whose functions raise if called, and says so.

Timing: CUDA events around each step, the median of 50 steps after 5 warm-up
steps; parameters N(0, 0.02) and gradients N(0, 1e-3), as in the C++ bench.
Prints one JSON line.
"""

import argparse
import importlib
import json
import os
import statistics
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))


def stand_in(name, attrs):
    module = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(module, key, value)
    sys.modules[name] = module
    return module


def ensure_imports():
    shimmed = []
    try:
        importlib.import_module("bitsandbytes.functional")
    except Exception:  # noqa: BLE001 - any import failure: stand in
        def unavailable(*_args, **_kwargs):
            raise RuntimeError("bitsandbytes stand-in: quantization is not available in this benchmark")

        functional = stand_in("bitsandbytes.functional",
                              {"quantize_blockwise": unavailable, "dequantize_blockwise": unavailable})
        stand_in("bitsandbytes", {"functional": functional})
        shimmed.append("bitsandbytes")
    try:
        importlib.import_module("accelerate")
    except Exception:  # noqa: BLE001
        stand_in("accelerate", {"Accelerator": type("Accelerator", (), {})})
        shimmed.append("accelerate")
    return shimmed


def read_shapes(path):
    shapes = []
    with open(path) as f:
        for line in f:
            if not line.strip() or line.startswith("#") or line.startswith("name\t"):
                continue
            _, dims = line.rstrip("\n").split("\t")
            shapes.append(tuple(int(d) for d in dims.split("x")))
    return shapes


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--rank", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()

    shimmed = ensure_imports()
    import torch
    from flora_opt.optimizers.torch.flora import Flora

    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    torch.manual_seed(0)
    params = []
    for shape in read_shapes(os.path.join(HERE, "shapes", "gpt2-small.tsv")):
        p = (torch.randn(shape, device=args.device) * 0.02).to(dtype).requires_grad_(True)
        params.append(p)
    grads = [torch.randn_like(p) * 1e-3 for p in params]

    opt = Flora(params, lr=1e-3, rank=args.rank, beta1=0.9, kappa=1000)

    def step():
        for p, g in zip(params, grads):
            p.grad = g  # flora-opt clears p.grad in its step
        opt.step()

    for _ in range(5):
        step()
    times = []
    for _ in range(args.steps):
        if args.device == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        else:
            import time
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
    state_bytes = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                      if torch.is_tensor(t))
    print(json.dumps({
        "implementation": "flora-opt 0.0.3 (Python)",
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "dtype": args.dtype,
        "rank": args.rank,
        "median_ms": statistics.median(times),
        "state_MB": state_bytes / 1e6,
        "stand_ins": shimmed,
    }))


if __name__ == "__main__":
    main()
