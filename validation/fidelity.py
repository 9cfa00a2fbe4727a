"""Fidelity of halfsim's precision presets on the real models, against independent executions.

- fp16: ORT running the model rewritten with Cast(float16) -> Cast(float) after every float node
  output (If/Loop/Scan bodies too), weights (initializers and Constant nodes) rounded
  saturating and inputs rounded, graph optimizations off (halfsim.backends.ort.cast_rewrite;
  where ORT's fp32 function differs from halfsim's, Sigmoid and LSTM gates, the oracle computes
  halfsim's). fidelity = ||halfsim - oracle|| / ||fp32 - oracle|| per output: 0 is bit-exact,
  1 means no better than ignoring precision altogether. A 1-ulp fp32 difference (another
  summation order) flips the fp16 rounding of ~1 value in 8000 and a model may amplify it: the
  noise floor printed beside it is what that alone does to halfsim's own fp16 outputs.
- ort-cpu-fp16: ORT CPU running onnxconverter-common's fp16 model (keep_io_types=False); rel L2.

Run: PYTHONPATH=. python -m validation.fidelity [--models a,b] [--json F] [--first-departure]"""
from __future__ import annotations

import argparse
import json
import sys
import warnings

import numpy as np
import onnx

import halfsim
from halfsim import metrics
from halfsim.backends import ort as ortb

from . import fetch, recipes


def _round_inputs(feeds: dict, np_dtype) -> dict:
    return {k: (v.astype(np_dtype).astype(np.float32) if v.dtype == np.float32 else v) for k, v in feeds.items()}


class _NoisyGemmPlan:
    """halfsim's fp16 plan with every GEMM result moved by up to one float32 ulp: what another
    fp32 summation order (ORT's MLAS instead of OpenBLAS) does. How far that alone moves the
    outputs is the floor under any fidelity figure against an independent runtime. The plan is
    never `plain`, so that every GEMM goes through its matmul (ops take their own BLAS or fused
    paths for plain fp32 nodes: the LSTM's gate products did, which left dtln's floor at 0)."""

    def __new__(cls, model, seed: int = 0):
        from halfsim.policy import preset
        from halfsim.precision import PrecisionPlan
        rng = np.random.default_rng(seed)

        class Plan(PrecisionPlan):
            def plain(self, ctx) -> bool:
                return False

            def matmul(self, ctx, a, b):
                y = super().matmul(ctx, a, b)
                if y.dtype == np.float32:
                    y = np.nextafter(y, np.where(rng.random(y.shape) < 0.5, -np.inf, np.inf).astype(np.float32))
                return y
        return Plan(preset("fp16"), model)


def fp16_fidelity(proto: onnx.ModelProto, model, feeds: dict) -> dict[str, dict]:
    pred = model.run(feeds, precision="fp16")
    noisy = model.run(feeds, precision=_NoisyGemmPlan(model))
    fp32 = model.run(feeds)
    oracle = ortb.run(ortb.cast_rewrite(proto, "fp16"), _round_inputs(feeds, np.float16), optimize=False)
    out = {}
    for name in model.outputs:
        p, r, o = (np.asarray(pred[name], np.float64), np.asarray(fp32[name], np.float64),
                   np.asarray(oracle[name], np.float64))
        if p.dtype.kind != "f" or o.size == 0:
            continue
        ok = np.isfinite(p) & np.isfinite(o) & np.isfinite(r)
        # An inf or NaN where the other has another value is a disagreement no norm measures:
        # fidelity is then inf, not the norm over the finite rest.
        special = ~(np.isfinite(p) & np.isfinite(o))
        odd = int(np.count_nonzero(special & ~((p == o) | (np.isnan(p) & np.isnan(o)))))
        num = float(np.linalg.norm(p[ok] - o[ok])) if not odd else float("inf")
        den = float(np.linalg.norm(r[ok] - o[ok]))
        n = np.asarray(noisy[name], np.float64)
        ok2 = np.isfinite(n) & np.isfinite(p) & np.isfinite(r)
        den2 = float(np.linalg.norm(r[ok2] - p[ok2]))
        floor = float(np.linalg.norm(n[ok2] - p[ok2])) / den2 if den2 > 0 else 0.0
        out[name] = {"fidelity": (num / den) if den > 0 else (0.0 if num == 0 else float("inf")),
                     "noise_floor": floor,
                     "halfsim_vs_oracle": metrics.rel_l2(pred[name], oracle[name]),
                     "fp32_vs_oracle": metrics.rel_l2(fp32[name], oracle[name]),
                     "nonfinite_mismatch": odd,
                     "nonfinite_halfsim": int(np.count_nonzero(~np.isfinite(p))),
                     "nonfinite_oracle": int(np.count_nonzero(~np.isfinite(o)))}
    return out


