"""`halfsim demo`: the bundled digits model (trained by tools/train_demo.py on scikit-learn's
digits) run in fp32, fp16, bf16 and fp8 on its held-out split, with a per-layer HTML report."""
from __future__ import annotations

import os
import sys
import time
from importlib import resources

import numpy as np

PRESETS = ("fp32", "fp16", "bf16", "fp8-e4m3", "fp8-e5m2")


def data_path(name: str) -> str:
    return str(resources.files("halfsim") / "data" / name)


def run_demo(html_path: str = "halfsim-demo.html", out=sys.stdout) -> dict:
    from . import load, metrics
    from .backends import ort
    from .compare import compare
    from .progress import progress
    from .report import write_compare_html

    t0 = time.perf_counter()
    model = load(data_path("digits.onnx"))
    with np.load(data_path("digits_test.npz")) as z:
        images, labels = z["image"], z["label"]
    feeds = {"image": images}
    ref = ort.run(model.proto, feeds)["probs"]
    rows = []
    base = None
    for name in progress(PRESETS, desc="demo presets"):
        res = model.run(feeds, precision=name)
        p = res["probs"]
        if base is None:
            base = p
        rows.append({"precision": name, "accuracy": float(np.mean(p.argmax(1) == labels)),
                     "rel_l2_vs_fp32": metrics.rel_l2(p, base), "top1_flips": int(np.sum(p.argmax(1) != base.argmax(1))),
                     "events": len(res.events)})
    print(f"halfsim demo: digits CNN (Conv, BatchNorm folded, LayerNorm, GELU, Softmax), "
          f"{len(labels)} held-out images", file=out)
    print(f"halfsim fp32 against onnxruntime fp32: rel L2 {metrics.rel_l2(base, ref):.2e}, "
          f"ORT accuracy {np.mean(ref.argmax(1) == labels):.4f}", file=out)
    print(f"{'precision':<10} {'accuracy':>9} {'rel L2 vs fp32':>15} {'top-1 flips':>12} {'events':>7}", file=out)
    for r in rows:
        print(f"{r['precision']:<10} {r['accuracy']:>9.4f} {r['rel_l2_vs_fp32']:>15.3e} {r['top1_flips']:>12d} "
              f"{r['events']:>7d}", file=out)
    worst = max(rows[1:], key=lambda r: r["rel_l2_vs_fp32"])["precision"]
    report = compare(model, feeds, precision=worst, against="halfsim:fp32", per_layer=True)
    cand = model.run(feeds, precision=worst)
    table = "".join(f"<tr><td>{r['precision']}</td><td>{r['accuracy']:.4f}</td><td>{r['rel_l2_vs_fp32']:.3e}</td>"
                    f"<td>{r['top1_flips']}</td></tr>" for r in rows)
    extra = ("<h2>Held-out accuracy by precision</h2><table><tr><th>precision</th><th>accuracy</th>"
             f"<th>rel L2 vs fp32</th><th>top-1 flips</th></tr>{table}</table>")
    write_compare_html(report, html_path, samples={"probs": (cand["probs"], base)}, events=cand.events, extra=extra)
    print(f"per-layer report for {worst} (the largest drift): {os.path.abspath(html_path)}", file=out)
    print(f"done in {time.perf_counter() - t0:.1f} s", file=out)
    return {"rows": rows, "report": report}
