"""Fault-injection throughput: trials per second of `halfsim.inject` (fault-free trace kept,
each trial re-running only the downstream cone of the faulty node, stopping once the fault is
masked) against the naive way (the whole model re-run from scratch for every trial), measured
side by side in one run, serially, on the bundled digits CNN and on magika (a validation model,
fetched into the cache). Both ways must give identical outcomes for the same seed.

    python benchmarks/bench_inject.py [--trials N] [--naive-trials N] [--models digits,magika]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import halfsim  # noqa: E402
from halfsim.demo import data_path  # noqa: E402
from halfsim.faults import inject, split_batch  # noqa: E402


def _digits():
    m = halfsim.load(data_path("digits.onnx"))
    with np.load(data_path("digits_test.npz")) as z:
        images = z["image"]
    # 450 held-out images in 10 batches of 45: one inference = one batch.
    return m, [{"image": images[i:i + 45]} for i in range(0, len(images), 45)]


def _validation(name: str):
    from validation.fetch import entry, fetch
    from validation.recipes import build_inputs
    p = fetch(name)
    return halfsim.load(str(p)), [build_inputs(entry(name)["recipe"], str(p))]


def bench(label, model, inputs, trials, naive_trials, **kw) -> dict:
    inject(model, inputs, trials=2, seed=99, workers=1, show_progress=False, **kw)  # warm-up (numba, caches)
    # Trials per second exclude the one-off fault-free runs of the inputs (both ways need them
    # for the reference outputs; reported separately as setup seconds).
    fast = inject(model, inputs, trials=trials, seed=0, workers=1, show_progress=False, **kw)
    slow = inject(model, inputs, trials=naive_trials, seed=0, naive=True, show_progress=False, **kw)
    tps, naive_tps = fast.info["trials_per_second"], slow.info["trials_per_second"]
    same = all(a["outcome"] == b["outcome"] and a["node"] == b["node"] for a, b in zip(fast.table, slow.table))
    return {"case": label, "trials": trials, "naive_trials": naive_trials,
            "tps": tps, "naive_tps": naive_tps, "speedup": tps / naive_tps, "setup": fast.info["seconds"] - trials / tps,
            "sdc": fast.rates["sdc_rate"], "same": same}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--naive-trials", type=int, default=200)
    ap.add_argument("--models", default="digits,magika")
    a = ap.parse_args(argv)
    rows = []
    names = a.models.split(",")
    if "digits" in names:
        m, inputs = _digits()
        rows.append(bench("digits, 10x45 images, exponent flips, activations, fp32", m, inputs, a.trials, a.naive_trials))
        rows.append(bench("digits, 10x45 images, any-bit flips, activations, fp16", m, inputs, a.trials, a.naive_trials,
                          field="any", precision="fp16"))
        rows.append(bench("digits, 10x45 images, exponent flips, weights, fp32", m, inputs, a.trials, a.naive_trials,
                          target="weights"))
    for name in names:
        if name == "digits":
            continue
        m, inputs = _validation(name)
        nt = max(10, a.naive_trials // 10)
        rows.append(bench(f"{name}, exponent flips, activations, fp32", m, inputs, max(nt, a.trials // 5), nt))
        rows.append(bench(f"{name}, exponent flips, weights, fp32", m, inputs, max(nt, a.trials // 5), nt, target="weights"))
    print(f"{'case':<58} {'trials/s':>10} {'naive/s':>9} {'speedup':>8} {'SDC':>7} {'same':>5} {'setup s':>8}")
    for r in rows:
        print(f"{r['case']:<58} {r['tps']:>10.1f} {r['naive_tps']:>9.1f} {r['speedup']:>7.1f}x {r['sdc']:>7.3f} "
              f"{str(r['same']):>5} {r['setup']:>8.2f}")
    return 0 if all(r["same"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
