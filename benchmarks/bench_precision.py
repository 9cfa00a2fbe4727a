"""Cost of precision emulation: halfsim's time per preset against its own fp32 time on the
validation models and the bundled digits model, side by side in one run (median of N after a
warm-up). Targets (issue 4): fp16 <= 2x fp32, fp16-acc16 <= 8x.

Run: PYTHONPATH=. python benchmarks/bench_precision.py [--runs 5] [--models a,b] [--presets p,q] [--one-thread]

Presets are interleaved run by run; sub-millisecond models are sampled as the mean of
back-to-back runs filling 5 ms. --one-thread: halfsim, numba and OpenBLAS on one thread, timed
in process CPU time: on the shared 2-core machine far steadier than wall-clock medians.

Plain runs under a policy take the compiled plan schedule (halfsim/plan_schedule.py), built on
the warm-up runs; the timed runs replay it.

BLAS threads: every run, fp32 or emulated, holds OpenBLAS at one thread and splits large GEMMs
itself (kernels/blas.py), so both sides of a ratio use the same GEMM threading."""
from __future__ import annotations

import argparse
import os
import sys
import time

if "--one-thread" in sys.argv:  # before numpy and numba start their thread pools
    os.environ.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", HALFSIM_THREADS="1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402

import halfsim  # noqa: E402
from halfsim.demo import data_path  # noqa: E402

PRESETS = ("fp32", "fp16", "bf16", "tf32", "fp16-acc16", "tc-a100-fp16")


def cases(names):
    with np.load(data_path("digits_test.npz")) as z:
        yield "digits(450)", halfsim.load(data_path("digits.onnx")), {"image": z["image"]}
    from validation import fetch, recipes
    for e in fetch.load_manifest():
        if names and e["name"] not in names:
            continue
        path = str(fetch.fetch(e["name"]))
        yield e["name"], halfsim.load(path), recipes.build_inputs(e["recipe"], onnx.load(path))


def interleaved_ms(model, feeds, presets, runs: int, clock=time.perf_counter,
                   batch_s: float = 0.005) -> dict[str, float]:
    """Median ms per preset by `clock`, the presets taking turns run by run (direction
    alternating) after two warm-up runs each. Each sample follows one untimed run of the same
    preset, and for a sub-millisecond model it is the mean of back-to-back runs filling
    `batch_s`, as a streaming model runs frame after frame; a single cold call of such a model
    right after another preset ran swings by 2x."""
    ts: dict[str, list[float]] = {p: [] for p in presets}
    for _ in range(2):  # a policy's first run records its schedule, the second builds it
        for p in presets:
            model.run(feeds, precision=p)
    for i in range(runs):
        for p in (presets if i % 2 == 0 else presets[::-1]):
            t = time.perf_counter()
            model.run(feeds, precision=p)
            k = max(1, min(50, int(batch_s / max(time.perf_counter() - t, 1e-6))))
            t = clock()
            for _ in range(k):
                model.run(feeds, precision=p)
            ts[p].append((clock() - t) / k)
    return {p: 1e3 * float(np.median(v)) for p, v in ts.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--models", default="dtln_model_2,magika,rapidocr_det,rapidocr_rec,minilm_int8,silero_vad,dtln_model_1")
    ap.add_argument("--presets", default=",".join(PRESETS[1:]), help="compared with fp32 (always run)")
    ap.add_argument("--one-thread", action="store_true", help="one thread everywhere, interleaved, CPU time")
    args = ap.parse_args()
    names = set(args.models.split(",")) if args.models else None
    presets = ("fp32",) + tuple(p for p in args.presets.split(",") if p and p != "fp32")
    clock = "CPU ms, one thread" if args.one_thread else "wall ms"
    print(f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'model':<16}" + "".join(f"{p:>14}" for p in presets) + f"   ({clock}; x = ratio to fp32)")
    for name, model, feeds in cases(names):
        t = interleaved_ms(model, feeds, presets, args.runs,
                           time.process_time if args.one_thread else time.perf_counter)
        cells = [f"{t['fp32']:>14.1f}"] + [f"{t[p]:>8.1f} {t[p] / t['fp32']:>4.1f}x" for p in presets[1:]]
        print(f"{name:<16}" + "".join(cells), flush=True)


if __name__ == "__main__":
    main()
