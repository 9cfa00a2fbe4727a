"""Rounding throughput: halfsim's numba kernels against numpy's float16 and ml_dtypes' astype
round trips, measured side by side in one process.

    python benchmarks/bench_round.py [--n 16000000] [--runs 7]

Each figure is the median of --runs timed calls after one warm-up call (which also compiles or
loads the kernels). `round` allocates its result as the astype round trips do; `round_into`
writes into a preallocated array, as the interpreter does.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import halfsim  # noqa: E402
from halfsim import formats as F  # noqa: E402
from timing import median_ms  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16_000_000)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    import ml_dtypes as md

    x = (np.random.default_rng(0).standard_normal(args.n) * 10000).astype(np.float32)  # spans fp16's range
    out = np.empty_like(x)
    refs = [("fp16", "numpy float16", np.float16), ("bf16", "ml_dtypes bfloat16", md.bfloat16),
            ("fp8-e4m3", "ml_dtypes float8_e4m3fn", md.float8_e4m3fn),
            ("fp8-e5m2", "ml_dtypes float8_e5m2", md.float8_e5m2)]
    print(f"{args.n:,} float32 values, median of {args.runs} runs, {os.cpu_count()} cores")
    print(f"{'format':<10}{'halfsim.round':>15}{'round_into':>12}{'reference':>12}  {'ratio':>7}  reference")
    for name, label, dt in refs:
        f = halfsim.format(name)
        with np.errstate(over="ignore", invalid="ignore"):
            ok = np.array_equal(halfsim.round(x, f), x.astype(dt).astype(np.float32), equal_nan=True)
            t_ref = median_ms(lambda: x.astype(dt).astype(np.float32), args.runs)
        t_h = median_ms(lambda: halfsim.round(x, f), args.runs)
        t_i = median_ms(lambda: F.round_into(x, f, out), args.runs)
        flag = "" if ok else "  MISMATCH"
        print(f"{name:<10}{t_h:>12.1f} ms{t_i:>9.1f} ms{t_ref:>9.1f} ms  {t_ref / t_h:>6.1f}x  {label}{flag}")
    t_copy = median_ms(lambda: x.copy(), args.runs)
    print(f"memory floor: x.copy() {t_copy:.1f} ms (a fresh float32 result costs at least this)")
    print("general kernel (options set), halfsim.round:")
    for name in ("fp16", "bf16"):
        for kw in ({"rounding": "toward-zero"}, {"rounding": "stochastic", "seed": 1},
                   {"subnormals": "ftz", "overflow": "saturate"}):
            t = median_ms(lambda: halfsim.round(x, name, **kw), args.runs)
            print(f"  {name:<8}{t:>9.1f} ms  {kw}")


if __name__ == "__main__":
    main()
