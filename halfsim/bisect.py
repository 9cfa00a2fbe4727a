"""Drift bisection: which nodes cause a low-precision drift, and the smallest set of nodes to
keep in fp32 so that a tolerance holds.

Attribution runs two traces per input (fp32 and the low precision) and then, per float-computing
node, two downstream-cone re-runs from the activation cache: the node alone in low precision
(everything else fp32) and the node alone kept in fp32 (everything else low precision).

The keep-set search works on units: a float-computing node together with the nodes that must
follow it (Constant nodes and pure data-movement nodes whose values would otherwise be rounded
between a kept node and its kept consumers or a graph output). It adds units in order of impact
(exponential then binary search over the prefix length), shrinks the set with delta debugging
(ddmin) and finishes by checking 1-minimality: dropping any single unit breaks the tolerance.
Every placement is evaluated with cone re-runs over all given inputs; the final placement is
checked again with full (uncached) runs."""
from __future__ import annotations

import dataclasses
import inspect
import math
import os
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from . import metrics as M
from .errors import CheckFailed, HalfsimError
from .policy import OpPrecision, Policy, preset

_FP32 = OpPrecision()
_VALUE_FREE = {"Shape", "Size"}  # read only shapes: their precision cannot matter


class _Placement(Policy):
    """A Policy that keeps the main-graph nodes `keep` (ids) in fp32 or, with `only`, runs just
    those nodes at the base precision and everything else in fp32. Equivalent to
    base.keep_fp32(names) but keyed by node identity (no glob matching per node)."""

    def __init__(self, base: Policy, keep: frozenset = frozenset(), only: frozenset | None = None):
        super().__init__(base.name, list(base.rules), base.io, base.weights, base.weights_overflow,
                         base.description, base.coreml_constants)
        if only is not None:  # attribution "alone": no global weight/io rounding either
            self.io = self.weights = None
            self.coreml_constants = False
        self._base, self._keep, self._only = base, keep, only

    def cache_key(self) -> str:
        only = "-" if self._only is None else sorted(self._only)
        return f"{self._base.cache_key()} keep={sorted(self._keep)} only={only}"

    def resolve(self, node) -> OpPrecision:
        i = id(node)
        if i in self._keep:
            return _FP32
        if self._only is not None and i not in self._only:
            return _FP32
        return self._base.resolve(node)


@dataclasses.dataclass
class BisectResult:
    attribution: list[dict]
    keep_fp32: list[str]
    achieved: float
    evaluations: int
    seconds: float
    minimal: bool
    metric: str
    tol: float
    precision: str
    baseline: float                       # drift with no node kept
    keep_fp32_derived: list[str] = dataclasses.field(default_factory=list)
    budget_exhausted: bool = False
    search_evaluations: int = 0
    per_output_before: dict = dataclasses.field(default_factory=dict)
    per_output_after: dict = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    verified: dict | None = None
    policy: Policy | None = dataclasses.field(default=None, repr=False)
    _ctx: Any = dataclasses.field(default=None, repr=False)

    def to_json(self) -> dict:
        attribution = [{k: _num(v) for k, v in r.items()} for r in self.attribution]
        d = {"version": 1, "precision": self.precision, "attribution": attribution,
             "keep_fp32": self.keep_fp32, "keep_fp32_derived": self.keep_fp32_derived,
             "metric": self.metric, "tol": self.tol, "achieved": _num(self.achieved),
             "baseline": _num(self.baseline), "evaluations": self.evaluations,
             "search_evaluations": self.search_evaluations, "seconds": round(self.seconds, 3),
             "minimal": self.minimal, "budget_exhausted": self.budget_exhausted,
             "per_output_before": {k: _num(v) for k, v in self.per_output_before.items()},
             "per_output_after": {k: _num(v) for k, v in self.per_output_after.items()},
             "notes": list(self.notes)}
        if self.verified is not None:
            d["verified"] = self.verified
        return d

    def export(self, path: str | None = None, **kw):
        """Write the mixed-precision ONNX model of this placement (see halfsim.export)."""
        from .export import export_placement
        if self._ctx is None:
            raise HalfsimError("this result has no model attached")
        kw.setdefault("dtypes", {k: v.dtype for k, v in self._ctx.t32[0].items() if isinstance(v, np.ndarray)})
        return export_placement(self._ctx.model, self.keep_fp32 + self.keep_fp32_derived, path,
                                precision=self.precision, **kw)


