"""The `halfsim` command line. Every user error becomes one line on stderr and exit code 2;
a check that fails (a tolerance not met) exits with 1."""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from .errors import CheckFailed, HalfsimError


def _add_input_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="ONNX model file, or a CoreML ML program (.mlpackage/.mlmodel)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--inputs", metavar="X.npz", help="inputs; keys are graph input names")
    g.add_argument("--seed", type=int, default=None, help="random inputs from this seed (default 0)")
    p.add_argument("--shape", action="append", metavar="NAME=d0,d1,..", help="shape of a random input (dynamic dims)")


def _add_precision_opts(p: argparse.ArgumentParser, default: str) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--precision", default=None, metavar="SPEC", help=f"preset name (default {default})")
    g.add_argument("--policy", metavar="FILE", help="precision policy file (TOML or JSON)")


def _precision(args, default: str):
    if getattr(args, "policy", None):
        from .policy import Policy
        return Policy.load(args.policy)
    return args.precision or default


def _load(args):
    from . import load
    from .inputs import load_npz, parse_shapes, random_feeds
    model = load(args.model)
    if args.inputs:
        if args.shape:
            raise HalfsimError("--shape applies to random inputs, not to --inputs")
        feeds = load_npz(args.inputs)
    else:
        feeds = random_feeds(model, args.seed or 0, parse_shapes(args.shape))
    return model, feeds


def _write_json(path: str, obj) -> None:
    try:
        with open(path, "w") as f:
            json.dump(obj, f, indent=2, default=_json_default)
            f.write("\n")
    except OSError as e:
        raise HalfsimError(f"cannot write {path}: {e.strerror}") from None


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)


def cmd_run(args) -> int:
    model, feeds = _load(args)
    res = model.run(feeds, precision=_precision(args, "fp32"))
    out = args.output
    try:
        np.savez(out, **{k: v for k, v in res.items()})
    except OSError as e:
        raise HalfsimError(f"cannot write {out}: {e.strerror}") from None
    for k, v in res.items():
        if isinstance(v, np.ndarray):
            print(f"{k}: {v.dtype}{list(v.shape)}")
    return 0


def cmd_compare(args) -> int:
    from .compare import check_backend, compare_run, format_table
    check_backend(args.against)
    for path in (args.html, args.json):  # fail before any work is done
        if path:
            _check_writable(path)
    model, feeds = _load(args)
    report, cand, ref, events = compare_run(model, feeds, precision=_precision(args, "fp32"), against=args.against,
                                            per_layer=args.per_layer or bool(args.html))
    format_table(report)
    if args.json:
        # Per-layer records go into the JSON only when asked for (--html computes them anyway).
        drop = () if args.per_layer else ("layers", "first_jump")
        _write_json(args.json, {k: v for k, v in report.items() if k not in drop})
    if args.html:
        from .report import write_compare_html
        samples = {k: (cand[k], ref[k]) for k in model.outputs
                   if isinstance(cand.get(k), np.ndarray) and cand[k].dtype.kind == "f"}
        write_compare_html(report, args.html, samples=samples, events=events)
    return 0


def _check_writable(path: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d) or not os.access(d, os.W_OK):
        raise HalfsimError(f"cannot write {path}: directory {d} does not exist or is not writable")


def cmd_bisect(args) -> int:
    from .bisect import bisect, write_html
    from .metrics import METRICS
    if args.metric not in METRICS:
        raise HalfsimError(f"unknown metric {args.metric!r} (choose from {', '.join(METRICS)})")
    for p in (args.json, args.html, args.export):
        if p:
            _check_writable(p)
    model, feeds = _load(args)
    res = bisect(model, feeds, precision=_precision(args, "fp16"), metric=args.metric, tol=args.tol,
                 reference=args.reference, max_evaluations=args.max_evaluations, export=args.export)
    print(f"bisect {res.precision}: {res.metric} {res.baseline:.3g} with nothing kept -> {res.achieved:.3g} "
          f"keeping {len(res.keep_fp32)} node(s) in fp32 (tol {res.tol:g}); {res.evaluations} evaluations, "
          f"{res.seconds:.1f} s, 1-minimal: {res.minimal}")
    for name in res.keep_fp32:
        print(f"  keep fp32: {name}")
    for note in res.notes:
        print(f"  note: {note}")
    print("top nodes by impact (drift alone / drift recovered):")
    for r in res.attribution[:10]:
        print(f"  {r['node']:<40} {r['op_type']:<20} {r['drift_alone']:>10.3g} {r['drift_recovered']:>10.3g}")
    if res.verified is not None:
        v = res.verified
        print(f"exported {args.export}: halfsim fp16 {v['halfsim_achieved']}, ORT {v.get('achieved')}")
    if args.json:
        _write_json(args.json, res.to_json())
    if args.html:
        write_html(res, args.html, model_name=str(args.model))
    if not res.achieved <= res.tol:
        raise CheckFailed(f"the keep-set misses the tolerance in a full re-run: {res.metric} {res.achieved:.3g} > {res.tol:g}")
    if res.verified is not None and not res.verified["passed"]:
        raise CheckFailed(f"the exported model misses the tolerance in halfsim's fp16 execution: "
                          f"{res.metric} {res.verified['halfsim_achieved']} > {res.tol:g}")
    return 0


