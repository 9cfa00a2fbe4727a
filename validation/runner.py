"""The real-model agreement suite: for each manifest model, fetch it, build its recipe's inputs,
run ONNX Runtime's CPU EP (default graph optimizations, same thread count as halfsim's numpy)
and halfsim, and report rel L2 per output, the time ratio halfsim/ORT, the ops halfsim lacks,
and for disagreeing models the first diverging node.

    python -m validation.runner [--models a,b] [--json out.json] [--md out.md]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable

import numpy as np
import onnx

import halfsim
from halfsim import metrics
from halfsim.errors import HalfsimError, UnsupportedOpError
from halfsim.ops import registry

from . import fetch, recipes

TOL = 1e-5  # fp32 mode equals ORT CPU fp32 up to summation order


def compute_threads() -> int:
    """The thread count numpy's BLAS (and numba) use here: the env overrides, else the CPUs
    this process may run on."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        v = os.environ.get(var)
        if v and v.isdigit() and int(v) > 0:
            return int(v)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def model_ops(proto: onnx.ModelProto) -> list[tuple[str, str, int]]:
    """Distinct (domain, op_type, opset) used by the model, subgraphs included."""
    opsets = {("" if o.domain in ("", "ai.onnx") else o.domain): o.version for o in proto.opset_import}
    seen: set[tuple[str, str, int]] = set()

    def walk(g: onnx.GraphProto) -> None:
        for n in g.node:
            d = "" if n.domain in ("", "ai.onnx") else n.domain
            seen.add((d, n.op_type, opsets.get(d, 0)))
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
                for sg in a.graphs:
                    walk(sg)
    walk(proto.graph)
    return sorted(seen)


def missing_ops(proto: onnx.ModelProto) -> list[dict[str, Any]]:
    """The model's ops that halfsim's registry cannot resolve at the model's opset."""
    out = []
    for d, op, ver in model_ops(proto):
        try:
            registry.resolve(op, d, ver)
        except UnsupportedOpError as e:
            out.append({"domain": d or "ai.onnx", "op_type": op, "opset": ver, "message": str(e)})
    return out


def _ort_session(path: str, threads: int):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3  # ORT warns about declared output shapes some models get wrong
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def time_runs(fn: Callable[[], Any], runs: int = 5, warmup: int = 1, budget_s: float = 20.0) -> tuple[float, int]:
    """Median seconds of `runs` calls after `warmup` calls; fewer runs (at least 3) when the
    calls would exceed budget_s, more (up to 200) while they total under 0.3 s, so that the
    median of a millisecond model is not one scheduler hiccup on a shared machine."""
    for _ in range(warmup):
        fn()
    ts: list[float] = []
    t_start = time.perf_counter()
    while len(ts) < runs or (len(ts) < 200 and time.perf_counter() - t_start < 0.3):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
        if len(ts) >= 3 and time.perf_counter() - t_start > budget_s:
            break
    return float(np.median(ts)), len(ts)


