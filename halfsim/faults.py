"""Fault-injection campaigns: bit flips, stuck-at bits, special values and precision faults in
weights or activations, with silent-data-corruption (SDC) rates and Wilson intervals.

A campaign runs every input once without faults (keeping the whole trace), then each trial
re-runs only the downstream cone of the faulty node from that trace. A trial whose divergence
dies out (every differing tensor consumed and bit-identical outputs downstream, e.g. a flip in
a negative value before a ReLU) stops there: identical bits in give identical bits out, so the
rest of the cone cannot change. Trial i draws everything from SeedSequence([seed, i]), so any
trial can be replayed alone and results do not depend on how trials are spread over processes
or a dask cluster.

Bit-level faults act on the tensor's storage format: under "fp16" an activation holds fp16
values (in a float32 carrier) and a flip flips one of its 16 bits.
"""
from __future__ import annotations

import fnmatch
import hashlib
import html as _html
import math
import os
import pickle
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from . import metrics as M
from .errors import HalfsimError
from .formats import Format, decode, encode, format as get_format, round as round_fmt
from .interpreter import Trace

__all__ = ["inject", "InjectResult", "wilson", "split_batch", "FAULTS", "FIELDS"]

BIT_FAULTS = ("bitflip", "stuck-at-0", "stuck-at-1")
VALUE_FAULTS = ("nan", "inf", "-inf", "zero", "max", "random")
PRECISION_FAULTS = {"force-fp16": "fp16", "force-bf16": "bf16", "force-fp8-e4m3": "fp8-e4m3",
                    "force-fp8-e5m2": "fp8-e5m2", "ftz": None}
FAULTS = BIT_FAULTS + VALUE_FAULTS + tuple(PRECISION_FAULTS)
FIELDS = ("any", "sign", "exponent", "mantissa")
TARGETS = ("activations", "weights")
Z95 = 1.959963984540054  # standard normal quantile at 0.975


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval for k successes out of n trials ([0, 1] when n == 0)."""
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    den = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, center - half), min(1.0, center + half))


def split_batch(feeds: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """One feed dict per sample: every input is split along its first axis (kept as size 1)."""
    sizes = {k: np.shape(v)[0] for k, v in feeds.items() if np.ndim(v) > 0}
    if not sizes or len(set(sizes.values())) != 1:
        raise HalfsimError(f"cannot split inputs into samples: first dimensions differ ({sizes})")
    n = next(iter(sizes.values()))
    return [{k: (v[i:i + 1] if np.ndim(v) > 0 else v) for k, v in feeds.items()} for i in range(n)]


# ---------------------------------------------------------------- bit layouts

@dataclass(frozen=True)
class _Layout:
    """How a tensor's values are stored: the format and the array dtype carrying them."""
    name: str
    ebits: int
    mbits: int
    has_inf: bool
    max: float
    carrier: str          # numpy dtype name of the array
    fmt: Format | None    # set when a float32 carrier holds a narrower format (via encode/decode)

    @property
    def bits(self) -> int:
        return 1 + self.ebits + self.mbits

    def positions(self, field: str) -> list[int]:
        m, e = self.mbits, self.ebits
        return {"any": list(range(self.bits)), "sign": [m + e], "exponent": list(range(m, m + e)),
                "mantissa": list(range(m))}[field]

    def field_of(self, bit: int) -> str:
        return "sign" if bit == self.bits - 1 else "exponent" if bit >= self.mbits else "mantissa"

    def to_bits(self, v: np.ndarray) -> np.ndarray:
        if self.fmt is not None:
            return encode(v, self.fmt).astype(np.uint64)
        return np.ascontiguousarray(v).view(f"u{v.dtype.itemsize}").astype(np.uint64)

    def from_bits(self, codes: np.ndarray) -> np.ndarray:
        if self.fmt is not None:
            return decode(codes.astype(np.uint32), self.fmt)
        dt = np.dtype(self.carrier)
        return codes.astype(f"u{dt.itemsize}").view(dt)


def _layout(dtype: np.dtype, fmt: Format) -> _Layout:
    dt = np.dtype(dtype)
    if dt == np.float64:
        return _Layout("fp64", 11, 52, True, float(np.finfo(np.float64).max), "float64", None)
    if dt == np.float16:
        return _Layout("fp16", 5, 10, True, 65504.0, "float16", None)
    if dt.name == "bfloat16":
        f = get_format("bf16")
        return _Layout("bf16", 8, 7, True, f.max, dt.name, None)
    if fmt.name == "fp32":
        return _Layout("fp32", 8, 23, True, fmt.max, "float32", None)
    return _Layout(fmt.name, fmt.ebits, fmt.mbits, fmt.has_inf, fmt.max, "float32", fmt)


def _is_float(a: Any) -> bool:
    return isinstance(a, np.ndarray) and (a.dtype.kind == "f" or a.dtype.name == "bfloat16") and a.size > 0


def _same(a: Any, b: Any) -> bool:
    """Bit-identical arrays (NaN payloads and signed zeros included)."""
    if not isinstance(a, np.ndarray) or not isinstance(b, np.ndarray):
        return a is b
    if a is b:
        return True
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.kind == "f" or a.dtype.kind == "V":
        u = f"u{a.dtype.itemsize}"
        return bool(np.array_equal(a.view(u), b.view(u)))
    return bool(np.array_equal(a, b))


def _num(x: float) -> Any:
    x = float(x)
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


# ---------------------------------------------------------------- configuration

@dataclass(frozen=True)
class _Config:
    fault: str
    field: str
    bits: int
    bit: tuple[int, ...] | None
    count: int
    fraction: float | None
    permanent: bool
    target: str
    nodes: str
    op_types: tuple[str, ...] | None
    precision: Any
    metric: str
    tol: float
    sample: str

    def fault_dict(self) -> dict:
        d: dict[str, Any] = {"kind": self.fault, "mode": "permanent" if self.permanent else "transient"}
        if self.fault in BIT_FAULTS:
            d.update(field=self.field, bits=self.bits, bit=list(self.bit) if self.bit else None)
        if self.fault not in PRECISION_FAULTS:
            d.update(count=self.count, fraction=self.fraction)
        return d