def _num(v: float):
    """JSON has no inf/nan: spell them as strings."""
    if isinstance(v, float) and not math.isfinite(v):
        return "inf" if v > 0 else ("-inf" if v < 0 else "nan")
    return v


# -- metric ------------------------------------------------------------------------------

class _Metric:
    """Drift of a list of output dicts against reference output dicts: the named metric's max
    over outputs and inputs, or a user callable f(outputs_list) (or f(outputs, references))."""

    def __init__(self, metric: str | Callable, output_names: list[str]):
        self.outputs = output_names
        if callable(metric):
            self.fn, self.name = None, getattr(metric, "__name__", "callable")
            self.user = metric
            try:
                params = [p for p in inspect.signature(metric).parameters.values()
                          if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
                self.two = len(params) >= 2
            except (TypeError, ValueError):
                self.two = False
        elif isinstance(metric, str):
            self.fn, self.name, self.user = M.get(metric), metric, None
        else:
            raise HalfsimError(f"metric must be a name ({', '.join(M.METRICS)}) or a callable, not {type(metric).__name__}")

    def per_output(self, outs: list[Mapping], refs: list[Mapping]) -> dict[str, float]:
        if self.fn is None:
            return {}
        res: dict[str, float] = {}
        for name in self.outputs:
            worst = 0.0
            for o, r in zip(outs, refs):
                a, b = o[name], r[name]
                if not isinstance(a, np.ndarray) or not isinstance(b, np.ndarray):
                    continue
                if a.dtype.kind not in "fc" or b.dtype.kind not in "fc":
                    v = 0.0 if a.shape == b.shape and np.array_equal(a, b) else 1.0
                else:
                    v = float(self.fn(a, b))
                if math.isnan(v):
                    v = math.inf
                worst = max(worst, v)
            res[name] = worst
        return res

    def __call__(self, outs: list[Mapping], refs: list[Mapping] | None) -> float:
        if self.fn is not None:
            po = self.per_output(outs, refs)
            return max(po.values()) if po else 0.0
        try:
            v = self.user([dict(o) for o in outs], refs) if self.two else self.user([dict(o) for o in outs])
        except HalfsimError:
            raise
        except Exception as e:
            msg = str(e).strip().splitlines()
            raise HalfsimError(f"metric function {self.name!r} raised {type(e).__name__}"
                               f"{': ' + msg[0] if msg else ''}") from None
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise HalfsimError(f"metric function {self.name!r} returned {type(v).__name__}, not a number") from None
        return math.inf if math.isnan(v) else v


# -- search context ------------------------------------------------------------------------

def _model(model):
    """A halfsim Model from a Model, a path, bytes or a ModelProto."""
    if isinstance(model, (str, bytes, os.PathLike)) or hasattr(model, "SerializeToString"):
        from . import load
        return load(model)
    if not hasattr(model, "graph") or not hasattr(model, "run"):
        raise HalfsimError(f"model must be a halfsim Model, a path or a ModelProto, not {type(model).__name__}")
    return model


def _as_list(inputs) -> list[dict]:
    if isinstance(inputs, Mapping):
        return [dict(inputs)]
    if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(x, Mapping) for x in inputs):
        return [dict(x) for x in inputs]
    raise HalfsimError("inputs must be a feed dict or a non-empty list of feed dicts")


def _policy(precision) -> Policy:
    if isinstance(precision, Policy):
        return precision
    if isinstance(precision, str):
        return preset(precision)
    raise HalfsimError(f"precision must be a preset name or a Policy, not {type(precision).__name__}")