def validate_model(e: dict[str, Any], *, precision: Any = "fp32", tol: float = TOL, runs: int = 5,
                   threads: int | None = None, timing: bool = True, diverge: bool = True) -> dict[str, Any]:
    """Validate one manifest entry; never raises for model-level problems (they are the result)."""
    threads = threads or compute_threads()
    rec: dict[str, Any] = {k: e[k] for k in ("name", "package", "version", "member", "recipe")}
    oracle = e.get("oracle", "outputs")
    rec.update(status="error", tol=tol, precision=precision if isinstance(precision, str) else "custom", oracle=oracle,
               outputs={}, max_rel_l2=None, ort_ms=None, halfsim_ms=None, ratio=None, runs=None,
               ops=[], missing_ops=[], error=None, divergence=None)
    try:
        path = str(fetch.fetch(e["name"]))
    except fetch.FetchError as ex:
        rec.update(status="fetch-error", error=str(ex), network=ex.network)
        return rec
    proto = onnx.load(path)
    rec["ops"] = [f"{d or 'ai.onnx'}:{op}@{v}" for d, op, v in model_ops(proto)]
    rec["missing_ops"] = missing_ops(proto)
    feeds = recipes.build_inputs(e["recipe"], proto)
    rec["inputs"] = {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in feeds.items()}

    try:
        sess = _ort_session(path, threads)
        names = [o.name for o in sess.get_outputs()]
        ref = dict(zip(names, sess.run(names, feeds)))
    except Exception as ex:
        msg = str(ex).strip().splitlines()
        rec.update(status="ort-error", error=f"onnxruntime: {msg[0] if msg else type(ex).__name__}")
        return rec
    if timing:
        rec["ort_ms"] = 1e3 * time_runs(lambda: sess.run(names, feeds), runs)[0]

    try:
        model = halfsim.load(path)
    except UnsupportedOpError as ex:
        rec.update(status="unsupported", error=str(ex))
        if diverge:
            rec["prefix"] = _prefix_check(proto, feeds, tol, precision, threads)
        return rec
    except HalfsimError as ex:
        rec.update(status="error", error=f"load: {ex}")
        return rec
    try:
        got = model.run(feeds, precision=precision)
    except UnsupportedOpError as ex:
        rec.update(status="unsupported", error=f"run: {ex}")
        return rec
    except HalfsimError as ex:
        rec.update(status="error", error=f"run: {type(ex).__name__}: {ex}")
        if diverge:
            rec["divergence"] = _divergence(proto, feeds, tol, precision, threads)
        return rec
    except Exception as ex:  # a bug in halfsim: report it, keep validating the others
        rec.update(status="error", error=f"run crashed: {type(ex).__name__}: {ex}")
        return rec

    worst = 0.0
    for n in names:
        if n not in got:
            rec["outputs"][n] = {"rel_l2": None, "note": "halfsim did not return it"}
            worst = float("inf")
            continue
        try:
            d = metrics.rel_l2(got[n], ref[n])
            note = "" if got[n].dtype == ref[n].dtype else f"dtype {got[n].dtype} vs ORT {ref[n].dtype}"
        except HalfsimError as ex:
            d, note = float("inf"), str(ex)
        rec["outputs"][n] = {"rel_l2": d, "shape": list(ref[n].shape), "max_abs": _max_abs(got[n], ref[n]), "note": note}
        worst = max(worst, d) if not np.isnan(d) else float("inf")
    rec["max_rel_l2"] = worst
    rec["status"] = "pass" if worst <= tol else "fail"
    if oracle == "nodewise":
        rec["end_to_end_rel_l2"] = worst
        rec["nodewise"] = _nodewise(proto, feeds, tol, precision, threads)
        rec["status"] = "pass" if rec["nodewise"].get("ok") else "fail"
    if timing:
        t, n_runs = time_runs(lambda: model.run(feeds, precision=precision), runs)
        rec["halfsim_ms"], rec["runs"] = 1e3 * t, n_runs
        rec["ratio"] = rec["halfsim_ms"] / rec["ort_ms"] if rec["ort_ms"] else None
    if rec["status"] == "fail" and diverge and oracle == "outputs":
        rec["divergence"] = _divergence(proto, feeds, tol, precision, threads)
    return rec


def _nodewise(proto, feeds, tol, precision, threads) -> dict:
    """Teacher-forced check: each node fed ORT's exact inputs must reproduce ORT's output."""
    from .diverge import layer_drift
    try:
        rows = layer_drift(proto, feeds, precision, threads, forced=True)
    except Exception as ex:
        return {"ok": False, "error": f"{type(ex).__name__}: {ex}"}
    bad = [r for r in rows if not r["rel_l2"] <= tol]
    worst = max(rows, key=lambda r: r["rel_l2"]) if rows else None
    return {"ok": not bad and bool(rows), "nodes": len({r["index"] for r in rows}), "max_rel_l2": worst["rel_l2"] if worst else None,
            "worst_node": f"{worst['node']} ({worst['op_type']})" if worst else None,
            "first_bad": bad[0] if bad else None}


def _prefix_check(proto, feeds, tol, precision, threads) -> dict | None:
    """For a model with missing ops: how the part before them agrees (free-running and
    teacher-forced first divergence)."""
    from .diverge import first_divergence, supported_prefix
    try:
        pre = supported_prefix(proto)
        if pre is None:
            return None
        sub, cut = pre
        return {"nodes": len(sub.graph.node), "of": len(proto.graph.node), "cut_at": cut,
                "first_divergence": first_divergence(sub, feeds, tol, precision, threads),
                "first_wrong_op": first_divergence(sub, feeds, tol, precision, threads, forced=True)}
    except Exception as ex:
        return {"error": f"{type(ex).__name__}: {ex}"}