def _check_config(fault, field, bits, bit, count, fraction, permanent, target, nodes, op_types,
                  precision, metric, tol, sample) -> _Config:
    if not isinstance(fault, str) or fault not in FAULTS:
        raise HalfsimError(f"unknown fault kind {fault!r} (choose from {', '.join(FAULTS)})")
    if field not in FIELDS:
        raise HalfsimError(f"unknown bit field {field!r} (choose from {', '.join(FIELDS)})")
    if target not in TARGETS:
        raise HalfsimError(f"unknown target {target!r} (choose weights or activations)")
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits < 1:
        raise HalfsimError(f"bits must be a positive integer, not {bits!r}")
    if bit is not None:
        bit = (bit,) if isinstance(bit, (int, np.integer)) else tuple(bit)
        if not bit or any(isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 0 for b in bit):
            raise HalfsimError(f"bit positions must be non-negative integers, not {bit!r}")
        bit = tuple(sorted(set(int(b) for b in bit)))
        if bits > len(bit):
            raise HalfsimError(f"cannot flip {bits} distinct bits among the {len(bit)} given positions")
    if fraction is not None:
        if not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise HalfsimError(f"fraction must be in (0, 1], not {fraction!r}")
    elif isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise HalfsimError(f"count must be a positive integer, not {count!r}")
    if not isinstance(nodes, str) or not nodes:
        raise HalfsimError("nodes must be a glob on node names, such as '*' or '/conv*'")
    if op_types is not None:
        op_types = (op_types,) if isinstance(op_types, str) else tuple(op_types)
    M.get(metric)
    if not isinstance(tol, (int, float)) or not tol >= 0:
        raise HalfsimError(f"tol must be a non-negative number, not {tol!r}")
    if sample not in ("node", "element"):
        raise HalfsimError(f"sample must be 'node' or 'element', not {sample!r}")
    return _Config(fault, field, int(bits), bit, int(count), None if fraction is None else float(fraction),
                   bool(permanent), target, nodes, op_types, precision, metric, float(tol), sample)


# ---------------------------------------------------------------- the campaign

@dataclass
class _Site:
    kind: str        # activation | weight | constant
    tensor: str
    node: int        # producing node (activation, constant) or first matching consumer (weight)
    label: str
    op_type: str
    slot: int
    layout: _Layout
    size: int


class _Masked(Exception):
    """Raised by the tracking hook when the fault can no longer reach any output."""


class _Base:
    __slots__ = ("feeds", "trace", "outputs")

    def __init__(self, feeds, trace, outputs):
        self.feeds, self.trace, self.outputs = feeds, trace, outputs


class _Tracker:
    """Hook for a faulty cone re-run: applies an activation fault at its node, follows which
    tensors differ from the fault-free trace, and stops the run once none can reach an output."""

    def __init__(self, camp: "_Campaign", trace, fault_node: int, apply, live: set):
        self.camp, self.trace, self.fault_node, self.apply, self.live = camp, trace, fault_node, apply, live

    def __call__(self, node, outs):
        c = self.camp
        n = node.index
        if n >= len(c.top) or c.top[n] is not node:
            return None  # a node inside a subgraph
        new = None
        if n == self.fault_node and self.apply is not None:
            outs = new = self.apply(outs)
        live = self.live
        for t in [t for t in live if c.last_reader.get(t, -1) <= n and t not in c.output_set]:
            live.discard(t)
        if live:  # other differing tensors live on: no stop possible now, skip the comparisons
            live.update(t for t in node.outputs if t)
            return new
        for name, o in zip(node.outputs, outs):
            if name and not _same(o, self.trace.get(name)):
                live.add(name)
        if not live:
            raise _Masked()
        return new


class _NaiveHook:
    """Applies an activation fault during a full run (no trace, no early stop)."""

    def __init__(self, camp: "_Campaign", fault_node: int, apply):
        self.camp, self.fault_node, self.apply = camp, fault_node, apply

    def __call__(self, node, outs):
        n = node.index
        if self.apply is None or n != self.fault_node or self.camp.top[n] is not node:
            return None
        return self.apply(outs)


def _fault_plan_class():
    from .precision import PrecisionPlan

    class _FaultPlan(PrecisionPlan):
        """A precision plan that keeps faulty tensors in their storage format: a flipped fp16
        weight stays what the fault made it (the plan would otherwise saturate an inf)."""

        def __init__(self, policy, model, pinned: dict, tags: dict):
            super().__init__(policy, model)
            self.tags.update(tags)  # formats of the tensors the cone re-run reads from the trace
            self.tags.update(pinned)
            self._pinned = pinned

        def on_graph_input(self, name, x):
            x = super().on_graph_input(name, x)
            if name in self._pinned:
                self.tags[name] = self._pinned[name]
            return x

        def on_outputs(self, node, outs, state):
            res = super().on_outputs(node, outs, state)
            for t in node.outputs:
                if t in self._pinned:
                    self.tags[t] = self._pinned[t]
            return res
    return _FaultPlan