class _Search:
    def __init__(self, model, inputs, precision, metric, reference, budget):
        from .precision import has_low_precision_types
        self.model = model
        if has_low_precision_types(model):
            raise HalfsimError("bisect needs an fp32 model; this one already holds fp16/bf16 tensors")
        self.base = _policy(precision)
        self.feeds = [model.check_feeds(f) for f in _as_list(inputs)]
        self.metric = _Metric(metric, model.outputs)
        self.budget = budget
        self.evals = 0          # placements evaluated (cone or full runs over all inputs)
        self.search_evals = 0
        self.exhausted = False
        self._cache: dict[frozenset, float] = {}
        g = model.graph
        self.nodes = g.nodes
        # Traces: fp32 and the low precision, one per input.
        # The low trace keeps its plan's format tags: cone re-runs start from them, so that a
        # tensor already rounded (or already inf) is not rounded again with other rules.
        self.t32, self.tlow, self.tags_low = [], [], []
        for f in self.feeds:
            self.t32.append(model.run(f, precision="fp32", keep_trace=True).trace)
            plan = self._plan(self.base)
            self.tlow.append(model.run(f, precision=plan, keep_trace=True).trace)
            self.tags_low.append(dict(plan.tags))
        self.refs = self._reference(reference)
        self.units = self._units()
        self.outs_low = [self._outs(t) for t in self.tlow]

    def _outs(self, trace) -> dict:
        return {k: trace[k] for k in self.model.outputs}

    def _reference(self, reference) -> list[dict] | None:
        if isinstance(reference, str):
            if reference == "fp32":
                return [self._outs(t) for t in self.t32]
            if reference == "ort":
                from .backends import ort
                return [ort.run(self.model.proto, f) for f in self.feeds]
            raise HalfsimError(f"unknown reference {reference!r} (use 'fp32', 'ort' or a list of output dicts)")
        if reference is None:
            if self.metric.fn is not None:
                raise HalfsimError("a named metric needs a reference ('fp32', 'ort' or output dicts)")
            return None
        refs = [reference] if isinstance(reference, Mapping) else list(reference)
        if len(refs) != len(self.feeds) or not all(isinstance(r, Mapping) for r in refs):
            raise HalfsimError(f"reference must hold one output dict per input ({len(self.feeds)})")
        for r in refs:
            missing = [o for o in self.model.outputs if o not in r]
            if missing and self.metric.fn is not None:
                raise HalfsimError(f"reference lacks output {missing[0]!r}")
        return [dict(r) for r in refs]

    # -- graph structure ---------------------------------------------------------------
    def _is_float(self, t: str) -> bool:
        v = self.t32[0].get(t)
        return isinstance(v, np.ndarray) and v.dtype.kind == "f"

    def _units(self) -> list:
        """Float-computing main-graph nodes (not Constant, not data movement, not shape-only)."""
        out = []
        for n in self.nodes:
            if n.op_type == "Constant" or n.impl.data_movement or n.op_type in _VALUE_FREE:
                continue
            if any(self._is_float(t) for t in n.inputs if t) or any(self._is_float(t) for t in n.outputs if t):
                out.append(n)
        return out

    def followers(self, kept: set[int]) -> set[int]:
        """Constant and data-movement nodes that must stay fp32 with the kept node indices: one
        of their consumers is kept, or they carry a kept node's value to a graph output."""
        g = self.model.graph
        outs = set(g.output_names)
        fol = [n for n in self.nodes if n.op_type == "Constant" or n.impl.data_movement]
        add: set[int] = set()
        changed = True
        while changed:
            changed = False
            for n in reversed(fol):
                if n.index in add:
                    continue
                every = kept | add
                hit = any(c in every for t in n.outputs if t for c in g.consumers.get(t, ()))
                if not hit and n.op_type != "Constant" and any(t in outs for t in n.outputs if t):
                    hit = any(g.producer.get(t, -1) in every for t in n.inputs if t)
                if hit:
                    add.add(n.index)
                    changed = True
        return add

    def expand(self, units: Iterable[int]) -> set[int]:
        """Node indices kept for the given unit positions (units plus their followers)."""
        kept = {self.units[u].index for u in units}
        return kept | self.followers(kept)

    # -- evaluation ------------------------------------------------------------------------
    def _plan(self, policy: Policy, tags: Mapping | None = None):
        from .precision import PrecisionPlan
        plan = PrecisionPlan(policy, self.model)
        if tags:
            plan.tags.update(tags)
        return plan

    def _feeds_from(self, trace, f) -> dict:
        return {k: trace[k] if k in trace else v for k, v in f.items()}

    def run_keep(self, kept_idx: set[int]) -> list[dict]:
        if not kept_idx:
            return self.outs_low
        ids = frozenset(id(self.nodes[i]) for i in kept_idx)
        pol = _Placement(self.base, keep=ids)
        res = []
        for f, t, tags in zip(self.feeds, self.tlow, self.tags_low):
            r = self.model.run(self._feeds_from(t, f), precision=self._plan(pol, tags), reuse=t, dirty=sorted(kept_idx))
            res.append(dict(r))
        return res

    def run_alone(self, node) -> list[dict]:
        pol = _Placement(self.base, only=frozenset([id(node)]))
        return [dict(self.model.run(self._feeds_from(t, f), precision=pol, reuse=t, dirty=[node.index]))
                for f, t in zip(self.feeds, self.t32)]

    def drift(self, outs: list[dict]) -> float:
        return self.metric(outs, self.refs)

    def evaluate(self, units: frozenset, search: bool = True) -> float:
        """Drift with these unit positions kept in fp32 (memoized; counts evaluations)."""
        v = self._cache.get(units)
        if v is not None:
            return v
        if search and self.budget is not None and self.search_evals >= self.budget:
            self.exhausted = True
            raise _Budget()
        v = self.drift(self.run_keep(self.expand(units)))
        self._cache[units] = v
        self.evals += 1
        if search:
            self.search_evals += 1
            if self._bar is not None:
                self._bar.update(1)
        return v

    _bar = None