def _max_abs(a, b) -> float | None:
    try:
        return metrics.max_abs(a, b)
    except Exception:
        return None


def _divergence(proto, feeds, tol, precision, threads) -> dict | None:
    from .diverge import first_divergence
    try:
        return first_divergence(proto, feeds, tol, precision, threads)
    except Exception as ex:
        return {"error": f"divergence search failed: {type(ex).__name__}: {ex}"}


def validate_models(names: list[str] | None = None, *, precision: Any = "fp32", tol: float = TOL,
                    runs: int = 5, timing: bool = True, diverge: bool = True,
                    log: Callable[[str], None] | None = None) -> list[dict]:
    """Validate the manifest models (all, or `names`) and return one record per model:
    name, package, version, member, recipe, status (pass | fail | unsupported | error |
    fetch-error | ort-error), outputs {name: {rel_l2, max_abs, shape}}, max_rel_l2, ort_ms, halfsim_ms,
    ratio, ops, missing_ops [{domain, op_type, opset}], error, divergence."""
    manifest = fetch.load_manifest()
    if names:
        known = {e["name"] for e in manifest}
        bad = [n for n in names if n not in known]
        if bad:
            raise HalfsimError(f"unknown model {bad[0]!r}; the manifest has {', '.join(sorted(known))}")
        manifest = [e for e in manifest if e["name"] in names]
    threads = compute_threads()
    out = []
    for e in manifest:
        if log:
            log(f"[{e['name']}] ...")
        t = time.perf_counter()
        r = validate_model(e, precision=precision, tol=tol, runs=runs, threads=threads,
                           timing=timing, diverge=diverge)
        r["seconds"] = time.perf_counter() - t
        out.append(r)
        if log:
            log(f"[{e['name']}] {r['status']} ({r['seconds']:.1f} s)")
    return out


# ------------------------------------------------------------------ reporting -------------
def _f(x: float | None, fmt: str) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not np.isfinite(x):
        return "inf" if x > 0 else "nan"
    return format(x, fmt)


def _checked(r: dict) -> float | None:
    """The figure the status is decided on: worst output rel L2, or for the node-wise oracle
    the worst teacher-forced node."""
    if r.get("oracle") == "nodewise" and r.get("nodewise"):
        return r["nodewise"].get("max_rel_l2")
    return r["max_rel_l2"]


def _mark(r: dict) -> str:
    return " nw" if r.get("oracle") == "nodewise" else ""


def table(records: list[dict]) -> str:
    head = f"{'model':<18} {'status':<12} {'max rel L2':>10} {'ORT ms':>8} {'halfsim ms':>10} {'ratio':>7}  missing ops"
    lines = [head, "-" * len(head)]
    for r in records:
        miss = ", ".join(f"{m['op_type']}" + (f" ({m['domain']})" if m["domain"] != "ai.onnx" else "")
                         for m in r["missing_ops"]) or "-"
        lines.append(f"{r['name']:<18} {r['status']:<12} {_f(_checked(r), '.2e') + _mark(r):>10} "
                     f"{_f(r['ort_ms'], '.1f'):>8} {_f(r['halfsim_ms'], '.1f'):>10} {_f(r['ratio'], '.2f'):>7}  {miss}")
    if any(r.get("oracle") == "nodewise" for r in records):
        lines.append("nw: node-wise oracle (each node on ORT's exact inputs); end-to-end figures below")
    return "\n".join(lines)


