"""Find where halfsim and ONNX Runtime part ways on a model: run ORT with every node output of
the main graph exposed as a graph output (graph optimizations off, so every original tensor
exists), run halfsim recording every node's outputs, and compare node by node in halfsim's
topological order. The first node whose output differs beyond `tol` is the first divergence;
if halfsim raises at some node, that node is reported with the error.

    from validation.diverge import first_divergence, layer_drift
    d = first_divergence("model.onnx", feeds)          # None when everything agrees
    rows = layer_drift("model.onnx", feeds)             # every node, in order
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import numpy as np
import onnx

import halfsim
from halfsim import metrics


def _proto(model: Any) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    return onnx.load(os.fspath(model))


def ort_intermediates(proto: onnx.ModelProto, feeds: Mapping[str, np.ndarray],
                      threads: int | None = None) -> dict[str, np.ndarray]:
    """Every main-graph tensor ORT computes (graph optimizations disabled)."""
    import onnxruntime as ort
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    have = {o.name for o in m.graph.output}
    for n in m.graph.node:
        for t in n.output:
            if t and t not in have:
                m.graph.output.append(onnx.ValueInfoProto(name=t))
                have.add(t)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    want = {i.name for i in sess.get_inputs()}
    return dict(zip(names, sess.run(names, {k: v for k, v in feeds.items() if k in want})))


def _distance(a: Any, b: np.ndarray) -> tuple[float, str]:
    """(rel L2, note) of halfsim's `a` against ORT's `b`; exact comparison for non-floats."""
    if a is None:
        return float("inf"), "halfsim produced nothing"
    if not isinstance(a, np.ndarray):
        return 0.0, "not a tensor (sequence); skipped"
    if a.shape != b.shape:
        return float("inf"), f"shape {list(a.shape)} vs ORT {list(b.shape)}"
    if a.dtype != b.dtype:
        note = f"dtype {a.dtype} vs ORT {b.dtype}"
    else:
        note = ""
    if b.dtype.kind in "fc":
        return metrics.rel_l2(a, b), note
    if b.dtype.kind == "b" or a.dtype.kind == "b":
        diff = int(np.count_nonzero(a.astype(bool) != b.astype(bool)))
    else:
        diff = int(np.count_nonzero(a != b))
    return (0.0 if diff == 0 else float("inf")), (note or (f"{diff} of {b.size} elements differ" if diff else ""))


def layer_drift(model: Any, feeds: Mapping[str, np.ndarray], precision: Any = "fp32",
                threads: int | None = None, stop_at_first: float | None = None,
                hook: Callable | None = None) -> list[dict]:
    """One row per halfsim node output that ORT also exposes, in topological order:
    {"index","node","op_type","output","rel_l2","shape","note"}. If halfsim fails at a node, the
    last row has "error". With stop_at_first=tol the list ends at the first row above tol.
    `hook(node, outputs)` (halfsim's run hook) may replace a node's outputs before they are
    compared and passed on, e.g. to inject a fault."""
    proto = _proto(model)
    ref = ort_intermediates(proto, feeds, threads)
    m = halfsim.load(proto)
    rows: list[dict] = []

    class _Stop(Exception):
        pass

    def record(node, outs):
        if hook is not None:
            new = hook(node, outs)
            if new is not None:
                outs = list(new)
        for name, val in zip(node.outputs, outs):
            if not name or name not in ref:
                continue
            d, note = _distance(val, ref[name])
            rows.append({"index": node.index, "node": node.label, "op_type": node.op_type,
                         "domain": node.domain or "ai.onnx", "output": name, "rel_l2": d,
                         "shape": list(ref[name].shape), "note": note})
            if stop_at_first is not None and not d <= stop_at_first:
                raise _Stop
        return outs

    try:
        m.run(feeds, precision=precision, hook=record)
    except _Stop:
        pass
    except Exception as e:  # report where halfsim broke, with what came before
        failed = _failing_node(m, rows)
        rows.append({"index": failed.index if failed else None, "node": failed.label if failed else "?",
                     "op_type": failed.op_type if failed else "?", "output": None,
                     "rel_l2": float("inf"), "error": f"{type(e).__name__}: {e}"})
    return rows


def _failing_node(m, rows):
    done = {r["index"] for r in rows}
    last = max(done) if done else -1
    for n in m.nodes:
        if n.index > last:
            return n
    return None


def first_divergence(model: Any, feeds: Mapping[str, np.ndarray], tol: float = 1e-5,
                     precision: Any = "fp32", threads: int | None = None,
                     hook: Callable | None = None) -> dict | None:
    """The first node (topological order) whose output differs from ORT's by more than `tol`
    rel L2 (or where halfsim raised), with the worst drift among its inputs for context;
    None when every exposed tensor agrees."""
    rows = layer_drift(model, feeds, precision, threads, stop_at_first=tol, hook=hook)
    if not rows:
        return None
    last = rows[-1]
    if last["rel_l2"] <= tol and "error" not in last:
        return None
    proto = _proto(model)
    node_inputs = _inputs_of(proto, last["output"]) if last.get("output") else []
    seen = {r["output"]: r["rel_l2"] for r in rows[:-1]}
    last = dict(last)
    last["input_drift"] = {t: seen[t] for t in node_inputs if t in seen}
    return last


def _inputs_of(proto: onnx.ModelProto, output: str) -> list[str]:
    for n in proto.graph.node:
        if output in n.output:
            return [t for t in n.input if t]
    return []


def main(argv: list[str] | None = None) -> int:
    import argparse
    from . import fetch, recipes
    ap = argparse.ArgumentParser(description="Per-node drift of halfsim against ORT on a manifest model.")
    ap.add_argument("name")
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--all", action="store_true", help="print every node, not just the first divergence")
    args = ap.parse_args(argv)
    e = fetch.entry(args.name)
    path = fetch.fetch(args.name)
    proto = onnx.load(str(path))
    feeds = recipes.build_inputs(e["recipe"], proto)
    if args.all:
        for r in layer_drift(proto, feeds):
            print(f"{r['index']!s:>5} {r['op_type']:<22} {r['node'][:40]:<40} {r['rel_l2']:.3e} {r.get('error') or r.get('note') or ''}")
        return 0
    d = first_divergence(proto, feeds, args.tol)
    print("no divergence" if d is None else d)
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main())
