"""What the special-value (NaN/inf) handling costs on ordinary inputs (issue #3).

    python benchmarks/bench_specials.py [--runs 15] [--n 1048576]

Each op keeps its fast path for inputs without NaN/inf; what ordinary inputs pay is the check
that decides, or the changed arithmetic. Per op, one thread (OpenBLAS/numba at 1), on a
float32 tensor of --n elements: the op as halfsim runs it and the check alone, timed in
interleaved pairs (op, check, op, check, ...), medians of --runs samples of 5 calls each;
`share` is check / op. For QuantizeLinear int8 and Pow(x, 0.5), whose arithmetic changed, the
pair is the current op against the previous formula instead. Load (`uptime`) is printed too."""
from __future__ import annotations

import argparse
import os
import time

os.environ.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")

import numpy as np  # noqa: E402

from halfsim.ops import elementwise, index, quant, reduce  # noqa: E402
from halfsim.ops.registry import quiet  # noqa: E402


def _sample_ms(fn, calls: int = 5) -> float:
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t) / calls * 1e3


def paired(a, b, runs: int) -> tuple[float, float]:
    a(), b()  # warm-up (numba compiles, caches fill)
    ta, tb = [], []
    for _ in range(runs):
        ta.append(_sample_ms(a))
        tb.append(_sample_ms(b))
    return float(np.median(ta)), float(np.median(tb))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--n", type=int, default=1 << 20)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n = args.n
    side = int(np.sqrt(n))
    x = rng.standard_normal(n).astype(np.float32)
    m2 = x[: side * side].reshape(side, side)
    rows = []

    # ReduceMax over the last axis: a NaN in the result (np.max propagates it) sends it to ORT's fold.
    r = np.max(m2, axis=1)
    rows.append(("ReduceMax axes=[1]", *paired(lambda: reduce._max_min(m2, (1,), True, True),
                                               lambda: np.isnan(r).any(), args.runs), "check"))
    idx = np.argmax(m2, axis=1)
    rows.append(("ArgMax axis=1", *paired(lambda: reduce._arg(m2, 1, 1, 0, True),
                                          lambda: np.isnan(np.take_along_axis(m2, idx[:, None], 1)).any(),
                                          args.runs), "check"))
    rows.append(("Hardmax axis=-1", *paired(lambda: reduce._hardmax(m2, -1, False),
                                            lambda: np.isnan(np.take_along_axis(m2, idx[:, None], 1)).any(),
                                            args.runs), "check"))
    mn, mx = x.min(), x.max()
    rows.append(("DynamicQuantizeLinear", *paired(lambda: quant.dynamic_quantize_linear(None, x),
                                                  lambda: np.isfinite(mn) and np.isfinite(mx), args.runs),
                 "check"))
    lo, hi = np.array(-1, np.float32), np.array(1, np.float32)
    rows.append(("Clip (bounds inputs)", *paired(lambda: elementwise.clip11(None, x, lo, hi),
                                                 lambda: (elementwise._nan_bound(lo, -np.inf),
                                                          elementwise._nan_bound(hi, np.inf)), args.runs),
                 "check"))
    data = np.zeros((side, side), np.float32)
    sidx = rng.integers(0, side, (side, side)).astype(np.int64)
    ix = tuple([sidx] + list(np.indices(sidx.shape, sparse=True))[1:])
    def old_scatter():
        out = np.array(data)
        np.maximum.at(out, ix, m2)
        return out


    # Changed arithmetic: the current op against the previous formula.
    s, z = np.float32(0.05), np.int8(3)

    def old_int8():  # quant.quantize before the NaN rule, int8 branch
        v = x.astype(np.float32) / np.asarray(s).astype(np.float32)
        zf = np.asarray(z).astype(np.float32)
        return np.clip(np.rint(v) + zf, np.float32(-128), np.float32(127)).astype(np.int8)

    rows.append(("ScatterElements max", *paired(lambda: index._scatter_elements(data, sidx, m2, 0, "max"),
                                                old_scatter, max(3, args.runs // 5)), "previous"))
    rows.append(("QuantizeLinear int8", *paired(lambda: quant.quantize(x, s, z, np.int8), old_int8, args.runs),
                 "previous"))
    xp = np.abs(x)
    half = np.array(0.5, np.float32)
    with quiet():
        rows.append(("Pow(x, 0.5), x >= 0", *paired(lambda: elementwise.pow_(None, xp, half),
                                                     lambda: np.power(xp, half), args.runs), "previous"))

    print(f"n = {n} float32 elements ({side}x{side} for the 2-D ops), one thread, median of {args.runs} "
          f"samples of 5 calls, load {os.getloadavg()[0]:.2f}")
    print(f"{'op':24s} {'op ms':>9s} {'other ms':>9s}  other  ratio other/op")
    for name, a, b, what in rows:
        print(f"{name:24s} {a:9.3f} {b:9.3f}  {what:8s} {b / a:6.3f}")


if __name__ == "__main__":
    main()