class _Campaign:
    """Everything one process needs to run trials: the model, fault-free traces, the sites."""

    def __init__(self, model, inputs: list[dict], cfg: _Config):
        from .interpreter import FP32_PLAN
        from .policy import Policy, preset
        from .precision import make_plan
        self.model, self.cfg = model, cfg
        g = model.graph
        pol = cfg.precision
        self.policy = preset(pol) if isinstance(pol, str) else pol
        if not isinstance(self.policy, Policy):
            raise HalfsimError(f"precision must be a preset name or a Policy, not {type(pol).__name__}")
        self.top = list(g.nodes)
        self.output_set = set(g.output_names)
        self.last_reader = {t: max(c) for t, c in g.consumers.items() if c}
        self.bases: list[_Base] = []
        plan0 = None
        for feeds in inputs:
            plan = make_plan(self.policy, model)
            plan0 = plan0 or plan
            r = model.run(feeds, precision=plan, keep_trace=True)
            tr = r.trace
            # Feeds taken from the trace are the very arrays of the trace: nothing is dirty.
            f = {k: tr[k] for k in model.check_feeds(feeds) if k in tr}
            self.bases.append(_Base(f, tr, dict(r)))
        self.identity = bool(plan0.identity)
        self.plan0 = plan0
        self._fp32 = FP32_PLAN
        self.sites = self._find_sites()
        if cfg.fault in BIT_FAULTS:
            for s in self.sites:
                pos = s.layout.positions(cfg.field)
                if cfg.bit is not None:
                    bad = [b for b in cfg.bit if b >= s.layout.bits]
                    if bad:
                        raise HalfsimError(f"bit {bad[0]} is out of range for {s.tensor!r} stored in {s.layout.name} "
                                           f"({s.layout.bits} bits)")
                elif cfg.bits > len(pos):
                    raise HalfsimError(f"cannot flip {cfg.bits} distinct bits in the {cfg.field} field of "
                                       f"{s.layout.name} ({len(pos)} bits)")
        self._memo: dict = {}
        self._policies: dict = {}
        self.naive = False  # True: every trial re-runs the whole model (benchmarks, cross-checks)
        self.row_mode = False  # batch_rows=True: re-run only the faulty batch row where checked safe
        self._static = set(g.initializers) | {n.outputs[0] for n in self.top if n.op_type == "Constant" and n.outputs}
        self._batches: dict = {}
        self._rows: dict = {}
        self._row_checked: dict = {}

    # -- targets ----------------------------------------------------------------------
    def _matches(self, node) -> bool:
        c = self.cfg
        if c.op_types is not None and node.op_type not in c.op_types:
            return False
        return fnmatch.fnmatchcase(node.label, c.nodes)

    def _fmt_of(self, name: str, consumers: Iterable[int] = ()) -> Format:
        from .formats import FORMATS
        from .precision import _within
        fmt = FORMATS["fp32"]
        if not self.identity:
            p = self.plan0
            fmt = p.tags.get(name, fmt)
            for i in consumers:  # a constant is stored in the narrowest format a consumer reads it in
                st = p.node_precision(self.top[i]).storage
                if st != "inherit":
                    f = p.fmt(st)
                    if _within(f, fmt):
                        fmt = f
        return fmt

    def _find_sites(self) -> list[_Site]:
        g, cfg = self.model.graph, self.cfg
        tr0 = self.bases[0].trace
        sites: list[_Site] = []
        if cfg.target == "activations":
            for n in self.top:
                if n.op_type == "Constant" or not self._matches(n):
                    continue
                for slot, t in enumerate(n.outputs):
                    v = tr0.get(t) if t else None
                    if _is_float(v):
                        sites.append(_Site("activation", t, n.index, n.label, n.op_type, slot,
                                           _layout(v.dtype, self._fmt_of(t)), int(v.size)))
        else:
            seen = set()
            for n in self.top:
                if n.op_type == "Constant":
                    t = n.outputs[0] if n.outputs else ""
                    v = tr0.get(t) if t else None
                    cons = g.consumers.get(t, [])
                    if _is_float(v) and (self._matches(n) or any(self._matches(self.top[i]) for i in cons)):
                        sites.append(_Site("constant", t, n.index, n.label, n.op_type, 0,
                                           _layout(v.dtype, self._fmt_of(t, cons)), int(v.size)))
                    continue
                if not self._matches(n):
                    continue
                for t in n.inputs:
                    if t in g.initializers and t not in seen and _is_float(tr0.get(t)):
                        seen.add(t)
                        v = tr0[t]
                        sites.append(_Site("weight", t, n.index, n.label, n.op_type, 0,
                                           _layout(v.dtype, self._fmt_of(t, g.consumers.get(t, []))), int(v.size)))
            sites.sort(key=lambda s: s.node)
        if not sites:
            what = f"--nodes {cfg.nodes!r}" + (f" and op types {list(cfg.op_types)}" if cfg.op_types else "")
            kind = "float activations" if cfg.target == "activations" else "float weights"
            raise HalfsimError(f"{what} matches no node with {kind} in this model")
        return sites

    # -- one trial --------------------------------------------------------------------
    def trial(self, seed: int, i: int) -> dict:
        cfg = self.cfg
        rng = np.random.default_rng(np.random.SeedSequence([seed, i]))
        j = int(rng.integers(len(self.bases)))
        if cfg.sample == "element":
            w = np.array([s.size for s in self.sites], dtype=np.float64)
            si = int(rng.choice(len(self.sites), p=w / w.sum()))
        else:
            si = int(rng.integers(len(self.sites)))
        site = self.sites[si]
        runs = list(range(len(self.bases))) if cfg.permanent else [j]
        rec: dict[str, Any] = {"trial": i, "input": None if cfg.permanent else j, "node": site.label,
                               "op_type": site.op_type, "tensor": site.tensor, "target": site.kind,
                               "format": site.layout.name}
        if cfg.fault in PRECISION_FAULTS:
            draw = None
            rec.update(elements=site.size, bits=[])
        else:
            size = self.bases[runs[0]].trace[site.tensor].size
            draw = self._draw(rng, site, size)
            rec.update(elements=int(len(draw["idx"])), bits=sorted(set(int(b) for b in draw["bits"])))
        outcome, metric, err, sample = "masked", 0.0, None, None
        for k in runs:
            key = (si, k) if draw is None and not self.naive else None
            if key is not None and key in self._memo:
                o, m, e, smp = self._memo[key]
            else:
                o, m, e, smp = self._run(site, draw, k)
                if key is not None:
                    self._memo[key] = (o, m, e, smp)
            sample = sample or smp
            if _RANK[o] > _RANK[outcome]:
                outcome, err = o, e
            metric = max(metric, m) if not math.isnan(m) else m
            if outcome == "detected":  # the worst outcome: later inputs cannot change it
                break
        rec.update(outcome=outcome, metric=metric)
        if sample is not None:
            rec.update(index=sample[0], before=sample[1], after=sample[2])
        if err:
            rec["error"] = err
        return rec

    def _draw(self, rng: np.random.Generator, site: _Site, size: int) -> dict:
        cfg = self.cfg
        k = max(1, int(round(cfg.fraction * size))) if cfg.fraction is not None else min(cfg.count, size)
        idx = np.sort(rng.choice(size, size=k, replace=False)) if k > 1 else rng.integers(size, size=1)
        d: dict[str, Any] = {"idx": idx.astype(np.int64), "bits": [], "masks": None, "codes": None}
        if cfg.fault in BIT_FAULTS:
            pos = np.array(cfg.bit if cfg.bit is not None else site.layout.positions(cfg.field))
            masks = np.zeros(k, np.uint64)
            chosen = []
            for e in range(k):
                b = pos[rng.choice(len(pos), size=cfg.bits, replace=False)] if cfg.bits > 1 else pos[[rng.integers(len(pos))]]
                chosen.extend(int(x) for x in b)
                for x in b:
                    masks[e] |= np.uint64(1) << np.uint64(x)
            d["masks"], d["bits"] = masks, chosen
        elif cfg.fault == "random":
            lay = site.layout
            codes = rng.integers(0, 1 << lay.bits, size=k, dtype=np.uint64)
            for _ in range(200):  # redraw non-finite patterns: a random *value* is finite
                bad = ~np.isfinite(lay.from_bits(codes).astype(np.float64))
                if not bad.any():
                    break
                codes[bad] = rng.integers(0, 1 << lay.bits, size=int(bad.sum()), dtype=np.uint64)
            d["codes"] = codes
        return d

    def _apply(self, arr: np.ndarray, site: _Site, draw: dict | None) -> np.ndarray:
        cfg, lay = self.cfg, site.layout
        if draw is None:  # a precision fault on a weight: the whole tensor
            if cfg.fault == "ftz":
                fmt = lay.fmt or get_format(lay.name if lay.name != "fp64" else "fp32")
                return round_fmt(arr, fmt, subnormals="ftz").astype(arr.dtype)
            return round_fmt(arr, PRECISION_FAULTS[cfg.fault], overflow="saturate").astype(arr.dtype)
        flat = np.array(arr, copy=True).reshape(-1)
        idx = draw["idx"] % flat.size
        vals = flat[idx]
        f = cfg.fault
        if f in BIT_FAULTS:
            codes = lay.to_bits(vals)
            m = draw["masks"]
            codes = codes ^ m if f == "bitflip" else (codes & ~m if f == "stuck-at-0" else codes | m)
            new = lay.from_bits(codes)
        elif f == "random":
            new = lay.from_bits(draw["codes"])
        else:
            v = {"nan": np.nan, "inf": np.inf if lay.has_inf else np.nan,
                 "-inf": -np.inf if lay.has_inf else np.nan, "zero": 0.0}.get(f)
            if f == "max":
                new = np.copysign(lay.max, vals.astype(np.float64))
            else:
                new = np.full(len(idx), v)
        flat[idx] = np.asarray(new).astype(flat.dtype)
        return flat.reshape(arr.shape)

    def _precision_for(self, site: _Site):
        """The precision of a faulty run: the campaign's policy, plus for a precision fault on
        an activation a rule forcing that one node."""
        from .policy import _glob_escape
        cfg = self.cfg
        if cfg.fault in PRECISION_FAULTS and site.kind == "activation":
            pol = self._policies.get(site.node)
            if pol is None:
                pol = self.policy.copy(self.policy.name + "+fault")
                fmt = PRECISION_FAULTS[cfg.fault]
                pol.add({"subnormals": "ftz"} if fmt is None else {"storage": fmt, "compute": fmt},
                        name=_glob_escape(site.label))
                self._policies[site.node] = pol
            return _fault_plan_class()(pol, self.model, {}, getattr(self.plan0, "tags", {}))
        return None

    def _run(self, site: _Site, draw: dict | None, k: int) -> tuple[str, float, str | None, Any]:
        base = self.bases[k]
        model, cfg = self.model, self.cfg
        feeds = base.feeds
        apply = None
        dirty: list[int] = []
        live: set = set()
        pinned: dict = {}
        sample = None
        orig = base.trace[site.tensor]
        trace = cmp_trace = base.trace
        row = None
        box = []
        precision = self._precision_for(site)
        if site.kind == "weight":
            faulty = self._apply(orig, site, draw)
            feeds = dict(feeds)
            feeds[site.tensor] = faulty
            live = {site.tensor}
            pinned[site.tensor] = site.layout.fmt or get_format("fp32")
            sample = self._sample(orig, faulty, draw)
            if _same(faulty, orig) and not self.naive:
                return "masked", 0.0, None, sample
        elif cfg.fault in PRECISION_FAULTS:
            dirty = [site.node]
        else:
            if site.kind == "constant":
                pinned[site.tensor] = site.layout.fmt or get_format("fp32")
            if self.naive:
                dirty = [site.node]
                slot = site.slot
                box: list = []

                def apply(outs, _slot=slot, _box=box):
                    outs = list(outs)
                    new = self._apply(outs[_slot], site, draw)
                    _box.append(self._sample(outs[_slot], new, draw))
                    outs[_slot] = new
                    return outs
            else:
                # The faulty tensor goes into a copy of the trace: only its readers re-run.
                faulty = self._apply(orig, site, draw)
                sample = self._sample(orig, faulty, draw)
                if _same(faulty, orig):
                    return "masked", 0.0, None, sample
                b = self._fault_row(site, orig, draw, k)
                if b is not None:  # only row b of the batch can change: re-run that row alone
                    trace, feeds = self._row_trace(k, b)
                    cmp_trace = trace
                    trace = Trace(trace)
                    trace[site.tensor] = faulty[b:b + 1]
                    row = b
                else:
                    trace = Trace(base.trace)
                    trace[site.tensor] = faulty
                dirty = sorted(set(self.model.graph.consumers.get(site.tensor, ())))
                live = {site.tensor}
        if precision is None:
            precision = self._fp32 if self.identity else _fault_plan_class()(self.policy, model, pinned, getattr(self.plan0, "tags", {}))
        fnode = site.node if (dirty or self.naive) else -1
        if self.naive:  # the reference way: the whole model from scratch, the fault applied by a hook
            hook, reuse, dirty_arg = _NaiveHook(self, fnode, apply), None, None
        else:
            hook, reuse, dirty_arg = _Tracker(self, cmp_trace, -1, None, live), trace, dirty
        try:
            with np.errstate(all="ignore"):  # faulty values overflow and go NaN: that is the point
                out = model.run(feeds, precision=precision, hook=hook, reuse=reuse, dirty=dirty_arg)
        except _Masked:
            return "masked", 0.0, None, sample or (box[0] if box else None)
        except MemoryError:
            return "detected", math.inf, "out of memory", sample
        except Exception as e:  # a faulty value broke the run (e.g. a shape): a detected error
            from .graph import _one_line
            return "detected", math.inf, f"{type(e).__name__}: {_one_line(e)}", sample
        if box:
            sample = box[0]
        if row is not None:
            out = {n: self._paste(r, out[n], row) for n, r in base.outputs.items()}
        o, m = self._judge(out, base.outputs)
        return o, m, None, sample

    # -- batch rows ---------------------------------------------------------------------
    # A fault in row b of a batch-shaped activation only changes row b downstream when the
    # model treats batch rows independently. Each site is checked once (its cone re-run on row 0
    # of the first input alone must reproduce the batch run's row bit for bit, else the site
    # keeps full-batch re-runs). BLAS gives different last bits for different row counts, so
    # fp32 GEMM cones mostly fail the check; fp16/bf16 storage usually rounds the difference
    # away, but not provably for every row: hence opt-in.

    def _batch(self, k: int) -> int:
        b = self._batches.get(k)
        if b is None:
            dims = {v.shape[0] if isinstance(v, np.ndarray) and v.ndim else -1
                    for n, v in self.bases[k].feeds.items() if n not in self._static}
            b = self._batches[k] = dims.pop() if len(dims) == 1 else 0
        return b

    def _row_trace(self, k: int, b: int):
        key = (k, b)
        hit = self._rows.get(key)
        if hit is None:
            n = self._batch(k)
            rt = Trace()
            for name, v in self.bases[k].trace.items():
                big = isinstance(v, np.ndarray) and v.ndim and v.shape[0] == n and name not in self._static
                rt[name] = v[b:b + 1] if big else v
            hit = (rt, {f: rt[f] for f in self.bases[k].feeds})
            if len(self._rows) > 256:
                self._rows.clear()
            self._rows[key] = hit
        return hit

    def _paste(self, ref, row_out, b: int):
        if isinstance(ref, np.ndarray) and ref.ndim and isinstance(row_out, np.ndarray) and \
                row_out.shape[:1] == (1,) and ref.shape[0] > 1 and row_out.shape[1:] == ref.shape[1:]:
            full = ref.copy()
            full[b:b + 1] = row_out
            return full
        return row_out

    def _fault_row(self, site: _Site, orig: np.ndarray, draw: dict, k: int) -> int | None:
        n = self._batch(k)
        if n < 2 or not self.row_mode or orig.ndim == 0 or orig.shape[0] != n:
            return None
        rows = set(((draw["idx"] % orig.size) // (orig.size // n)).tolist())
        if len(rows) != 1 or not self._row_ok(site):
            return None
        return rows.pop()

    def _row_ok(self, site: _Site) -> bool:
        ok = self._row_checked.get(site.tensor)
        if ok is None:
            ok = False
            k = 0
            n = self._batch(k)
            if n >= 2:
                rt, feeds = self._row_trace(k, 0)
                prec = self._fp32 if self.identity else _fault_plan_class()(self.policy, self.model, {},
                                                                             getattr(self.plan0, "tags", {}))
                dirty = sorted(set(self.model.graph.consumers.get(site.tensor, ())))
                try:
                    with np.errstate(all="ignore"):
                        out = self.model.run(feeds, precision=prec, reuse=rt, dirty=dirty)
                    ok = all(_same(self._paste(r, out[name], 0), r) for name, r in self.bases[k].outputs.items())
                except Exception:
                    ok = False
            self._row_checked[site.tensor] = ok
        return ok

    @staticmethod
    def _sample(before: np.ndarray, after: np.ndarray, draw: dict | None):
        if draw is None:
            return None
        idx = (draw["idx"][:8] % before.size).tolist()
        with np.errstate(all="ignore"):
            b = before.reshape(-1)[idx].astype(np.float64)
            a = after.reshape(-1)[idx].astype(np.float64)
        return idx, [_num(x) for x in b], [_num(x) for x in a]

    def _judge(self, out: Mapping, ref: Mapping) -> tuple[str, float]:
        if all(_same(out[k], r) for k, r in ref.items()):
            return "masked", 0.0
        fn = M.get(self.cfg.metric)
        worst = 0.0
        for name, r in ref.items():
            o = out[name]
            if _is_float(r) or _is_float(o):
                if M.nonfinite(o, r):
                    return "detected", math.inf
                worst = max(worst, fn(o, r))
            elif isinstance(r, np.ndarray):
                worst = max(worst, 0.0 if _same(o, r) else math.inf)
        return ("sdc" if worst > self.cfg.tol else "masked"), worst


_RANK = {"masked": 0, "sdc": 1, "detected": 2}


# ---------------------------------------------------------------- execution

_WORKER: dict[str, _Campaign] = {}
_WORKER_LOCK = threading.Lock()


def _spec_campaign(spec: dict) -> _Campaign:
    with _WORKER_LOCK:
        c = _WORKER.get(spec["token"])
        if c is None:
            from .interpreter import load
            c = _Campaign(load(spec["model"]), spec["inputs"], spec["cfg"])
            c.row_mode = bool(spec.get("rows"))
            if len(_WORKER) >= 2:
                _WORKER.clear()
            _WORKER[spec["token"]] = c
        return c


def _run_chunk(spec: dict, seed: int, trials: list[int]) -> list[dict]:
    """Run some trials of a campaign (in a pool process or on a dask worker)."""
    c = _spec_campaign(spec)
    return [c.trial(seed, i) for i in trials]


_POOL_SPEC: dict = {}


def _pool_init(spec: dict) -> None:
    _POOL_SPEC["spec"] = spec
    _spec_campaign(spec)


def _pool_chunk(seed: int, trials: list[int]) -> list[dict]:
    return _run_chunk(_POOL_SPEC["spec"], seed, trials)


def _chunks(ids: list[int], n: int) -> list[list[int]]:
    size = max(1, math.ceil(len(ids) / n))
    return [ids[k:k + size] for k in range(0, len(ids), size)]


_SINGLE_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def _iter_processes(spec, seed, ids, workers) -> Iterator[dict]:
    import concurrent.futures as cf
    import multiprocessing as mp
    saved = {k: os.environ.get(k) for k in _SINGLE_THREAD_ENV}
    os.environ.update({k: "1" for k in _SINGLE_THREAD_ENV})  # one BLAS thread per worker process
    try:
        ex = cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                    initializer=_pool_init, initargs=(spec,))
        futs = [ex.submit(_pool_chunk, seed, ch) for ch in _chunks(ids, workers * 4)]
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        for f in cf.as_completed(futs):
            yield from f.result()
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def _dask_client(address: str, timeout: float):
    try:
        from distributed import Client
    except ImportError:
        raise HalfsimError("--scheduler needs dask.distributed (pip install 'dask[distributed]')") from None
    if not isinstance(address, str) or ("://" not in address and ":" not in address):
        raise HalfsimError(f"invalid scheduler address {address!r} (expected tcp://HOST:PORT)")
    import logging
    quiet = [logging.getLogger(n) for n in ("distributed", "distributed.comm", "distributed.client")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.CRITICAL)
    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except Exception as e:
        from .graph import _one_line
        raise HalfsimError(f"cannot reach dask scheduler {address}: {type(e).__name__}: {_one_line(e)}") from None
    finally:
        for lg, lv in zip(quiet, levels):
            lg.setLevel(lv)


def _iter_dask(spec, seed, ids, client) -> Iterator[dict]:
    try:
        nworkers = max(1, sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values()))
        sf = client.scatter(spec, broadcast=True, hash=False)
        futs = [client.submit(_run_chunk, sf, seed, ch, pure=False) for ch in _chunks(ids, nworkers * 4)]
        for f in futs:  # in submission order (as_completed would need a default client)
            yield from f.result()
    finally:
        for f in futs if "futs" in locals() else ():
            f.cancel()


