"""Accumulation kernels side by side with numpy float32.

    python benchmarks/bench_accumulate.py [--runs 7] [--pause 0.3] [--gemm-only] [--one-thread]

A 512x512x512 GEMM with strict per-step fp16 accumulation (sequential, with and without fma;
issue #4) and other orders against float32 `a @ b`, and sum_acc of 16M elements against
np.sum. The GEMM cases are timed in interleaved pairs (numpy, then the kernel), so both see
the same machine load; the ratio printed is the median of the per-pair ratios. --pause
sleeps between the two calls of a pair: OpenBLAS's threads spin for about 0.1 s after a call
and would otherwise compete with numba's threads (0.05 or 0 measures that back-to-back cost,
which on 2 cores slows a parallel kernel by up to ~2.5x)."""
from __future__ import annotations

import argparse
import os
import sys
import time

if "--one-thread" in sys.argv:  # before numpy and numba start their thread pools
    os.environ.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")

import numpy as np  # noqa: E402

from halfsim.kernels.accumulate import matmul_acc, sum_acc  # noqa: E402
from timing import median_ms  # noqa: E402


def paired_ms(ref, f, runs: int, pause: float) -> tuple[float, float, float]:
    """Medians of ref and f (ms) and the median of the per-pair ratios f / ref. With
    --one-thread both run on one thread and are timed in process CPU time, which other
    processes' load disturbs far less than wall-clock time."""
    clock = time.process_time if "--one-thread" in sys.argv else time.perf_counter
    ref()
    f()  # warm-up (compiles on the first run)
    tr, tf = [], []
    for _ in range(runs):
        for fn, ts in ((ref, tr), (f, tf)):
            time.sleep(pause)
            t = clock()
            fn()
            ts.append(clock() - t)
    ratios = sorted(x / y for x, y in zip(tf, tr))
    return 1e3 * float(np.median(tr)), 1e3 * float(np.median(tf)), ratios[runs // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--pause", type=float, default=0.3, help="seconds between the calls of a pair")
    p.add_argument("--gemm-only", action="store_true", help="only the sequential GEMM cases")
    p.add_argument("--one-thread", action="store_true", help="numpy and the kernels on one thread, CPU time")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    a = rng.standard_normal((512, 512)).astype(np.float16).astype(np.float32)
    b = rng.standard_normal((512, 512)).astype(np.float16).astype(np.float32)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; pairs: numpy a @ b, then the kernel")
    cases = [("fp16 acc, sequential, no fma", dict(ebits=5, mbits=10, fma=False)),
             ("fp16 acc, sequential, fma", dict(ebits=5, mbits=10, fma=True)),
             ("bf16 acc, sequential, no fma", dict(ebits=8, mbits=7, fma=False)),
             ("fp16 acc, blocked 32", dict(ebits=5, mbits=10, order="blocked")),
             ("fp16 acc, pairwise", dict(ebits=5, mbits=10, order="pairwise"))]
    for name, kw in cases:
        seq = kw.get("order") is None
        if args.gemm_only and not seq:
            continue
        tn, t, ratio = paired_ms(lambda: a @ b, lambda: matmul_acc(a, b, **kw),
                                 args.runs if seq else 3, args.pause)
        print(f"matmul_acc {name:30s} {t:8.2f} ms  numpy {tn:6.2f} ms  ratio {ratio:6.1f}x")
    if args.gemm_only:
        return
    x = rng.standard_normal(1 << 24).astype(np.float16).astype(np.float32)
    anchor = median_ms(lambda: np.sum(x), 7)
    print(f"np.sum 16M float32                    {anchor:8.2f} ms")
    x2 = x.reshape(4096, 4096)
    for name, kw, arr in [("16M sequential (one chain)", dict(), x),
                          ("16M pairwise", dict(order="pairwise"), x),
                          ("16M blocked 32", dict(order="blocked"), x),
                          ("4096x4096 axis=1 sequential", dict(axis=1), x2)]:
        t = median_ms(lambda: sum_acc(arr, **kw), 3)
        print(f"sum_acc {name:33s} {t:8.2f} ms  ratio {t / anchor:6.1f}x")


if __name__ == "__main__":
    main()
