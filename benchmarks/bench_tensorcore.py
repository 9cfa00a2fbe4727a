"""Bit-accurate tensor-core GEMM against numpy's float32 matmul (OpenBLAS sgemm), measured side
by side in one run: median of several runs after a warm-up (the first call also compiles).
The tensor-core time includes rounding the inputs to the model's format.

    python benchmarks/bench_tensorcore.py [--size 512] [--runs 5] [--models tc-a100-fp16,...]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from halfsim.tensorcore import gemm  # noqa: E402


def median_ms(fn, runs: int) -> float:
    fn()  # warm-up (and numba compilation on a cold cache)
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512, help="M = K = N")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--models", default="tc-v100-fp16,tc-a100-fp16,tc-h100-fp16")
    args = p.parse_args()
    n = args.size
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{n}x{n}x{n} GEMM, median of {args.runs} runs, {os.cpu_count()} CPUs, load average {load:.1f}")
    for name in args.models.split(","):
        t_np = median_ms(lambda: a @ b, args.runs)
        t_tc = median_ms(lambda: gemm(a, b, name), args.runs)
        t_np2 = median_ms(lambda: a @ b, args.runs)  # again: the machine's load may drift
        ref = min(t_np, t_np2)
        print(f"{name:16s} tensor-core {t_tc:8.1f} ms   numpy float32 {ref:6.2f} ms   ratio {t_tc / ref:6.1f}x")


if __name__ == "__main__":
    main()