def details(records: list[dict]) -> str:
    lines = []
    for r in records:
        lines.append(f"{r['name']} ({r['package']}=={r['version']}: {r['member']})")
        for n, o in r["outputs"].items():
            lines.append(f"  output {n}: rel L2 {_f(o.get('rel_l2'), '.3e')}, max abs {_f(o.get('max_abs'), '.3e')}"
                         + (f" ({o['note']})" if o.get("note") else ""))
        if r["missing_ops"]:
            lines.append("  missing: " + ", ".join(f"{m['domain']}:{m['op_type']} (opset {m['opset']})" for m in r["missing_ops"]))
        if r["error"]:
            lines.append(f"  error: {r['error']}")
        nw = r.get("nodewise")
        if nw:
            if "error" in nw:
                lines.append(f"  node-wise check failed to run: {nw['error']}")
            else:
                lines.append(f"  node-wise (teacher-forced) check over {nw['nodes']} nodes: max rel L2 {_f(nw['max_rel_l2'], '.2e')} "
                             f"at {nw['worst_node']}; end to end rel L2 {_f(r.get('end_to_end_rel_l2'), '.2e')} (informational)")
                if nw.get("first_bad"):
                    fb = nw["first_bad"]
                    lines.append(f"  first wrong op: {fb['node']} ({fb['op_type']}) rel L2 {_f(fb['rel_l2'], '.2e')} {fb.get('note', '')}")
        p = r.get("prefix")
        if p:
            if "error" in p:
                lines.append(f"  prefix check failed: {p['error']}")
            else:
                fd, fw = p.get("first_divergence"), p.get("first_wrong_op")
                lines.append(f"  the {p['nodes']} of {p['of']} nodes not downstream of {', '.join(p['cut_at'][:3])}: "
                             + ("agree with ORT" if fd is None else
                                f"first divergence at {fd['node']} ({fd['op_type']}) rel L2 {_f(fd['rel_l2'], '.2e')}")
                             + ("" if fd is None else ("; every op agrees on ORT's inputs" if fw is None else
                                f"; first wrong op on ORT's inputs: {fw['node']} ({fw['op_type']})")))
        d = r.get("divergence")
        if d:
            if "node" in d:
                lines.append(f"  first divergence: node {d['node']!r} ({d['op_type']}), output {d.get('output')!r}, "
                             f"rel L2 {_f(d['rel_l2'], '.3e')}" + (f"; {d['error']}" if d.get("error") else "")
                             + (f"; inputs' drift {max(d['input_drift'].values()):.1e}" if d.get("input_drift") else ""))
            else:
                lines.append(f"  {d.get('error')}")
    return "\n".join(lines)


def markdown(records: list[dict]) -> str:
    import onnxruntime as ort
    lines = [f"halfsim {halfsim.__version__} against onnxruntime {ort.__version__} CPU EP, fp32, "
             f"{compute_threads()} threads, tolerance rel L2 <= {TOL:g} on every output.", "",
             "| model | package | status | max rel L2 | ORT ms | halfsim ms | halfsim/ORT | missing ops |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        miss = ", ".join(f"{m['domain']}:{m['op_type']}@{m['opset']}" for m in r["missing_ops"]) or "-"
        lines.append(f"| {r['name']} | {r['package']}=={r['version']} | {r['status']} | {_f(_checked(r), '.2e')}{_mark(r)} "
                     f"| {_f(r['ort_ms'], '.1f')} | {_f(r['halfsim_ms'], '.1f')} | {_f(r['ratio'], '.2f')} | {miss} |")
    for r in records:
        if r.get("oracle") == "nodewise":
            lines.append(f"\n{r['name']}: nw = node-wise oracle: {fetch.entry(r['name']).get('oracle_reason', '')}; "
                         f"end-to-end rel L2 {_f(r.get('end_to_end_rel_l2'), '.2e')}.")
    return "\n".join(lines) + "\n"


def _jsonable(x):
    if isinstance(x, float) and not np.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m validation.runner", description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="comma-separated model names (default: all in the manifest)")
    ap.add_argument("--json", help="write the records as JSON")
    ap.add_argument("--md", help="write the table as Markdown")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per backend (median; default 5)")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--no-diverge", action="store_true", help="skip the first-divergence search on failures")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()] if args.models else None
    try:
        recs = validate_models(names, runs=args.runs, timing=not args.no_timing, diverge=not args.no_diverge,
                               log=lambda s: print(s, file=sys.stderr, flush=True))
    except HalfsimError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(recs))
    print()
    print(details(recs))
    if args.json:
        import onnxruntime as ort
        with open(args.json, "w") as f:
            json.dump(_jsonable({"version": 1, "halfsim": halfsim.__version__, "onnxruntime": ort.__version__,
                                 "threads": compute_threads(), "tol": TOL, "models": recs}), f, indent=1)
    if args.md:
        with open(args.md, "w") as f:
            f.write(markdown(recs))
    return 0 if all(r["status"] == "pass" for r in recs) else 1


if __name__ == "__main__":
    sys.exit(main())