def cmd_validate(args) -> int:
    """The real-model suite: fetch each manifest model (cached), compare halfsim with ORT in fp32,
    and for each preset the prediction's drift from fp32, written as markdown and JSON tables."""
    from .validation import runner
    names = args.models.split(",") if args.models else None
    args.precision = args.precision or ["fp16", "bf16", "tf32", "fp8-e4m3"]
    known = {e["name"] for e in runner.fetch.load_manifest()}
    for n in names or ():
        if n not in known:
            raise HalfsimError(f"unknown validation model {n!r} (have: {', '.join(sorted(known))})")
    for p in args.precision:
        from .policy import preset
        preset(p)
    for path in (args.json, args.md):
        if path:
            _check_writable(path)
    records = runner.validate_models(names)
    print(runner.table(records))
    presets = _validate_presets(records, args.precision)
    if presets:
        print(presets["text"])
    if args.json:
        _write_json(args.json, {"version": 1, "fp32": records, "presets": presets.get("rows", [])})
    if args.md:
        try:
            with open(args.md, "w") as f:
                f.write(runner.markdown(records) + "\n" + presets.get("markdown", ""))
        except OSError as e:
            raise HalfsimError(f"cannot write {args.md}: {e.strerror}") from None
    failed = [r["name"] for r in records if r["status"] not in ("pass", "fetch-error")]
    if failed:
        raise CheckFailed(f"models not matching ORT in fp32: {', '.join(failed)}")
    return 0


def _validate_presets(records, precisions) -> dict:
    """Drift of each preset's prediction from halfsim fp32 on every model that ran."""
    from . import load, metrics
    from .progress import progress
    from .validation import fetch, recipes
    import onnx
    rows = []
    manifest = {e["name"]: e for e in fetch.load_manifest()}
    todo = [r for r in records if r["status"] == "pass"]
    for r in progress(todo, desc="presets"):
        path = str(fetch.fetch(r["name"]))
        feeds = recipes.build_inputs(manifest[r["name"]]["recipe"], onnx.load(path, load_external_data=False))
        model = load(path)
        base = model.run(feeds)
        row = {"model": r["name"]}
        for p in precisions:
            out = model.run(feeds, precision=p)
            row[p] = max(metrics.rel_l2(out[k], base[k]) for k in model.outputs
                         if isinstance(base[k], np.ndarray) and base[k].dtype.kind == "f")
        rows.append(row)
    if not rows:
        return {}
    head = "| model | " + " | ".join(precisions) + " |\n|---|" + "---|" * len(precisions) + "\n"
    body = "".join(f"| {row['model']} | " + " | ".join(f"{row[p]:.3g}" for p in precisions) + " |\n" for row in rows)
    text = "rel L2 of each preset's prediction against halfsim fp32\n" + head + body
    return {"rows": rows, "markdown": "\n## Predicted drift by preset (rel L2 vs fp32)\n\n" + head + body, "text": text}


def cmd_demo(args) -> int:
    from .demo import run_demo
    run_demo(args.html)
    return 0


