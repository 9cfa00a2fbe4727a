"""halfsim bisect against onnxconverter-common's auto_convert_mixed_precision, side by side.

For every validation model: the time and number of evaluations of each search, how many nodes
each keeps in fp32, and how far each accepted placement drifts from the fp32 model (rel L2,
max over outputs) when run by ORT's CPU EP (which computes fp16 nodes in fp32) and by halfsim's
true fp16 execution of the written model. auto_convert_mixed_precision is given rtol=1e-2
(its own np.allclose check on ORT); halfsim bisect is given rel_l2 <= 1e-2 on halfsim fp16.

    PYTHONPATH=. python benchmarks/bench_bisect.py [--models dtln_model_2,magika,rapidocr_det] [--tol 1e-2]
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import io
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("HALFSIM_QUIET", "1")

import halfsim  # noqa: E402
from halfsim.backends import ort  # noqa: E402
from halfsim.metrics import rel_l2  # noqa: E402

CROPS = {"rapidocr_det": {"x": (slice(None), slice(None), slice(0, 64), slice(0, 128))}}


def _feeds(name):
    from validation.fetch import entry, fetch
    from validation.recipes import build_inputs
    path = str(fetch(name))
    feeds = build_inputs(entry(name)["recipe"], path)
    for k, sl in CROPS.get(name, {}).items():  # smaller inputs keep the runs short on 2 cores
        feeds[k] = np.ascontiguousarray(feeds[k][sl])
    return path, feeds


def _drift(outs, ref):
    return max(rel_l2(outs[k], ref[k]) for k in ref if np.asarray(ref[k]).dtype.kind == "f")


def _line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return f"{type(e).__name__}: {s[0][:110] if s else ''}"


def run_halfsim(path, feeds, ref, tol, out):
    m = halfsim.load(path)
    t = time.perf_counter()
    res = halfsim.bisect(m, feeds, precision="fp16", metric="rel_l2", tol=tol, export=out)
    sec = time.perf_counter() - t
    v = res.verified
    return {"tool": "halfsim bisect", "seconds": sec, "evaluations": res.evaluations, "kept": len(res.keep_fp32),
            "ort": _drift(ort.run(res.export(), feeds), ref),
            "halfsim_fp16": float(v["halfsim_achieved"]), "status": f"ok (baseline {res.baseline:.3g}, 1-minimal {res.minimal})"}


def run_amp(path, feeds, ref, tol):
    import onnx
    from onnxconverter_common import auto_mixed_precision as amp
    proto = onnx.load(path)
    calls = [0]
    orig = amp.get_tensor_values_using_ort

    def counted(*a, **k):
        calls[0] += 1
        return orig(*a, **k)
    amp.get_tensor_values_using_ort = counted
    t = time.perf_counter()
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            out = amp.auto_convert_mixed_precision(proto, feeds, rtol=tol, keep_io_types=True)
    except Exception as e:
        return {"tool": "auto_convert_mixed_precision", "seconds": time.perf_counter() - t, "evaluations": calls[0],
                "kept": None, "ort": None, "halfsim_fp16": None, "status": "fails: " + _line(e)}
    finally:
        amp.get_tensor_values_using_ort = orig
    sec = time.perf_counter() - t
    # It prints the block list of every attempt; the last one is the placement it returns.
    lists = [ln for ln in log.getvalue().splitlines() if ln.startswith("[")]
    kept = len(ast.literal_eval(lists[-1])) if lists else None
    row = {"tool": "auto_convert_mixed_precision", "seconds": sec, "evaluations": calls[0], "kept": kept}
    try:
        row["ort"] = _drift(ort.run(out, feeds), ref)
    except Exception as e:
        row["ort"], row["status"] = None, "its model fails in ORT: " + _line(e)
        row["halfsim_fp16"] = None
        return row
    try:
        row["halfsim_fp16"] = _drift(halfsim.load(out).run(feeds), ref)
        row["status"] = "ok" if row["halfsim_fp16"] <= tol else "accepted, but drifts in true fp16"
    except Exception as e:
        row["halfsim_fp16"], row["status"] = None, "halfsim cannot run its model: " + _line(e)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="dtln_model_2,magika,rapidocr_det")
    ap.add_argument("--tol", type=float, default=1e-2)
    args = ap.parse_args(argv)
    import warnings

    import onnxruntime
    warnings.filterwarnings("ignore")  # onnxconverter-common warns once per truncated constant
    onnxruntime.set_default_logger_severity(3)
    rows = []
    tmp = tempfile.mkdtemp()
    for name in args.models.split(","):
        try:
            path, feeds = _feeds(name)
        except Exception as e:
            print(f"{name}: cannot fetch ({_line(e)})", file=sys.stderr)
            continue
        ref = ort.run(__import__("onnx").load(path), feeds)
        for fn in (lambda: run_halfsim(path, feeds, ref, args.tol, os.path.join(tmp, name + ".onnx")),
                   lambda: run_amp(path, feeds, ref, args.tol)):
            try:
                r = fn()
            except Exception as e:
                r = {"tool": "halfsim bisect", "seconds": None, "evaluations": None, "kept": None, "ort": None,
                     "halfsim_fp16": None, "status": "fails: " + _line(e)}
            r["model"] = name
            rows.append(r)
            print(_fmt(r), flush=True)
    print()
    print(f"tolerance {args.tol:g}: rel L2 (max over outputs) against ORT fp32 of the original model")
    print(_head())
    for r in rows:
        print(_fmt(r))
    return 0


def _head() -> str:
    return (f"{'model':<14} {'tool':<29} {'seconds':>8} {'evals':>6} {'kept':>5} {'ORT drift':>10} "
            f"{'fp16 drift':>10}  status")


def _fmt(r) -> str:
    def f(v, spec):
        return format(v, spec) if isinstance(v, (int, float)) else format("-", spec.rstrip("defg.0123456789") or ">")
    return (f"{r['model']:<14} {r['tool']:<29} {f(r['seconds'], '>8.1f')} {f(r['evaluations'], '>6d')} "
            f"{f(r['kept'], '>5d')} {f(r['ort'], '>10.3g')} {f(r['halfsim_fp16'], '>10.3g')}  {r['status']}")


if __name__ == "__main__":
    raise SystemExit(main())
