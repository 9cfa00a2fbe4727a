"""Accumulation kernels side by side with numpy float32 (median of 7 after warm-up).

    python benchmarks/bench_accumulate.py

Prints wall-clock medians and the ratio to the numpy anchor measured in the same run:
a 512x512x512 GEMM with strict per-step fp16 accumulation (sequential, with and without fma)
against float32 `a @ b`, and sum_acc of 16M elements against np.sum."""
from __future__ import annotations

import time

import numpy as np

from halfsim.kernels.accumulate import matmul_acc, sum_acc


def median_ms(f, reps: int = 7) -> float:
    f()  # warm-up (compiles on the first run)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return 1e3 * sorted(ts)[reps // 2]


def main() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((512, 512)).astype(np.float16).astype(np.float32)
    b = rng.standard_normal((512, 512)).astype(np.float16).astype(np.float32)
    anchor = median_ms(lambda: a @ b)
    print(f"numpy float32 matmul 512^3            {anchor:8.2f} ms")
    cases = [("fp16 acc, sequential, no fma", dict(ebits=5, mbits=10, fma=False)),
             ("fp16 acc, sequential, fma", dict(ebits=5, mbits=10, fma=True)),
             ("bf16 acc, sequential, no fma", dict(ebits=8, mbits=7, fma=False)),
             ("fp16 acc, blocked 32", dict(ebits=5, mbits=10, order="blocked")),
             ("fp16 acc, pairwise", dict(ebits=5, mbits=10, order="pairwise"))]
    for name, kw in cases:
        t = median_ms(lambda: matmul_acc(a, b, **kw), reps=7 if kw.get("order") is None else 3)
        print(f"matmul_acc {name:30s} {t:8.2f} ms  ratio {t / anchor:6.1f}x")
    x = rng.standard_normal(1 << 24).astype(np.float16).astype(np.float32)
    anchor = median_ms(lambda: np.sum(x))
    print(f"np.sum 16M float32                    {anchor:8.2f} ms")
    x2 = x.reshape(4096, 4096)
    for name, kw, arr in [("16M sequential (one chain)", dict(), x),
                          ("16M pairwise", dict(order="pairwise"), x),
                          ("16M blocked 32", dict(order="blocked"), x),
                          ("4096x4096 axis=1 sequential", dict(axis=1), x2)]:
        t = median_ms(lambda: sum_acc(arr, **kw), reps=3)
        print(f"sum_acc {name:33s} {t:8.2f} ms  ratio {t / anchor:6.1f}x")


if __name__ == "__main__":
    main()