# ---------------------------------------------------------------- results

class InjectResult:
    """Outcome of a campaign: per-trial table, rates with Wilson intervals, per node and bit."""

    def __init__(self, table: list[dict], cfg: _Config, seed: int, campaign: _Campaign, info: dict):
        self.table, self.cfg, self.seed, self._campaign, self.info = table, cfg, seed, campaign, info

    @staticmethod
    def _rates(rows: list[dict]) -> dict:
        n = len(rows)
        sdc = sum(r["outcome"] == "sdc" for r in rows)
        det = sum(r["outcome"] == "detected" for r in rows)
        return {"trials": n, "sdc": sdc, "sdc_rate": sdc / n if n else 0.0, "sdc_ci95": list(wilson(sdc, n)),
                "nonfinite": det, "nonfinite_rate": det / n if n else 0.0, "nonfinite_ci95": list(wilson(det, n)),
                "masked_rate": (n - sdc - det) / n if n else 0.0}

    @property
    def rates(self) -> dict:
        return self._rates(self.table)

    @property
    def by_node(self) -> list[dict]:
        groups: dict[str, list] = {}
        for r in self.table:
            groups.setdefault(r["node"], []).append(r)
        order = {s.label: s.node for s in self._campaign.sites} if self._campaign else {}
        out = []
        for node, rows in sorted(groups.items(), key=lambda kv: order.get(kv[0], 0)):
            d = self._rates(rows)
            out.append({"node": node, "op_type": rows[0]["op_type"], "tensors": sorted({r["tensor"] for r in rows}),
                        "trials": d["trials"], "sdc_rate": d["sdc_rate"], "sdc_ci95": d["sdc_ci95"],
                        "nonfinite_rate": d["nonfinite_rate"], "masked_rate": d["masked_rate"]})
        return out

    @property
    def by_bit(self) -> list[dict]:
        """Rates per (storage format, bit position). A trial hitting several bits counts
        toward each of them."""
        groups: dict[tuple, list] = {}
        for r in self.table:
            for b in r.get("bits", []):
                groups.setdefault((r["format"], b), []).append(r)
        lays = {s.layout.name: s.layout for s in self._campaign.sites} if self._campaign else {}
        out = []
        for (fmt, b), rows in sorted(groups.items()):
            d = self._rates(rows)
            lay = lays.get(fmt)
            out.append({"format": fmt, "bit": b, "field": lay.field_of(b) if lay else None, "trials": d["trials"],
                        "sdc_rate": d["sdc_rate"], "sdc_ci95": d["sdc_ci95"], "nonfinite_rate": d["nonfinite_rate"]})
        return out

    def replay(self, i: int) -> dict:
        """Run trial i again, alone, in this process; returns its record (same as table[i])."""
        if not isinstance(i, (int, np.integer)) or not 0 <= i < len(self.table):
            raise HalfsimError(f"trial {i!r} out of range (0..{len(self.table) - 1})")
        return self._campaign.trial(self.seed, int(i))

    def to_json(self) -> dict:
        r = self.rates
        cfg = self.cfg
        return {"version": 1, "trials": r["trials"], "sdc_rate": r["sdc_rate"], "sdc_ci95": r["sdc_ci95"],
                "nonfinite_rate": r["nonfinite_rate"], "nonfinite_ci95": r["nonfinite_ci95"],
                "masked_rate": r["masked_rate"], "by_node": self.by_node, "by_bit": self.by_bit, "seed": self.seed,
                "fault": cfg.fault_dict(),
                "target": {"kind": cfg.target, "nodes": cfg.nodes,
                           "op_types": list(cfg.op_types) if cfg.op_types else None,
                           "sites": len(self._campaign.sites) if self._campaign else None},
                "precision": cfg.precision if isinstance(cfg.precision, str) else getattr(cfg.precision, "name", "custom"),
                "metric": cfg.metric, "tol": cfg.tol, "sample": cfg.sample, **self.info,
                "records": [{k: (_num(v) if k == "metric" else v) for k, v in t.items()} for t in self.table]}

    def summary(self) -> str:
        r = self.rates
        lo, hi = r["sdc_ci95"]
        lines = [f"{r['trials']} trials ({self.cfg.fault}, {self.cfg.target}, {self.info.get('execution', '')}): "
                 f"SDC {r['sdc_rate']:.4f} [95% CI {lo:.4f}, {hi:.4f}], NaN/inf at outputs {r['nonfinite_rate']:.4f}, "
                 f"masked {r['masked_rate']:.4f}"]
        worst = sorted(self.by_node, key=lambda d: -d["sdc_rate"])[:5]
        for d in worst:
            lines.append(f"  {d['node']:<40} {d['op_type']:<12} trials {d['trials']:>5}  SDC {d['sdc_rate']:.3f} "
                         f"[{d['sdc_ci95'][0]:.3f}, {d['sdc_ci95'][1]:.3f}]")
        return "\n".join(lines)

    def write_html(self, path: str) -> None:
        text = _html_report(self)
        try:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            raise HalfsimError(f"cannot write {path}: {e.strerror}") from None


