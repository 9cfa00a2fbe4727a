"""Bit-accurate tensor-core GEMM against numpy's float32 matmul (OpenBLAS sgemm), measured side
by side in one run: interleaved pairs (numpy, then the tensor-core GEMM) after a warm-up (the
first call also compiles); medians of each and the median of the per-pair ratios (issue #9's
target: within 20x). The tensor-core time includes rounding the inputs to the model's format.
--pause: seconds between the calls of a pair (OpenBLAS's threads spin after a call).
--one-thread: numpy and the kernels on one thread, timed in process CPU time: the figure least
disturbed when other processes load the machine. The load average is printed before and after.

    python benchmarks/bench_tensorcore.py [--size 512] [--runs 7] [--models tc-a100-fp16,...] [--one-thread]
"""
from __future__ import annotations

import argparse
import os
import sys

if "--one-thread" in sys.argv:  # before numpy and numba start their thread pools
    os.environ.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")

import numpy as np  # noqa: E402

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(_HERE), _HERE]

from bench_accumulate import paired_ms  # noqa: E402
from halfsim.tensorcore import gemm  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512, help="M = K = N")
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--pause", type=float, default=0.3, help="seconds between the calls of a pair")
    p.add_argument("--one-thread", action="store_true", help="numpy and the kernels on one thread, CPU time")
    p.add_argument("--models", default="tc-v100-fp16,tc-a100-fp16,tc-h100-fp16,tc-a100-bf16,tc-a100-tf32,"
                                        "tc-h100-bf16,tc-h100-tf32,tc-h100-fp8")
    args = p.parse_args()
    n = args.size
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{n}x{n}x{n} GEMM, median of {args.runs} runs, {os.cpu_count()} CPUs, load average {load:.1f}")
    for name in args.models.split(","):
        t_np, t_tc, ratio = paired_ms(lambda: a @ b, lambda: gemm(a, b, name), args.runs, args.pause)
        print(f"{name:16s} tensor-core {t_tc:8.1f} ms   numpy float32 {t_np:6.2f} ms   ratio {ratio:6.1f}x")
    if hasattr(os, "getloadavg"):
        print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