def _first_departure(proto: onnx.ModelProto, feeds: dict) -> dict | None:
    """The first node whose fp16 output is not bit-equal to the oracle's (validation.diverge)."""
    from .diverge import first_divergence, oracle_intermediates
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return first_divergence(proto, feeds, 0.0, "fp16", reference=oracle_intermediates(proto, feeds))


def ort_cpu_fp16_agreement(proto: onnx.ModelProto, model, feeds: dict) -> dict[str, float]:
    from onnxconverter_common import float16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m16 = float16.convert_float_to_float16(proto, keep_io_types=False)
    f16 = {k: (v.astype(np.float16) if v.dtype == np.float32 else v) for k, v in feeds.items()}
    want = ortb.run(m16, f16)
    pred = model.run(feeds, precision="ort-cpu-fp16")
    return {k: metrics.rel_l2(pred[k], np.asarray(want[k], np.float32)) for k in model.outputs
            if np.asarray(pred[k]).dtype.kind == "f"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m validation.fidelity")
    ap.add_argument("--models")
    ap.add_argument("--json")
    ap.add_argument("--first-departure", action="store_true",
                    help="also name the first node (topological order) whose fp16 output differs from the oracle's")
    args = ap.parse_args(argv)
    manifest = fetch.load_manifest()
    names = args.models.split(",") if args.models else [e["name"] for e in manifest]
    rows = []
    for e in manifest:
        if e["name"] not in names:
            continue
        rec = {"name": e["name"]}
        try:
            path = str(fetch.fetch(e["name"]))
            proto = onnx.load(path)
            feeds = recipes.build_inputs(e["recipe"], proto)
            model = halfsim.load(path)
            rec["fp16"] = fp16_fidelity(proto, model, feeds)
            if args.first_departure:
                rec["first_departure"] = _first_departure(proto, feeds)
            try:
                rec["ort_cpu_fp16"] = ort_cpu_fp16_agreement(proto, model, feeds)
            except Exception as ex:  # the converter's output does not load in ORT for some models
                rec["ort_cpu_fp16_error"] = str(ex).splitlines()[0][:160]
        except Exception as ex:
            rec["error"] = f"{type(ex).__name__}: {str(ex).splitlines()[0][:160] if str(ex) else ''}"
        rows.append(rec)
        fid = max((v["fidelity"] for v in rec.get("fp16", {}).values()), default=float("nan"))
        floor = max((v["noise_floor"] for v in rec.get("fp16", {}).values()), default=float("nan"))
        agree = max(rec.get("ort_cpu_fp16", {}).values(), default=float("nan"))
        nonfinite = [f"{k}: nonfinite halfsim {v['nonfinite_halfsim']} oracle {v['nonfinite_oracle']}"
                     for k, v in rec.get("fp16", {}).items() if v["nonfinite_halfsim"] != v["nonfinite_oracle"]]
        print(f"{e['name']:<18} fp16 fidelity {fid:9.3g} (1-ulp GEMM noise floor {floor:9.3g})   ort-cpu-fp16 rel L2 {agree:9.3g}  "
              f"{rec.get('error', '') or rec.get('ort_cpu_fp16_error', '')}{'; '.join(nonfinite)}", flush=True)
        d = rec.get("first_departure")
        if d:
            print(f"{'':<18} first departure: node {d['index']} {d['op_type']} {d['node']!r} output {d['output']!r} "
                  f"rel L2 {d['rel_l2']:.3g} {d.get('note') or ''}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