class _Budget(Exception):
    pass


def _recovered(base: float, kept: float) -> float:
    if math.isinf(base):
        return math.inf if math.isfinite(kept) else 0.0
    return max(0.0, base - kept)


def _impact(rec: dict) -> tuple:
    return (max(rec["drift_recovered"], rec["drift_alone"]), rec["drift_recovered"], rec["drift_alone"])


def attribute(s: _Search, base_drift: float) -> list[dict]:
    """Per unit: drift with only it in low precision, drift recovered with only it in fp32."""
    from .progress import progress
    rows = []
    for pos, n in enumerate(progress(s.units, desc="bisect: attribution")):
        alone = s.drift(s.run_alone(n))
        kept = s.drift(s.run_keep(s.expand([pos])))
        s.evals += 2
        rows.append({"node": n.label, "op_type": n.op_type, "drift_alone": alone,
                     "drift_recovered": _recovered(base_drift, kept), "drift_kept": kept, "_pos": pos})
    return rows


def _ddmin(s: _Search, items: list[int], ok: Callable[[list[int]], bool]) -> list[int]:
    """Zeller's ddmin: a subset of `items` (which passes) that still passes, 1-minimal when it
    runs to the end."""
    n = 2
    while len(items) >= 2:
        chunks = [items[i * len(items) // n:(i + 1) * len(items) // n] for i in range(n)]
        chunks = [c for c in chunks if c]
        for c in chunks:
            if ok(c):
                items, n = c, 2
                break
        else:
            for c in chunks:
                comp = [x for x in items if x not in c]
                if comp and ok(comp):
                    items, n = comp, max(n - 1, 2)
                    break
            else:
                if n >= len(items):
                    break
                n = min(2 * n, len(items))
    return items


def bisect(model, inputs, precision: str | Policy = "fp16", metric: str | Callable = "rel_l2", tol: float = 1e-2,
           reference: str | Sequence[Mapping] | None = "fp32", max_evaluations: int | None = 1000,
           export: str | None = None, verify_backend: bool = True) -> BisectResult:
    """Find which nodes cause the drift of `precision` and the smallest set to keep in fp32.

    inputs: one feed dict or a list of them (the tolerance must hold on every one).
    metric: a metric name (max over outputs and inputs) or a callable f(outputs_list) -> float
        (or f(outputs_list, references)); lower is better, the tolerance holds when <= tol.
    reference: 'fp32' (halfsim fp32), 'ort' (ONNX Runtime fp32) or one output dict per input.
    max_evaluations: budget of placements the keep-set search may evaluate (None: unlimited).
    export: write the mixed-precision model there and verify it (result.verified).
    Raises CheckFailed when even an all-fp32 placement misses the tolerance."""
    t0 = time.perf_counter()
    if not isinstance(tol, (int, float)) or isinstance(tol, bool) or not math.isfinite(tol) or tol < 0:
        raise HalfsimError(f"tol must be a finite non-negative number, not {tol!r}")
    if max_evaluations is not None and (not isinstance(max_evaluations, int) or max_evaluations < 1):
        raise HalfsimError("max_evaluations must be a positive integer or None")
    model = _model(model)
    if export is not None:
        from .cli import _check_writable
        from .export import check_precision
        _check_writable(export)
        check_precision(precision)
    s = _Search(model, inputs, precision, metric, reference, max_evaluations)
    mname = s.metric.name
    baseline = s.drift(s.outs_low)
    notes: list[str] = []
    all_units = frozenset(range(len(s.units)))
    full32 = s.evaluate(all_units, search=False)
    if not full32 <= tol:
        raise CheckFailed(f"tolerance {mname} <= {tol:g} is unreachable: even with every node kept in fp32 the drift "
                          f"is {full32:.3g} ({'fp32 against the reference' if s.base.weights is None and s.base.io is None else 'the policy also rounds weights/IO globally'})")
    attribution = attribute(s, baseline)
    order = sorted(attribution, key=lambda r: tuple(-x for x in _impact(r)) + (r["_pos"],))
    s._cache[frozenset()] = baseline
    keep: list[int] = []
    minimal = True
    if baseline <= tol:
        notes.append("the low-precision run already meets the tolerance")
    else:
        from .progress import enabled
        if enabled():
            from tqdm import tqdm
            import sys
            s._bar = tqdm(desc="bisect: search", unit="eval", leave=False, file=sys.stderr)
        try:
            keep, minimal = _search(s, [r["_pos"] for r in order], tol, notes)
        finally:
            if s._bar is not None:
                s._bar.close()
    # Final check with full runs (no activation cache).
    kept_idx = s.expand(keep)
    names = [s.units[u].label for u in sorted(keep, key=lambda u: s.units[u].index)]
    derived = [s.nodes[i].label for i in sorted(kept_idx - {s.units[u].index for u in keep})]
    pol = _Placement(s.base, keep=frozenset(id(s.nodes[i]) for i in kept_idx))
    final = [dict(model.run(f, precision=pol)) for f in s.feeds]
    achieved = s.drift(final)
    s.evals += 1
    if not achieved <= tol:  # the cache and a full run disagree: should not happen; say so
        notes.append(f"full re-run gives {achieved:.3g}, above the cached evaluation")
    rows = [{k: v for k, v in r.items() if k != "_pos"} for r in order]
    res = BisectResult(attribution=rows, keep_fp32=names, achieved=achieved, evaluations=s.evals,
                       seconds=0.0, minimal=minimal and not s.exhausted, metric=mname, tol=float(tol),
                       precision=s.base.name, baseline=baseline, keep_fp32_derived=derived,
                       budget_exhausted=s.exhausted, search_evaluations=s.search_evals,
                       per_output_before=s.metric.per_output(s.outs_low, s.refs),
                       per_output_after=s.metric.per_output(final, s.refs), notes=notes,
                       policy=s.base.keep_fp32(names + derived), _ctx=s)
    if export is not None:
        res.verified = verify_export(res, export, backend=verify_backend)
    res.seconds = time.perf_counter() - t0
    return res


def _search(s: _Search, order: list[int], tol: float, notes: list[str]) -> tuple[list[int], bool]:
    """Greedy prefix (exponential + binary search), ddmin, then a 1-minimality loop."""
    ok = lambda units: s.evaluate(frozenset(units)) <= tol  # noqa: E731
    best = list(order)  # every unit kept: known to pass
    try:
        # Smallest prefix of the impact order that passes.
        lo, hi, k = 0, len(order), 1
        while k < len(order):
            if ok(order[:k]):
                hi = k
                break
            lo, k = k, 2 * k
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if ok(order[:mid]):
                hi = mid
            else:
                lo = mid
        best = order[:hi]
        best = _ddmin(s, best, ok)
        # 1-minimality: no single unit can be dropped (mostly cache hits after ddmin).
        changed = True
        while changed:
            changed = False
            for u in list(best):
                rest = [x for x in best if x != u]
                if ok(rest):
                    best, changed = rest, True
                    break
        return best, True
    except _Budget:
        notes.append(f"evaluation budget ({s.budget}) ran out: the set is not proven 1-minimal")
        return best, False


def evaluate_placement(model, inputs, precision: str | Policy = "fp16", keep_fp32: Iterable[str] = (),
                       metric: str | Callable = "rel_l2", reference: str | Sequence[Mapping] | None = "fp32") -> float:
    """Drift of `precision` with the named nodes (plus their Constant/data-movement followers)
    kept in fp32, from full runs over all inputs."""
    model = _model(model)
    s = _Search(model, inputs, precision, metric, reference, None)
    by_name = {n.label: n.index for n in model.nodes}
    kept = set()
    for name in keep_fp32:
        if name not in by_name:
            raise HalfsimError(f"no node named {name!r}")
        kept.add(by_name[name])
    kept |= s.followers(kept)
    pol = _Placement(s.base, keep=frozenset(id(model.nodes[i]) for i in kept))
    return s.drift([dict(model.run(f, precision=pol)) for f in s.feeds])


def verify_export(res: BisectResult, path: str, backend: bool = True) -> dict:
    """Export the placement, run it in halfsim (true fp16 semantics) and ORT; compare both
    with the reference using the bisection's metric."""
    from . import load
    from .backends import ort
    s = res._ctx
    proto = res.export(path)
    hm = load(proto)
    h_out = [dict(hm.run(f)) for f in s.feeds]
    out = {"backend": "ort", "path": path, "halfsim_achieved": _num(s.drift(h_out))}
    ok = s.drift(h_out) <= res.tol
    if backend:
        o_out = [ort.run(proto, f) for f in s.feeds]  # raises HalfsimError if ORT cannot load it
        out["achieved"] = _num(s.drift(o_out))
        out["ort_loads"] = True
    out["passed"] = bool(ok)
    return out


# -- HTML --------------------------------------------------------------------------------

def write_html(res: BisectResult, path: str, top: int = 25, model_name: str = "") -> None:
    import html as H

    from .report import _CSS, _plt, _svg, _table, versions
    plt = _plt()
    rows = res.attribution[:top]
    title = f"halfsim bisect: {res.precision}, {res.metric} <= {res.tol:g}"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{H.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{H.escape(title)}</h1>"]
    if model_name:
        parts.append(f"<p>model: {H.escape(model_name)}</p>")
    parts.append(f"<p>keep in fp32 ({len(res.keep_fp32)}): <b>{H.escape(', '.join(res.keep_fp32) or '(none)')}</b>"
                 f"{' plus ' + H.escape(', '.join(res.keep_fp32_derived)) if res.keep_fp32_derived else ''}. "
                 f"Drift {res.baseline:.3g} with nothing kept, {res.achieved:.3g} with the keep-set; "
                 f"{res.evaluations} evaluations in {res.seconds:.1f} s; 1-minimal: {res.minimal}.</p>")
    for n in res.notes:
        parts.append(f"<p>{H.escape(n)}</p>")
    cap = 1e30

    def val(v):
        return min(max(v, 1e-12), cap) if not math.isnan(v) else 1e-12
    if rows:
        y = np.arange(len(rows))
        fig, ax = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.2))
        ax.barh(y - 0.2, [val(r["drift_alone"]) for r in rows], 0.4, label="drift alone (only this node low)")
        ax.barh(y + 0.2, [val(r["drift_recovered"]) for r in rows], 0.4, label="drift recovered (only this node fp32)")
        ax.set_xscale("log")
        ax.set_yticks(y)
        ax.set_yticklabels([f"{r['node']} ({r['op_type']})" for r in rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(f"{res.metric} (inf drawn at {cap:g})")
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(True, axis="x", which="both", alpha=0.3)
        parts.append("<h2>Attribution (top nodes by impact)</h2>" + f"<div class='plot'>{_svg(fig)}</div>")
    if res.per_output_before:
        names = list(res.per_output_before)
        fig, ax = plt.subplots(figsize=(7, 0.4 * len(names) + 1.5))
        y = np.arange(len(names))
        ax.barh(y - 0.2, [val(res.per_output_before[k]) for k in names], 0.4, label="nothing kept")
        ax.barh(y + 0.2, [val(res.per_output_after[k]) for k in names], 0.4, label="with the keep-set")
        ax.axvline(max(res.tol, 1e-12), color="red", ls="--", label=f"tol {res.tol:g}")
        ax.set_xscale("log")
        ax.set_yticks(y)
        ax.set_yticklabels(names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(res.metric)
        ax.legend(fontsize=8)
        parts.append("<h2>Drift per output, before and after</h2>" + f"<div class='plot'>{_svg(fig)}</div>")
        parts.append(_table([{"output": k, "before": res.per_output_before[k], "after": res.per_output_after[k]}
                             for k in names], ["output", "before", "after"]))
    parts.append("<h2>Attribution table</h2>" + _table(res.attribution, ["node", "op_type", "drift_alone",
                                                                         "drift_recovered", "drift_kept"]))
    if res.verified:
        parts.append("<h2>Exported model</h2>" + _table([res.verified], list(res.verified)))
    parts.append("<h2>Versions</h2>" + _table([versions()], list(versions())))
    parts.append("</body></html>")
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(parts))
    except OSError as e:
        raise HalfsimError(f"cannot write {path}: {e.strerror}") from None


def _export(model, keep_fp32: Iterable[str], path: str | None = None, **kw):
    """Mixed-precision export of a placement (halfsim.export.export_placement)."""
    from .export import export_placement
    return export_placement(model, keep_fp32, path, **kw)


# `halfsim.bisect` is this function once the package is imported: reach the rest through it too.
bisect.export = _export  # type: ignore[attr-defined]
bisect.evaluate_placement = evaluate_placement  # type: ignore[attr-defined]
bisect.write_html = write_html  # type: ignore[attr-defined]
bisect.BisectResult = BisectResult  # type: ignore[attr-defined]
