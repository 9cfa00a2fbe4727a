"""Cost of precision emulation: halfsim's time per preset against its own fp32 time on the
validation models and the bundled digits model, side by side in one run (median of N after a
warm-up). Targets (issue 4): fp16 <= 2x fp32, fp16-acc16 <= 8x.

Run: PYTHONPATH=. python benchmarks/bench_precision.py [--runs 5] [--models a,b] [--presets p,q]

BLAS threads: fp32 runs hold OpenBLAS at one thread and split large GEMMs themselves
(kernels/blas.py); precision plans call np.matmul with OpenBLAS's own threads, which wait for
each other at every GEMM when the cores are busy (on the shared 2-core machine this alone made
fp16 5-20x fp32). OPENBLAS_NUM_THREADS=1 compares the two paths at equal BLAS threading."""
from __future__ import annotations

import argparse

import numpy as np
import onnx

import halfsim
from halfsim.demo import data_path
from timing import median_ms

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--models", default="dtln_model_2,magika,rapidocr_det,rapidocr_rec,minilm_int8")
    ap.add_argument("--presets", default=",".join(PRESETS[1:]), help="compared with fp32 (always run)")
    args = ap.parse_args()
    names = set(args.models.split(",")) if args.models else None
    presets = ("fp32",) + tuple(p for p in args.presets.split(",") if p and p != "fp32")
    print(f"{'model':<16}" + "".join(f"{p:>14}" for p in presets) + "   (ms; x = ratio to fp32)")
    for name, model, feeds in cases(names):
        t = {p: median_ms(lambda p=p: model.run(feeds, precision=p), args.runs if p != "fp16-acc16" else max(1, args.runs // 2))
             for p in presets}
        cells = [f"{t['fp32']:>14.1f}"] + [f"{t[p]:>8.1f} {t[p] / t['fp32']:>4.1f}x" for p in presets[1:]]
        print(f"{name:<16}" + "".join(cells), flush=True)


if __name__ == "__main__":
    main()