def cmd_inject(args) -> int:
    from .faults import check_options, inject, split_batch
    for path in (args.json, args.html):
        if path:
            _check_writable(path)
    bit = None
    if args.bit:
        try:
            bit = [int(b) for b in args.bit.split(",")]
        except ValueError:
            raise HalfsimError(f"--bit {args.bit!r}: expected integers such as 0 or 0,1,2") from None
    check_options(fault=args.fault, field=args.field, target=args.target, nodes=args.nodes, trials=args.trials,
                  seed=args.seed or 0, metric=args.metric, tol=args.tol, bits=args.bits, bit=bit, count=args.count,
                  fraction=args.fraction)
    model, feeds = _load(args)
    inputs = split_batch(feeds) if args.per_sample else [feeds]
    res = inject(model, inputs, fault=args.fault, field=args.field, target=args.target, nodes=args.nodes,
                 trials=args.trials, seed=args.seed or 0, precision=_precision(args, "fp32"), metric=args.metric,
                 tol=args.tol, scheduler=args.scheduler, bits=args.bits,
                 bit=bit, count=args.count,
                 fraction=args.fraction, op_types=args.op_type, permanent=args.permanent, sample=args.sample,
                 workers=args.workers, batch_rows=args.batch_rows)
    print(res.summary())
    if args.json:
        _write_json(args.json, res.to_json())
    if args.html:
        res.write_html(args.html)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    p = argparse.ArgumentParser(prog="halfsim", description="Predict FP16/bf16/TF32/FP8 behaviour of ONNX models on any CPU.")
    p.add_argument("--version", action="version", version=f"halfsim {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run a model and save its outputs")
    _add_input_opts(r)
    _add_precision_opts(r, "fp32")
    r.add_argument("-o", "--output", required=True, metavar="OUT.npz")
    r.set_defaults(fn=cmd_run)

    c = sub.add_parser("compare", help="compare a precision against a reference backend")
    _add_input_opts(c)
    _add_precision_opts(c, "fp32")
    c.add_argument("--against", default="halfsim:fp32", metavar="BACKEND",
                   help="halfsim:SPEC (default halfsim:fp32), ort, ort-fp16, ort-cuda, ort-cuda-fp16, coreml, "
                        "onnx:PATH[:SPEC] (another model run by halfsim at SPEC, default fp32)")
    c.add_argument("--per-layer", action="store_true")
    c.add_argument("--json", metavar="F")
    c.add_argument("--html", metavar="F")
    c.set_defaults(fn=cmd_compare)

    b = sub.add_parser("bisect", help="attribute drift to nodes; smallest set of nodes to keep in fp32")
    _add_input_opts(b)
    _add_precision_opts(b, "fp16")
    b.add_argument("--metric", required=True, metavar="M", help="max_abs, max_rel, rel_l2, cosine, top1, max_ulp")
    b.add_argument("--tol", required=True, type=float, metavar="T", help="tolerance on the metric (max over outputs)")
    b.add_argument("--reference", default="fp32", choices=["fp32", "ort"], help="what drift is measured against")
    b.add_argument("--max-evaluations", type=int, default=1000, metavar="N", help="search budget (default 1000)")
    b.add_argument("--export", metavar="OUT.onnx", help="write the mixed-precision model and verify it")
    b.add_argument("--json", metavar="F")
    b.add_argument("--html", metavar="F")
    b.set_defaults(fn=cmd_bisect)

    i = sub.add_parser("inject", help="fault-injection campaign (bit flips, NaN/inf, precision faults)",
                       conflict_handler="resolve")
    _add_input_opts(i)
    # --seed seeds the campaign (and random inputs when no --inputs is given).
    i.add_argument("--seed", type=int, default=0, help="campaign seed (also seeds random inputs; default 0)")
    _add_precision_opts(i, "fp32")
    i.add_argument("--fault", required=True, metavar="KIND",
                   help="bitflip, stuck-at-0, stuck-at-1, nan, inf, -inf, zero, max, random, force-fp16, force-bf16, "
                        "force-fp8-e4m3, force-fp8-e5m2, ftz")
    i.add_argument("--field", default="exponent", help="bits to hit: sign, exponent, mantissa, any (default exponent)")
    i.add_argument("--bit", metavar="B[,B..]", help="bit positions to choose from (0 = lowest mantissa bit)")
    i.add_argument("--bits", type=int, default=1, help="distinct bits hit per element (default 1)")
    i.add_argument("--target", default="activations", help="weights or activations (default activations)")
    i.add_argument("--nodes", default="*", metavar="GLOB", help="node name glob (default *)")
    i.add_argument("--op-type", action="append", metavar="OP", help="only nodes of this op type (repeatable)")
    g = i.add_mutually_exclusive_group()
    g.add_argument("--count", type=int, default=1, help="elements hit per trial (default 1)")
    g.add_argument("--fraction", type=float, help="fraction of the tensor's elements hit per trial")
    i.add_argument("--permanent", action="store_true", help="the fault hits every input (default: one inference)")
    i.add_argument("--per-sample", action="store_true", help="split the inputs along their first axis: one inference per sample")
    i.add_argument("--batch-rows", action="store_true",
                   help="re-run only the faulty batch row where a check shows rows are independent (faster)")
    i.add_argument("--sample", default="node", choices=["node", "element"],
                   help="draw the faulty tensor uniformly per node (default) or by size")
    i.add_argument("--trials", type=int, default=1000)
    i.add_argument("--metric", default="top1", help="top1 (default), rel_l2, max_abs, max_rel, cosine, max_ulp")
    i.add_argument("--tol", type=float, default=0.0, help="metric above this is silent data corruption (default 0)")
    i.add_argument("--scheduler", metavar="ADDR", help="dask.distributed scheduler, tcp://HOST:PORT")
    i.add_argument("--workers", type=int, default=None, help="local worker processes (default: CPU count; 1 = serial)")
    i.add_argument("--json", metavar="F")
    i.add_argument("--html", metavar="F")
    i.set_defaults(fn=cmd_inject)

    v = sub.add_parser("validate", help="real-model suite: halfsim against ORT, and the presets' predicted drift")
    v.add_argument("--models", metavar="A,B", help="subset of the manifest")
    v.add_argument("--precision", action="append", metavar="SPEC",
                   help="presets to tabulate (default fp16, bf16, tf32, fp8-e4m3)")
    v.add_argument("--json", metavar="F")
    v.add_argument("--md", metavar="F")
    v.set_defaults(fn=cmd_validate)

    d = sub.add_parser("demo", help="run the bundled example (no network)")
    d.add_argument("--html", default="halfsim-demo.html", metavar="F", help="where to write the report")
    d.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except CheckFailed as e:
        print(f"halfsim: check failed: {e}", file=sys.stderr)
        return 1
    except HalfsimError as e:
        print(f"halfsim: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("halfsim: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("halfsim: error: out of memory", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
