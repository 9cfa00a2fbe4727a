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


def oracle_intermediates(proto: onnx.ModelProto, feeds: Mapping[str, np.ndarray], fmt: str = "fp16",
                         threads: int | None = None) -> dict[str, np.ndarray]:
    """Every main-graph tensor of the Cast-rewrite oracle (halfsim.backends.ort.cast_rewrite):
    ORT on the model with each float node output rounded to `fmt`, weights and float inputs
    rounded, graph optimizations off; tensors under their original names (the rounded values).
    Constant nodes are left out: they are weights, which halfsim rounds where they are read."""
    from halfsim.backends.ort import cast_rewrite
    low = np.float16 if fmt == "fp16" else __import__("ml_dtypes").bfloat16
    rounded = {k: (v.astype(low).astype(np.float32) if v.dtype == np.float32 else v) for k, v in feeds.items()}
    ref = ort_intermediates(cast_rewrite(proto, fmt), rounded, threads)
    consts = {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    return {k: v for k, v in ref.items() if not k.endswith(("__raw", "__low")) and k not in consts}


def layer_drift(model: Any, feeds: Mapping[str, np.ndarray], precision: Any = "fp32",
                threads: int | None = None, stop_at_first: float | None = None,
                hook: Callable | None = None, forced: bool = False,
                reference: Mapping[str, np.ndarray] | None = None) -> list[dict]:
    """One row per halfsim node output that ORT also exposes, in topological order:
    {"index","node","op_type","output","rel_l2","shape","note"}. If halfsim fails at a node, the
    last row has "error". With stop_at_first=tol the list ends at the first row above tol.
    `hook(node, outputs)` (halfsim's run hook) may replace a node's outputs before they are
    compared and passed on, e.g. to inject a fault.

    forced=True (teacher forcing): after each node is compared, ORT's value replaces halfsim's,
    so every node computes from exactly ORT's inputs and each row measures that op alone.
    This separates a wrong op from legitimate last-bit differences that a model amplifies
    (a dynamically quantized model flips a uint8 rounding on a 1e-7 input difference).
    `reference`: the tensors to compare against instead of ORT's (e.g. oracle_intermediates)."""
    proto = _proto(model)
    ref = ort_intermediates(proto, feeds, threads) if reference is None else reference
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
        if forced:
            outs = [ref[n] if n in ref and isinstance(o, np.ndarray) else o for n, o in zip(node.outputs, outs)]
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
                     hook: Callable | None = None, forced: bool = False,
                     reference: Mapping[str, np.ndarray] | None = None) -> dict | None:
    """The first node (topological order) whose output differs from ORT's by more than `tol`
    rel L2 (or where halfsim raised), with the worst drift among its inputs for context;
    None when every exposed tensor agrees. forced=True: the first op that is wrong on its
    own, given ORT's exact inputs (see layer_drift)."""
    rows = layer_drift(model, feeds, precision, threads, stop_at_first=tol, hook=hook, forced=forced,
                       reference=reference)
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
    ap.add_argument("--forced", action="store_true", help="teacher forcing: each node computes from ORT's inputs")
    ap.add_argument("--oracle", choices=("fp16", "bf16"),
                    help="halfsim under this preset against the Cast-rewrite oracle (validation.fidelity) instead of fp32 against ORT")
    args = ap.parse_args(argv)
    e = fetch.entry(args.name)
    path = fetch.fetch(args.name)
    proto = onnx.load(str(path))
    feeds = recipes.build_inputs(e["recipe"], proto)
    pre = supported_prefix(proto)
    if pre is not None:
        proto = pre[0]
        print(f"halfsim lacks the ops of {pre[1]}: checking the {len(proto.graph.node)} nodes before them")
    prec, ref = "fp32", None
    if args.oracle:
        prec, ref = args.oracle, oracle_intermediates(proto, feeds, args.oracle)
    if args.all:
        for r in layer_drift(proto, feeds, prec, forced=args.forced, reference=ref):
            print(f"{r['index']!s:>5} {r['op_type']:<22} {r['node'][:40]:<40} {r['rel_l2']:.3e} {r.get('error') or r.get('note') or ''}")
        return 0
    d = first_divergence(proto, feeds, args.tol, prec, forced=args.forced, reference=ref)
    print("no divergence" if d is None else d)
    return 0



def supported_prefix(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]] | None:
    """The part of the main graph that halfsim can run: every node not downstream of a node
    whose op halfsim lacks, with the tensors those unsupported nodes read (and the original
    outputs still computed) as the graph outputs. Returns (model, unsupported node names), or
    None when nothing is missing. Lets a model be checked up to its first missing op."""
    from halfsim.errors import UnsupportedOpError
    from halfsim.ops import registry
    opsets = {("" if o.domain in ("", "ai.onnx") else o.domain): o.version for o in proto.opset_import}

    def ok(n: onnx.NodeProto) -> bool:
        d = "" if n.domain in ("", "ai.onnx") else n.domain
        try:
            registry.resolve(n.op_type, d, opsets.get(d, 0))
        except UnsupportedOpError:
            return False
        for a in n.attribute:
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                if not all(ok(x) for x in g.node):
                    return False
        return True

    bad_nodes = [n for n in proto.graph.node if not ok(n)]
    if not bad_nodes:
        return None
    tainted: set[str] = set()
    keep: list[onnx.NodeProto] = []
    cut_inputs: list[str] = []
    bad_ids = {id(n) for n in bad_nodes}
    for n in _topo(proto.graph):
        reads = [t for t in n.input if t]
        if id(n) in bad_ids or any(t in tainted for t in reads):
            tainted.update(o for o in n.output if o)
            if id(n) in bad_ids:
                cut_inputs.extend(t for t in reads if t not in tainted)
            continue
        keep.append(n)
    produced = {o for n in keep for o in n.output}
    outs = []
    for t in [o.name for o in proto.graph.output] + cut_inputs:
        if t in produced and t not in outs:
            outs.append(t)
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    del m.graph.node[:]
    m.graph.node.extend(keep)
    del m.graph.output[:]
    m.graph.output.extend(onnx.ValueInfoProto(name=t) for t in outs)
    used = {t for n in keep for t in n.input} | {t for n in keep for a in n.attribute
                                                   for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs))
                                                   for t in _free_names(g)}
    inits = [t for t in m.graph.initializer if t.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(inits)
    return m, [n.name or n.op_type for n in bad_nodes]


def _free_names(g: onnx.GraphProto) -> set[str]:
    defined = {t.name for t in g.initializer} | {v.name for v in g.input} | {o for n in g.node for o in n.output}
    free = {t for n in g.node for t in n.input if t and t not in defined}
    for n in g.node:
        for a in n.attribute:
            for sg in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                free |= _free_names(sg) - defined
    return free


def _topo(g: onnx.GraphProto) -> list[onnx.NodeProto]:
    avail = {t.name for t in g.initializer} | {v.name for v in g.input}
    produced = {o for n in g.node for o in n.output if o}
    pending, order = list(g.node), []
    while pending:
        rest = []
        for n in pending:
            if all(t in avail or t not in produced for t in n.input if t):
                order.append(n)
                avail.update(o for o in n.output if o)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            order.extend(rest)
            break
        pending = rest
    return order


if __name__ == "__main__":
    import sys
    sys.exit(main())
