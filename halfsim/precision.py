"""The precision plan: applies a Policy while the interpreter runs.

Values travel as float32 carriers holding only values of their format; every tensor carries a
tag (the format it is known to hold). Before a node runs, float inputs wider than the node's
storage format are rounded (constants with the policy's weights overflow, saturating by
default; activations overflowing to inf, as a Cast would). After it runs, float outputs of
value-computing ops are rounded to the storage format and numerical events (overflow,
saturation, underflow to zero, NaN created) are recorded. Tensors typed float16/bfloat16 in the
model (fp16-converted models) are widened exactly to float32 for the op and stored back in
their own type, so Cast really rounds and every op has true low-precision semantics."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .errors import HalfsimError
from .formats import Format, _params as _format_params, format as get_format, round as round_fmt
from .interpreter import FP32_PLAN
from .kernels.blas import matmul as split_matmul
from .policy import OpPrecision, Policy, preset

FP32 = get_format("fp32")
_LOW_DTYPES = {np.dtype(np.float16): "fp16"}
try:  # bfloat16 arrays come from onnx (which depends on ml_dtypes) for bf16-typed models
    import ml_dtypes as _mld
    _LOW_DTYPES[np.dtype(_mld.bfloat16)] = "bf16"
except ImportError:  # pragma: no cover
    _mld = None
_NO_ROUND_INPUTS = {("Resize", 1), ("Resize", 2), ("Upsample", 1), ("NonMaxSuppression", 3),
                    ("NonMaxSuppression", 4), ("RoiAlign", 1)}
_NO_ROUND_OPS = frozenset(op for op, _ in _NO_ROUND_INPUTS)
# Ops whose float outputs are values of their float inputs (or 0): when every float input
# already holds the storage format, rounding the outputs changes nothing and raises no event.
# Clip only with both bounds given (a missing one is float32's max, which may overflow).
_SELECTING_OPS = frozenset(("Relu", "Max", "Min", "Abs", "Neg", "MaxPool", "GlobalMaxPool", "ReduceMax",
                            "ReduceMin", "Where", "Clip"))


def _within(a: Format, b: Format) -> bool:
    """Every value of `a` is a value of `b`."""
    return a.ebits <= b.ebits and a.mbits <= b.mbits and (a.has_inf <= b.has_inf or a.ebits < b.ebits)


@dataclass
class Event:
    node: str
    op_type: str
    tensor: str
    kind: str       # overflow | saturated | underflow | nan
    count: int
    constant: bool = False

    def to_dict(self) -> dict:
        return {"node": self.node, "op_type": self.op_type, "tensor": self.tensor, "kind": self.kind,
                "count": self.count, "constant": self.constant}


class PrecisionPlan:
    identity = False

    def __init__(self, policy: Policy, model: Any):
        self.policy = policy
        self.model = model
        self.events: list[Event] = []
        self.tags: dict[str, Format] = {}
        self._fmts: dict[str, Format] = {}
        self._precs: dict[int, OpPrecision] = {}
        self.constants = set(model.graph.initializers) | _constant_outputs(model.graph)
        self.weights_fmt = self.fmt(policy.weights) if policy.weights else None
        self.io_fmt = self.fmt(policy.io) if policy.io else None
        self.output_names = set(model.graph.output_names)
        self._folds: _PlanFolds | None = None
        self._resolved: dict | None = None
        self._policy_key: str | None = None
        self._rec: dict | None = None  # where a recording run keeps its decisions (plan_schedule)
        if policy.coreml_constants:
            self._coreml_keep_fp32(model.graph)

    def _coreml_keep_fp32(self, graph, consts: dict | None = None) -> None:
        """coremltools leaves in fp32 every op reading an fp32 constant beyond the fp16 range
        (magnitudes from 1e38 up count as infinities and do not block the cast)."""
        from .backends.coreml_ops import INF_THRESHOLD
        consts = dict(consts or {})
        consts.update(graph.initializers)
        for n in graph.nodes:
            if n.op_type == "Constant" and isinstance(n.attrs.get("value"), np.ndarray):
                consts[n.outputs[0]] = n.attrs["value"]
        fp16max = self.fmt("fp16").max
        for n in graph.nodes:
            for t in n.inputs:
                v = consts.get(t)
                if v is not None and v.dtype == np.float32 and v.size:
                    a = np.abs(v)
                    a = a[a < INF_THRESHOLD]
                    if a.size and float(a.max()) > fp16max:
                        self._precs[id(n)] = OpPrecision()
                        break
            for sg in n.subgraphs:
                self._coreml_keep_fp32(sg, consts)

    def fmt(self, name: str) -> Format:
        f = self._fmts.get(name)
        if f is None:
            f = self._fmts[name] = get_format(name)
        return f

    # -- interpreter interface --------------------------------------------------------
    @property
    def fold_cache(self) -> "_PlanFolds | None":
        """Where the interpreter keeps weight-only nodes folded under this plan's policy (see
        _PlanFolds). None for subclasses: they may not compute the same thing every run."""
        if type(self) is not PrecisionPlan:
            return None
        if self._folds is None:
            self._folds = _PlanFolds(self)
        return self._folds

    def node_precision(self, node) -> OpPrecision:
        p = self._precs.get(id(node))
        if p is None:
            p = self._precs[id(node)] = self._resolve(node)
        return p

    def _resolve(self, node) -> OpPrecision:
        """policy.resolve(node), kept on the model per policy (a plan lives for one run; matching
        every rule against every node again cost ~4 us a node a run). The rules' hit counts
        (unused-rule warnings) are replayed on a hit."""
        if self._resolved is None:
            self._resolved = _per_policy(self, "_policy_resolved", dict)
        rules = self.policy.rules
        hit = self._resolved.get(id(node))
        if hit is not None and hit[0] is node:
            for i in hit[2]:
                rules[i].hits += 1
            return hit[1]
        before = [r.hits for r in rules]
        p = self.policy.resolve(node)
        self._resolved[id(node)] = (node, p, [i for i, r in enumerate(rules) if r.hits != before[i]])
        return p

    @property
    def policy_key(self) -> str:
        """The policy's content as text: what per-model caches of policy-dependent work key on."""
        if self._policy_key is None:
            self._policy_key = self.policy.cache_key()
        return self._policy_key

    def set_node_precision(self, node, prec: OpPrecision) -> None:
        """Give `node` this precision instead of the policy's (the steps of a decomposed
        function body run with the precision of the node they expand)."""
        self._precs[id(node)] = prec

    def on_initializer(self, name: str, x: np.ndarray) -> np.ndarray:
        x = self._widen(name, x)
        if self.weights_fmt is not None and _is_float32(x):
            f, ov = self.weights_fmt, self.policy.weights_overflow
            x = self._cached_round((name, f.name, ov, "<weights>"), x,
                                   lambda: self._round(x, f, ov, "keep", name, "<weights>", "", True))
            self.tags[name] = f
        return x

    def on_graph_input(self, name: str, x: np.ndarray) -> np.ndarray:
        x = self._widen(name, x)
        if self.io_fmt is not None and _is_float32(x):
            x = self._round(x, self.io_fmt, "inf", "keep", name, "<input>", "", False)
            self.tags[name] = self.io_fmt
        return x

    def run_compiled(self, model, feeds: dict) -> dict | None:
        """The run's tensors from the compiled schedule of this policy (plan_schedule), or None
        when the interpreter must take the general path (which records the schedule)."""
        if type(self) is not PrecisionPlan:  # subclasses may decide differently per run
            return None
        from .plan_schedule import run
        return run(self, model, feeds)

    def on_inputs(self, node, args: list) -> tuple[list, Any]:
        prec = self._precs.get(id(node)) or self.node_precision(node)
        d = self.decide_inputs(node, args, prec)
        new = self.apply_inputs(d, node, args) if d.widen or d.rounds else list(args)
        return new, (d.prec, d, new)

    def on_outputs(self, node, outs: list, state) -> list:
        _, d, args = state
        od = self.decide_outputs(node, outs, d)
        if self._rec is not None:
            self._rec[id(node)] = (node, d, od)
        return self.apply_outputs(od, d, node, outs, args) if od.acts else outs

    # The two hooks above are split into a decision (what to round, to which format, and the
    # format tags it sets: a function of the policy, the tensors' dtypes and the tags of the
    # inputs) and its application (the rounding and events). The compiled plan schedule
    # (plan_schedule.py) keeps the decisions of a run and applies them on later runs.
    def decide_inputs(self, node, args: list, prec: OpPrecision) -> "_InDecision":
        tags = self.tags
        typed = None
        typed_idx = []
        widen = []
        set_tags: dict[str, Format] = {}
        movement = node.impl.data_movement
        dts = [a.dtype if isinstance(a, np.ndarray) else None for a in args]
        for i, (t, dt) in enumerate(zip(node.inputs, dts)):
            low = _LOW_DTYPES.get(dt) if dt is not None else None
            if low is not None:
                typed = typed or low
                typed_idx.append(i)
                # CastLike's second input only carries the target type: keep its dtype.
                if not movement and not (node.op_type == "CastLike" and i == 1):
                    widen.append(i)
                tags[t] = set_tags[t] = self.fmt(low)
        storage = self._storage(prec, node, args, typed)
        exact = False
        rounds = []
        if storage is not FP32:
            exact = (typed is None and node.op_type in _SELECTING_OPS and storage.has_inf and prec.overflow == "inf"
                     and prec.subnormals == "keep" and (node.op_type != "Clip" or (len(node.inputs) == 3 and all(node.inputs))))
            skip_some = node.op_type in _NO_ROUND_OPS
            for i, (t, dt) in enumerate(zip(node.inputs, dts)):
                if dt is None:
                    continue
                if dt == np.float32 or i in widen:
                    if skip_some and (node.op_type, i) in _NO_ROUND_INPUTS:
                        exact = False
                        continue
                    tag = tags.get(t)
                    if tag is not storage and (tag is None or not _within(tag, storage)):
                        rounds.append(i)
                elif dt.kind == "f":
                    exact = False
        if prec.storage != storage.name:
            prec = _with_storage(prec, storage.name)
        follow = _follows_input_type(node, tuple(typed_idx)) if typed else None
        return _InDecision(prec, storage, typed, follow, exact, tuple(widen), tuple(rounds), set_tags, dts)

    def apply_inputs(self, d: "_InDecision", node, args: list) -> list:
        new = list(args)
        for i in d.widen:
            new[i] = new[i].astype(np.float32)
        for i in d.rounds:
            new[i] = self._round_input(node.inputs[i], new[i], d.storage, node)
        return new

    def decide_outputs(self, node, outs: list, d: "_InDecision") -> "_OutDecision":
        tags = self.tags
        set_tags: dict[str, Format] = {}
        acts = []
        dts = [o.dtype if isinstance(o, np.ndarray) else None for o in outs]
        if node.op_type == "Constant":
            # Constants are weights: they are rounded where consumed, with the weights'
            # overflow behaviour (saturating by default), exactly like initializers.
            for t, dt in zip(node.outputs, dts):
                if t and dt is not None:
                    low = _LOW_DTYPES.get(dt)
                    if low is not None:
                        set_tags[t] = self.fmt(low)
                    elif dt == np.float32:
                        set_tags[t] = FP32
        elif node.impl.data_movement:
            tag = self._input_tag(node)
            for t, dt in zip(node.outputs, dts):
                if t and dt is not None and dt.kind == "f":
                    low = _LOW_DTYPES.get(dt)
                    set_tags[t] = self.fmt(low) if low else tag
        else:
            storage, typed, follow, exact = d.storage, d.typed, d.follow, d.exact
            for i, (t, dt) in enumerate(zip(node.outputs, dts)):
                if not t or dt is None or dt.kind != "f":
                    continue
                low = _LOW_DTYPES.get(dt)
                if low is not None:  # a Cast to float16/bfloat16: numpy rounded it already
                    if node.op_type.startswith("Cast"):
                        acts.append((i, t, _CAST_EVENTS, False, None))
                    set_tags[t] = self.fmt(low)
                    continue
                if dt != np.float32:
                    set_tags[t] = FP32
                    continue
                # Outputs typed like a float16/bfloat16 input hold that format; others (a Cast,
                # the float32 statistics of LayerNormalization) keep their own type.
                lowout = bool(typed and follow[i] and node.op_type not in ("Cast", "CastLike"))
                fmt = storage
                if lowout:
                    fmt = storage if _within(storage, self.fmt(typed)) else self.fmt(typed)
                rnd = fmt if fmt is not FP32 and not exact else None
                io = self.io_fmt is not None and t in self.output_names and not _within(fmt, self.io_fmt)
                lowdt = (np.float16 if typed == "fp16" else _mld.bfloat16) if lowout else None
                if rnd is not None or io or lowdt is not None:
                    acts.append((i, t, rnd, io, lowdt))
                set_tags[t] = self.io_fmt if io else fmt
        tags.update(set_tags)
        return _OutDecision(tuple(acts), set_tags, dts)

    def apply_outputs(self, od: "_OutDecision", d: "_InDecision", node, outs: list, args: list) -> list:
        res = list(outs)
        prec = d.prec
        for i, t, rnd, io, lowdt in od.acts:
            o = res[i]
            if rnd is _CAST_EVENTS:
                self._count_cast_events(node, t, o)
                continue
            if rnd is not None:
                o = self._round(o, rnd, prec.overflow, prec.subnormals, t, node.label, node.op_type, False,
                                inputs=args, inplace=_fresh(o, args, node))
            if io:
                o = self._round(o, self.io_fmt, "inf", "keep", t, node.label, node.op_type, False)
            if lowdt is not None:
                o = o.astype(lowdt)
            res[i] = o
        return res

    def round_output(self, o: np.ndarray, fmt: Format, prec: OpPrecision, t: str, node, args) -> np.ndarray:
        """apply_outputs for one float32 output rounded to `fmt` (no io format, no narrow
        dtype): what compiled schedules call for most outputs."""
        return self._round(o, fmt, prec.overflow, prec.subnormals, t, node.label, node.op_type, False, args,
                           _fresh(o, args, node))

    # -- accumulate-aware primitives -----------------------------------------------
    # Ops call these per GEMM, reduction or composite step (an LSTM step makes a dozen calls):
    # what they decide from the node's precision is worked out once per OpPrecision (_derived).
    def plain(self, ctx) -> bool:
        """matmul/sum are plain fp32 numpy for this node (ops may take faster fp32 paths)."""
        p = ctx.prec
        return p is None or _derived(self, p).plain

    def matmul(self, ctx, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        prec = ctx.prec
        if prec is None or a.dtype != np.float32 or b.dtype != np.float32:
            return split_matmul(a, b)
        d = _derived(self, prec)
        if d.plain:
            return split_matmul(a, b)
        if prec.operands:
            f = self.fmt(prec.operands)
            ov = "saturate" if not f.has_inf else "inf"
            a = round_fmt(a, f, rounding=prec.operand_rounding, overflow=ov)
            b = round_fmt(b, f, rounding=prec.operand_rounding, overflow=ov)
        if prec.tensor_core:
            from .tensorcore import gemm, get_model
            return gemm(a, b, get_model(prec.tensor_core))
        if d.acc_fp32:
            return split_matmul(a, b)
        from .kernels.accumulate import matmul_acc
        acc = d.acc
        return matmul_acc(a, b, acc.ebits, acc.mbits, order=prec.order, block=prec.block, fma=prec.fma)

    def sum(self, ctx, x: np.ndarray, axis, keepdims: bool) -> np.ndarray:
        prec = ctx.prec
        if prec is None or x.dtype != np.float32:
            return np.sum(x, axis=axis, keepdims=keepdims)
        d = _derived(self, prec)
        if d.acc_fp32:
            return np.sum(x, axis=axis, keepdims=keepdims)
        from .kernels.accumulate import sum_acc
        acc = d.acc
        return sum_acc(x, axis=axis, keepdims=keepdims, ebits=acc.ebits, mbits=acc.mbits, order=prec.order,
                       block=prec.block)

    def round_compute(self, ctx, x: np.ndarray) -> np.ndarray:
        prec = ctx.prec
        if prec is None or not isinstance(x, np.ndarray) or x.dtype != np.float32:
            return x
        f = _derived(self, prec).compute
        if f is None:  # within fp32: nothing to round
            return x
        return round_fmt(x, f, overflow=prec.overflow, subnormals=prec.subnormals)

    # -- helpers ---------------------------------------------------------------------
    def _storage(self, prec: OpPrecision, node, args, typed) -> Format:
        if prec.storage == "inherit":
            best = None
            for t, a in zip(node.inputs, args):
                if isinstance(a, np.ndarray) and a.dtype.kind == "f" and t not in self.constants:
                    tag = self.tags.get(t, FP32)
                    if best is None or _within(best, tag):
                        best = tag
            return best or FP32
        return self.fmt(prec.storage)

    def _input_tag(self, node) -> Format:
        best = None
        for t in node.inputs:
            tag = self.tags.get(t) if t else None
            if tag is not None and (best is None or _within(best, tag)):
                best = tag
        return best or FP32

    def _widen(self, name: str, x: np.ndarray) -> np.ndarray:
        low = _LOW_DTYPES.get(x.dtype) if isinstance(x, np.ndarray) else None
        if low is not None:
            self.tags[name] = self.fmt(low)
        elif isinstance(x, np.ndarray) and x.dtype == np.float32:
            self.tags[name] = FP32
        return x

    def _round_input(self, t: str, a: np.ndarray, fmt: Format, node) -> np.ndarray:
        if t in self.constants:
            key = (t, fmt.name, self.policy.weights_overflow, self.policy.coreml_constants, node.label)
            return self._cached_round(key, a, lambda: self._round_constant(t, a, fmt, node))
        return self._round(a, fmt, "inf", "keep", t, node.label, node.op_type, False)

    def _round_constant(self, t: str, a: np.ndarray, fmt: Format, node) -> np.ndarray:
        r = self._round(a, fmt, self.policy.weights_overflow, "keep", t, node.label, node.op_type, True)
        if self.policy.coreml_constants and a.size < 400:
            # coremltools replaces small constants that would flush to zero by the
            # smallest subnormal of the same sign.
            lost = (r == 0) & (a != 0)
            if lost.any():
                r = np.where(lost, np.copysign(np.float32(fmt.min_subnormal), a), r).astype(np.float32)
        return r

    def _cached_round(self, key: tuple, a: np.ndarray, compute) -> np.ndarray:
        """Rounded weights are kept on the model across runs (keyed by the very array, so an
        initializer overridden through feeds is rounded afresh); their events are replayed."""
        cache = self.model.__dict__.setdefault("_rounded_constants", {})
        hit = cache.get(key)
        if hit is not None and hit[0] is a:
            self.events.extend(hit[2])
            return hit[1]
        n_events = len(self.events)
        r = compute()
        r.flags.writeable = False
        cache[key] = (a, r, self.events[n_events:])
        return r

    def _round(self, x: np.ndarray, fmt: Format, overflow: str, subnormals: str, tensor: str, node: str,
               op_type: str, constant: bool, inputs=None, inplace: bool = False) -> np.ndarray:
        """Round x to fmt and record events. With inplace, x (a fresh op output nobody else
        holds) is overwritten when the fast kernel applies, saving an allocation per node."""
        if x.size == 0:
            return round_fmt(x, fmt, overflow=overflow, subnormals=subnormals)
        kp = _KPARAMS.get(fmt.name)
        if kp is None or kp[0] is not fmt:
            from .kernels import events
            th, strict = _overflow_threshold(fmt)
            params = _format_params(fmt)
            kp = _KPARAMS[fmt.name] = (fmt, params, th, strict, events, events.inplace_counter(params, th, strict))
        _, params, th, strict, events, count = kp
        if subnormals == "keep" and overflow == "inf" and fmt.has_inf and x.dtype == np.float32:
            # The hot path: round and count in one pass, in place in x when allowed, else in a
            # fresh copy (a strided view, e.g. a Conv output, is copied once, not twice).
            if not x.flags.c_contiguous:
                y = np.ascontiguousarray(x)
            else:
                y = x if inplace and x.flags.writeable else x.copy()
            nan_x, big, under = count(y.reshape(-1))
        else:
            flat = x.reshape(-1) if x.flags.c_contiguous else np.ascontiguousarray(x).reshape(-1)
            nan_x, big, nz_x = events.stats(flat, th, strict)
            y = round_fmt(x, fmt, overflow=overflow, subnormals=subnormals)
            under = nz_x - int(np.count_nonzero(y))
        if big:
            kind = "saturated" if overflow == "saturate" or not fmt.has_inf else "overflow"
            self.events.append(Event(node, op_type, tensor, kind, int(big), constant))
        if under > 0:
            self.events.append(Event(node, op_type, tensor, "underflow", under, constant))
        if nan_x and inputs is not None and not any(
                isinstance(a, np.ndarray) and a.dtype.kind == "f" and a.size and np.isnan(np.min(a)) for a in inputs):
            # NaN that the op itself created (0 * inf, inf - inf, 0 / 0) from NaN-free inputs.
            self.events.append(Event(node, op_type, tensor, "nan", int(nan_x), constant))
        return y

    def _count_cast_events(self, node, t, o) -> None:
        # A Cast to a narrow type overflowing to inf is an event like any other rounding.
        if not node.op_type.startswith("Cast"):
            return
        inf = np.isinf(o)
        if inf.any():
            self.events.append(Event(node.label, node.op_type, t, "overflow", int(np.count_nonzero(inf))))


_CAST_EVENTS = object()  # an output action: count the infinities a Cast to a narrow type made


class _InDecision:
    """What on_inputs does for one node, given its inputs' dtypes (`dtypes`) and format tags."""
    __slots__ = ("prec", "storage", "typed", "follow", "exact", "widen", "rounds", "tags", "dtypes")

    def __init__(self, prec, storage, typed, follow, exact, widen, rounds, tags, dtypes):
        self.prec, self.storage, self.typed, self.follow, self.exact = prec, storage, typed, follow, exact
        self.widen, self.rounds, self.tags, self.dtypes = widen, rounds, tags, dtypes


class _OutDecision:
    """What on_outputs does for one node, given its outputs' dtypes: per output
    (index, tensor, format to round to | None | _CAST_EVENTS, round to io format, narrow dtype)."""
    __slots__ = ("acts", "tags", "dtypes")

    def __init__(self, acts, tags, dtypes):
        self.acts, self.tags, self.dtypes = acts, tags, dtypes


class _Derived:
    """What matmul/sum/round_compute decide from an OpPrecision alone."""
    __slots__ = ("prec", "acc", "acc_fp32", "plain", "_compute", "_fmts")

    def __init__(self, plan: "PrecisionPlan", prec: OpPrecision):
        self.prec, self._fmts = prec, plan.fmt
        self.acc = plan.fmt(prec.accumulate)
        self.acc_fp32 = _within(FP32, self.acc)
        self.plain = not prec.operands and not prec.tensor_core and self.acc_fp32
        self._compute = _UNSET

    @property
    def compute(self) -> Format | None:
        """The format composite steps round to, None when it is within fp32 (looked up on first
        use: a precision whose storage is still "inherit" has none)."""
        if self._compute is _UNSET:
            p = self.prec
            f = self._fmts(p.accumulate if p.fused else (p.compute or p.storage))
            self._compute = None if _within(FP32, f) else f
        return self._compute


_UNSET = object()
_DERIVED: dict[int, _Derived] = {}
_REPLACED: dict[tuple[int, str], tuple[OpPrecision, OpPrecision]] = {}
_CACHE_MAX = 4096  # precisions are few (one per distinct rule combination and storage)


def _derived(plan: "PrecisionPlan", prec: OpPrecision) -> _Derived:
    d = _DERIVED.get(id(prec))
    if d is None or d.prec is not prec:
        if len(_DERIVED) >= _CACHE_MAX:
            _DERIVED.clear()
        d = _DERIVED[id(prec)] = _Derived(plan, prec)
    return d


def _with_storage(prec: OpPrecision, storage: str) -> OpPrecision:
    """replace(prec, storage=storage), one object per (precision, storage): the general path
    makes one per node and run, and _derived caches by identity."""
    key = (id(prec), storage)
    hit = _REPLACED.get(key)
    if hit is None or hit[0] is not prec:
        if len(_REPLACED) >= _CACHE_MAX:
            _REPLACED.clear()
        hit = _REPLACED[key] = (prec, replace(prec, storage=storage))
    return hit[1]


def _fresh(o: np.ndarray, args: list, node) -> bool:
    """Whether an op output may be rounded in place: an array the op made fresh, one it owns
    that is none of its inputs, or a view (a Conv's reshaped GEMM output) into none of their
    memory (not for If/Loop/Scan, whose outputs may be views of outer-scope tensors)."""
    if not o.flags.writeable:
        return False
    if o.flags.owndata:
        for a in args:
            if o is a:
                return False
        return True
    if node.subgraphs:
        return False
    for a in args:
        if isinstance(a, np.ndarray) and np.may_share_memory(o, a):
            return False
    return True


# Policies whose folded weights, records and compiled schedules a model keeps: enough for a
# session that cycles through the presets (with 3, four presets in turn rebuilt every run's
# schedule: silero 1.9 -> 9.5 ms), bounded because bisection tries many policies.
_FOLD_POLICIES = 8


def _per_policy(plan: PrecisionPlan, attr: str, make):
    """The entry of the plan's policy in the model's store `attr` (made by make() on first use),
    the store keeping the most recently used _FOLD_POLICIES policies."""
    store = plan.model.__dict__.setdefault(attr, OrderedDict())
    key = plan.policy_key
    mine = store.pop(key, None)
    store[key] = mine = mine if mine is not None else make()
    while len(store) > _FOLD_POLICIES:
        store.popitem(last=False)
    return mine


class _PlanFolds:
    """Weight-only nodes computed once per model and policy, as the fp32 path folds them. The
    interpreter calls ensure(node, env, execute) for such a node and then reads its outputs
    with folds[name]. The first run executes the node; the events it raised (its input
    roundings included) and the formats of its outputs are kept with the (read-only) outputs
    and replayed on later runs, so a run from the cache has the same outputs, events and tags,
    bit for bit, as one that computes them."""

    def __init__(self, plan: PrecisionPlan):
        self.plan = plan
        self.values, self.meta = _per_policy(plan, "_policy_folds", lambda: ({}, {}))

    def ensure(self, node, env: dict, execute) -> None:
        plan = self.plan
        hit = self.meta.get(node.index)
        if hit is not None:
            plan.events.extend(hit[0])
            plan.tags.update(hit[1])
            return
        mark = len(plan.events)
        execute()
        for o in node.outputs:
            if o:
                v = self.values[o] = env.get(o)
                if isinstance(v, np.ndarray):
                    v.flags.writeable = False  # shared between runs
        self.meta[node.index] = (plan.events[mark:], {t: plan.tags[t] for t in node.outputs if t in plan.tags})

    def __getitem__(self, name: str):
        return self.values[name]


_FOLLOW_CACHE: dict[tuple, list[bool]] = {}
# Contrib ops onnx has no schema for, whose statistics outputs are float32 (ORT's stash type).
_CONTRIB_FOLLOW = {"SimplifiedLayerNormalization": (True, False),
                   "SkipLayerNormalization": (True, False, False, True),
                   "SkipSimplifiedLayerNormalization": (True, False, False, True)}


def _follows_input_type(node, typed_idx: tuple[int, ...]) -> list[bool]:
    """For each output: does its ONNX type parameter equal that of one of the low-precision
    inputs (so the output is float16/bfloat16 too)? Read from the op schema; ops onnx does not
    know (contrib) are assumed to follow their inputs."""
    key = (node.op_type, node.domain, node.opset, typed_idx, len(node.outputs))
    mask = _FOLLOW_CACHE.get(key)
    if mask is None:
        import onnx.defs
        try:
            schema = onnx.defs.get_schema(node.op_type, node.opset, node.domain)
        except Exception:
            schema = None
        if schema is None or not schema.outputs or not schema.inputs:
            known = _CONTRIB_FOLLOW.get(node.op_type, ())
            mask = [known[j] if j < len(known) else True for j in range(len(node.outputs))]
        else:
            def tstr(params, i):
                return params[min(i, len(params) - 1)].type_str
            ins = {tstr(schema.inputs, i) for i in typed_idx}
            mask = [tstr(schema.outputs, j) in ins for j in range(len(node.outputs))]
        _FOLLOW_CACHE[key] = mask
    return mask


# Per format name: (format, kernel parameters, overflow threshold, strict, the events module,
# its in-place round-and-count kernel),
# looked up by name (hashing a Format dataclass costs more than the rest of a small node).
_KPARAMS: dict[str, tuple] = {}


def _overflow_threshold(fmt: Format) -> tuple[float, bool]:
    """Magnitude from which nearest-even rounding leaves the finite range: the midpoint above
    the largest value. IEEE formats' largest value has an odd significand, so the tie rounds
    up (>=); fn formats' has an even one, so the tie rounds down (strictly >)."""
    import math
    half = math.ldexp(1.0, fmt.emax - fmt.mbits - 1)
    return fmt.max + half, not fmt.has_inf


def _is_float32(x) -> bool:
    return isinstance(x, np.ndarray) and x.dtype == np.float32


def _constant_outputs(graph) -> set[str]:
    out = set()
    for n in graph.nodes:
        if n.op_type == "Constant":
            out.update(o for o in n.outputs if o)
    return out


def has_low_precision_types(model) -> bool:
    g = model.graph

    def scan(graph) -> bool:
        for a in graph.initializers.values():
            if a.dtype in _LOW_DTYPES:
                return True
        for vi in graph.inputs:
            if vi.dtype is not None and vi.dtype in _LOW_DTYPES:
                return True
        for n in graph.nodes:
            if n.op_type == "Cast" and n.attrs.get("to") in (10, 16):
                return True
            if any(scan(sg) for sg in n.subgraphs):
                return True
        return False
    return scan(g)


def make_plan(precision: Any, model: Any):
    """A plan for `precision`: a preset name, a Policy, or an existing plan."""
    if hasattr(precision, "on_outputs") and hasattr(precision, "identity"):
        return precision
    if precision is None:
        precision = "fp32"
    if isinstance(precision, str):
        if precision == "fp32" and not _typed(model):
            return FP32_PLAN
        policy = preset(precision)
    elif isinstance(precision, Policy):
        policy = precision
    else:
        raise HalfsimError(f"precision must be a preset name or a Policy, not {type(precision).__name__}")
    if not policy.rules and policy.io is None and policy.weights is None and not _typed(model):
        return FP32_PLAN
    return PrecisionPlan(policy, model)


def _typed(model) -> bool:
    v = getattr(model, "_typed_low", None)
    if v is None:
        v = model._typed_low = has_low_precision_types(model)
    return v
