"""Fault-injection throughput: trials per second of `halfsim.inject` (fault-free trace kept,
each trial re-running only the downstream cone of the faulty node, stopping once the fault is
masked) against the naive way (the whole model re-run from scratch for every trial), measured
side by side in one run, serially, on the bundled digits CNN and on magika (a validation model,
fetched into the cache). Both ways must give identical outcomes for the same seed.

"cone bound" is the speedup a perfect cone re-run would reach on these trials: the full-run
time over the mean time of the nodes each trial's cone contains (per-node times from a timed
full run; early stops on masked faults can beat it, per-trial overhead keeps us below it).

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


def node_times(model, feeds, repeats: int = 3) -> dict[int, float]:
    """Seconds per top-level node in a full fp32 run (minimum over a few runs)."""
    best: dict[int, float] = {}
    for _ in range(repeats):
        last = [time.perf_counter()]
        ts: dict[int, float] = {}

        def hook(node, outs):
            t = time.perf_counter()
            if node.index < len(model.nodes) and model.nodes[node.index] is node:
                ts[node.index] = t - last[0]
                last[0] = t
        last[0] = time.perf_counter()
        model.run(feeds, hook=hook)
        for k, v in ts.items():
            best[k] = min(best.get(k, v), v)
    return best


def cone_bound(model, table, times) -> float:
    """The speedup if a trial cost exactly its cone's share of a full run (no early stops, no
    overhead): full-run time over the mean cone time of the trials."""
    g = model.graph
    total = sum(times.values())
    cone_t = []
    for r in table:
        dirty = set(g.consumers.get(r["tensor"], ()))
        cone_t.append(sum(times.get(i, 0.0) for i in g.downstream(dirty)))
    return total / max(np.mean(cone_t), 1e-12)


def bench(label, model, inputs, trials, naive_trials, **kw) -> dict:
    inject(model, inputs, trials=2, seed=99, workers=1, show_progress=False, **kw)  # warm-up (numba, caches)
    # Trials per second exclude the one-off fault-free runs of the inputs (both ways need them
    # for the reference outputs; reported separately as setup seconds).
    fast = inject(model, inputs, trials=trials, seed=0, workers=1, show_progress=False, **kw)
    slow = inject(model, inputs, trials=naive_trials, seed=0, naive=True, show_progress=False,
                  **{k: v for k, v in kw.items() if k != "batch_rows"})
    tps, naive_tps = fast.info["trials_per_second"], slow.info["trials_per_second"]
    bound = cone_bound(model, fast.table, node_times(model, inputs[0]))
    same = all(a["outcome"] == b["outcome"] and a["node"] == b["node"] for a, b in zip(fast.table, slow.table))
    return {"case": label, "trials": trials, "naive_trials": naive_trials,
            "tps": tps, "naive_tps": naive_tps, "speedup": tps / naive_tps, "setup": fast.info["seconds"] - trials / tps,
            "sdc": fast.rates["sdc_rate"], "same": same, "bound": bound}


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
        rows.append(bench("digits, 10x45 images, any-bit flips, act., fp16, batch rows", m, inputs, a.trials,
                          a.naive_trials, field="any", precision="fp16", batch_rows=True))
        rows.append(bench("digits, 10x45 images, exponent flips, weights, fp32", m, inputs, a.trials, a.naive_trials,
                          target="weights"))
    for name in names:
        if name == "digits":
            continue
        m, inputs = _validation(name)
        nt = max(10, a.naive_trials // 10)
        rows.append(bench(f"{name}, exponent flips, activations, fp32", m, inputs, max(nt, a.trials // 5), nt))
        rows.append(bench(f"{name}, exponent flips, weights, fp32", m, inputs, max(nt, a.trials // 5), nt, target="weights"))
    print(f"{'case':<58} {'trials/s':>10} {'naive/s':>9} {'speedup':>8} {'SDC':>7} {'same':>5} {'setup s':>8} {'cone bound':>10}")
    for r in rows:
        print(f"{r['case']:<58} {r['tps']:>10.1f} {r['naive_tps']:>9.1f} {r['speedup']:>7.1f}x {r['sdc']:>7.3f} "
              f"{str(r['same']):>5} {r['setup']:>8.2f} {r['bound']:>9.1f}x")
    return 0 if all(r["same"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