def _bar_svg(labels: list[str], rates: list[float], cis: list, title: str, xlabel: str, colors=None) -> str:
    from .report import _plt, _svg
    plt = _plt()
    x = np.arange(len(labels))
    r = np.asarray(rates, dtype=float)
    lo = np.asarray([c[0] for c in cis], dtype=float)
    hi = np.asarray([c[1] for c in cis], dtype=float)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * len(labels) + 2), 3.8))
    err = np.maximum(np.vstack([r - lo, hi - r]), 0.0)  # rounding can put a bound a hair past the rate
    ax.bar(x, r, color=colors or "#4c72b0", yerr=err, capsize=2, ecolor="#333")
    step = max(1, len(labels) // 60)
    ax.set_xticks(x[::step])
    ax.set_xticklabels(labels[::step], rotation=75, fontsize=7)
    ax.set_ylim(0, max(0.05, float(hi.max(initial=0)) * 1.1))
    ax.set_ylabel("SDC rate (95% Wilson CI)")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    return _svg(fig)


def _html_report(res: InjectResult) -> str:
    from .report import _CSS, _table, versions
    j = res.to_json()
    title = f"halfsim inject: {res.cfg.fault} in {res.cfg.target}"
    lo, hi = j["sdc_ci95"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{_html.escape(title)}</h1>",
             f"<p>model: {_html.escape(str(j.get('model', '')))}; precision {_html.escape(str(j['precision']))}; "
             f"metric {j['metric']} (tol {j['tol']}); seed {j['seed']}; {j['trials']} trials.</p>",
             f"<p><b>SDC rate {j['sdc_rate']:.4f}</b> (95% Wilson interval [{lo:.4f}, {hi:.4f}]), NaN/inf at an output "
             f"{j['nonfinite_rate']:.4f}, masked {j['masked_rate']:.4f}.</p>"]
    bn = j["by_node"]
    if bn:
        parts.append("<h2>Vulnerability per layer (topological order)</h2>")
        parts.append("<div class='plot'>" + _bar_svg([f"{d['node']} ({d['op_type']})" for d in bn],
                                                     [d["sdc_rate"] for d in bn], [d["sdc_ci95"] for d in bn],
                                                     "SDC rate per node", "node") + "</div>")
        rows = [{**d, "sdc_ci95": f"[{d['sdc_ci95'][0]:.3f}, {d['sdc_ci95'][1]:.3f}]"} for d in bn]
        parts.append(_table(rows, ["node", "op_type", "trials", "sdc_rate", "sdc_ci95", "nonfinite_rate", "masked_rate"]))
    bb = j["by_bit"]
    if bb:
        col = {"sign": "#c44e52", "exponent": "#dd8452", "mantissa": "#4c72b0", None: "#888"}
        parts.append("<h2>SDC by bit position</h2>")
        parts.append("<div class='plot'>" + _bar_svg([f"{d['format']}:{d['bit']}" for d in bb], [d["sdc_rate"] for d in bb],
                                                     [d["sdc_ci95"] for d in bb],
                                                     "SDC rate per bit (red sign, orange exponent, blue mantissa)",
                                                     "format:bit (0 = lowest mantissa bit)",
                                                     [col[d["field"]] for d in bb]) + "</div>")
        rows = [{**d, "sdc_ci95": f"[{d['sdc_ci95'][0]:.3f}, {d['sdc_ci95'][1]:.3f}]"} for d in bb]
        parts.append(_table(rows, ["format", "bit", "field", "trials", "sdc_rate", "sdc_ci95", "nonfinite_rate"]))
    parts.append("<h2>Versions</h2>" + _table([versions()], list(versions())))
    parts.append("</body></html>")
    return "\n".join(parts)


# ---------------------------------------------------------------- entry point

def check_options(fault: str = "bitflip", field: str = "exponent", target: str = "activations", nodes: str = "*",
                  trials: int = 1000, seed: int = 0, metric: str = "top1", tol: float = 0.0, bits: int = 1,
                  bit: Any = None, count: int = 1, fraction: float | None = None, sample: str = "node") -> None:
    """Validate campaign options before any work (one-line HalfsimError on the first bad one)."""
    _check_config(fault, field, bits, bit, count, fraction, False, target, nodes, None, "fp32", metric, tol, sample)
    if isinstance(trials, bool) or not isinstance(trials, (int, np.integer)) or trials <= 0:
        raise HalfsimError(f"trials must be a positive integer, not {trials!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise HalfsimError(f"seed must be a non-negative integer, not {seed!r}")


def inject(model: Any, inputs: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]], fault: str = "bitflip",
           field: str = "exponent", target: str = "activations", nodes: str = "*", trials: int = 1000, seed: int = 0,
           precision: Any = "fp32", metric: str = "top1", tol: float = 0.0, scheduler: str | None = None, *,
           bits: int = 1, bit: int | Sequence[int] | None = None, count: int = 1, fraction: float | None = None,
           op_types: str | Sequence[str] | None = None, permanent: bool = False, sample: str = "node",
           workers: int | None = None, connect_timeout: float = 3.0, show_progress: bool = True,
           naive: bool = False, batch_rows: bool = False) -> InjectResult:
    """Run a fault-injection campaign.

    model: a Model or a path; inputs: a feed dict or a list of them (each one inference).
    fault: bitflip | stuck-at-0 | stuck-at-1 (a bit chosen uniformly in `field`, or among the
      positions `bit`, in the tensor's storage format; `bits` distinct bits per element) |
      nan | inf | -inf | zero | max (largest finite, sign kept) | random (a random finite value) |
      force-fp16 | force-bf16 | force-fp8-e4m3 | force-fp8-e5m2 | ftz (one node's precision).
    target: activations (node outputs) or weights (initializers and Constant tensors) of nodes
      whose label matches the glob `nodes` (and whose op type is in `op_types`).
    count / fraction: elements hit per trial. permanent: the fault hits every input of the
      campaign (outcome: the worst one), else one input drawn per trial.
    sample: "node" draws the faulty tensor uniformly among targets (per-layer vulnerability),
      "element" proportionally to its size (a uniform upset over all stored values).
    Outcome per trial: detected (NaN/inf at an output, or the run failed), sdc (metric beyond
    tol; for top1 any changed argmax), masked. scheduler: tcp://HOST:PORT of a dask cluster;
    otherwise a local process pool when worthwhile (workers=None: CPU count, used when the
    trials would take more than a few seconds; workers=N > 1: always N processes; 1: serial).
    batch_rows: for a single-row activation fault in a batched input, re-run only that row where
      a one-off check shows the site's cone treats rows independently bit for bit (faster on
      fp16/bf16 campaigns; the check covers row 0 of the first input, not every row).
    naive: re-run the whole model for every trial (no trace reuse, no early stop), serially:
      the slow reference way, for benchmarks and cross-checks; outcomes are the same.
    """
    cfg = _check_config(fault, field, bits, bit, count, fraction, permanent, target, nodes, op_types,
                        precision, metric, tol, sample)
    if isinstance(trials, bool) or not isinstance(trials, (int, np.integer)) or trials <= 0:
        raise HalfsimError(f"trials must be a positive integer, not {trials!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise HalfsimError(f"seed must be a non-negative integer, not {seed!r}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise HalfsimError(f"workers must be a positive integer, not {workers!r}")
    client = None
    if scheduler is not None:  # connect first: an unreachable cluster fails before any work
        client = scheduler if hasattr(scheduler, "submit") else _dask_client(scheduler, connect_timeout)
    own_client = client is not None and client is not scheduler
    try:
        return _inject(model, inputs, cfg, trials, seed, client, workers, show_progress, naive, batch_rows)
    finally:
        if own_client:
            client.close()


def _inject(model, inputs, cfg: _Config, trials: int, seed: int, client, workers, show_progress: bool,
            naive: bool, batch_rows: bool = False) -> InjectResult:
    from .interpreter import Model, load
    from .progress import progress
    m = model if isinstance(model, Model) else load(model)
    if isinstance(inputs, Mapping):
        inputs = [inputs]
    inputs = [dict(f) for f in inputs]
    if not inputs:
        raise HalfsimError("inputs is empty: give at least one feed dict")
    t0 = time.perf_counter()
    camp = _Campaign(m, inputs, cfg)
    camp.row_mode = bool(batch_rows) and not naive
    if naive:
        camp.naive, workers, client = True, 1, None
    t_base = time.perf_counter() - t0
    n = int(trials)
    ids = list(range(n))
    results: dict[int, dict] = {}

    def spec() -> dict:
        model_bytes = m.proto.SerializeToString()
        h = hashlib.sha256(model_bytes)
        h.update(pickle.dumps((inputs, cfg, camp.row_mode), protocol=4))
        return {"token": h.hexdigest(), "model": model_bytes, "inputs": inputs, "cfg": cfg, "rows": camp.row_mode}

    def stream() -> Iterator[dict]:
        if client is not None:
            info["execution"] = "dask"
            yield from _iter_dask(spec(), seed, ids, client)
            return
        nw = workers or min(os.cpu_count() or 1, 8)
        # A few trials serially: if the rest is quick, stay serial (process start-up is ~2 s).
        head = ids[:min(n, 8)]
        ts = time.perf_counter()
        for i in head:
            yield camp.trial(seed, i)
        per = (time.perf_counter() - ts) / max(1, len(head))
        rest = ids[len(head):]
        forced = workers is not None and workers > 1
        if rest and nw > 1 and (forced or per * len(rest) > 6.0 + 2.0 * t_base):
            info["execution"], info["workers"] = "processes", nw
            try:
                yield from _iter_processes(spec(), seed, rest, nw)
                return
            except (OSError, NotImplementedError, ImportError, PermissionError) as e:
                info["fallback"] = f"serial ({type(e).__name__})"
            except Exception as e:  # BrokenProcessPool and friends: the pool cannot be used
                if type(e).__name__ not in ("BrokenProcessPool", "BrokenExecutor"):
                    raise
                info["fallback"] = f"serial ({type(e).__name__})"
            info["execution"] = "serial"
        for i in rest:
            if i not in results:
                yield camp.trial(seed, i)

    info: dict[str, Any] = {"execution": "serial", "model": getattr(m, "source", ""), "inputs": len(inputs),
                            "batch_rows": camp.row_mode}
    t1 = time.perf_counter()
    it = stream()
    for rec in (progress(it, desc="fault trials", total=n) if show_progress else it):
        results[rec["trial"]] = rec
    dt = time.perf_counter() - t1
    info.update(seconds=round(dt + t_base, 3), trials_per_second=round(n / dt, 2) if dt > 0 else None)
    table = [results[i] for i in ids]
    return InjectResult(table, cfg, int(seed), camp, info)
