"""Executes a compiled Graph node by node. Every node runs with an OpContext that carries its
precision; after every node the precision plan rounds its outputs (and records numerical
events), observers record tensors, and a hook may replace outputs (fault injection).

Re-running with `reuse=trace, dirty=nodes` recomputes only the downstream cone of `dirty`,
reading every other tensor from the trace: bisection and fault campaigns rely on this."""
from __future__ import annotations

import keyword
import os
from collections import abc
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import onnx

from . import graph as G
from .decompose import run_decomposed
from .errors import ExecutionError, HalfsimError, InputError
from .kernels.blas import matmul as _split_matmul, single_threaded_blas
from .ops.registry import quiet_run

Hook = Callable[["G.Node", list], "list | None"]


class OpContext:
    """What an op sees of the interpreter: its node, its precision and accumulate-aware math."""
    __slots__ = ("node", "prec", "_runner")

    def __init__(self, node: G.Node, prec: Any, runner: "_Runner"):
        self.node, self.prec, self._runner = node, prec, runner

    @property
    def opset(self) -> int:
        return self.node.opset

    # -- accumulate-aware primitives: fp32 numpy here; the precision plan may override ----
    def matmul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self._runner.plan.matmul(self, a, b)

    def sum(self, x: np.ndarray, axis=None, keepdims: bool = False) -> np.ndarray:
        return self._runner.plan.sum(self, x, axis, keepdims)

    @property
    def plain(self) -> bool:
        """True when matmul and sum are exactly np.matmul / np.sum for this node: ops may then
        use faster kernels with the same fp32 result up to summation order. A plan opts in per
        node with a `plain(ctx) -> bool` method; the fp32 plan always is."""
        p = self._runner.plan
        return bool(p.identity) or bool(getattr(p, "plain", None) and p.plain(self))

    @property
    def identity(self) -> bool:
        """True under the fp32 identity plan: round() is a no-op and matmul/sum are numpy's,
        so an op may fuse its steps freely (up to fp32 summation order)."""
        return bool(self._runner.plan.identity)

    def round(self, x: np.ndarray) -> np.ndarray:
        """Round an intermediate of a composite op to the node's compute format."""
        return self._runner.plan.round_compute(self, x)

    def run_graph(self, graph: G.Graph, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run a subgraph (If/Loop/Scan body) with `feeds` bound to its inputs and the
        enclosing scopes visible."""
        return self._runner.run_subgraph(graph, feeds)


class _FP32Plan:
    """The identity precision plan: plain fp32 semantics, nothing rounded."""
    identity = True

    def matmul(self, ctx, a, b):
        return _split_matmul(a, b)

    def sum(self, ctx, x, axis, keepdims):
        return np.sum(x, axis=axis, keepdims=keepdims)

    def round_compute(self, ctx, x):
        return x

    def on_graph_input(self, name, x):
        return x

    def on_initializer(self, name, x):
        return x

    def on_inputs(self, node, args):
        return args, None

    def on_outputs(self, node, outputs, state):
        return outputs


FP32_PLAN = _FP32Plan()
_DEBUG = bool(os.environ.get("HALFSIM_DEBUG"))


class RunResult(dict):
    """Graph outputs by name (a plain dict), plus what was observed during the run and the
    numerical events in execution order (so the first event of a kind is where it starts)."""
    observed: dict[str, np.ndarray]
    events: list
    trace: "Trace | None"


class Trace(dict):
    """Every tensor of one run (graph inputs, weights after precision, node outputs)."""


class _Runner:
    def __init__(self, model: "Model", plan, hook: Hook | None, observe):
        self.model, self.plan, self.hook = model, plan, hook
        self.observe = observe
        self.observed: dict[str, np.ndarray] = {}
        self.scopes: list[Mapping[str, np.ndarray]] = []
        self._sub_inits: dict[int, dict[str, np.ndarray]] = {}
        # Plain fp32 with nothing to hook or observe: precompiled schedules (_FastGraph).
        self.fast = False

    def _lookup(self, name: str, env: dict):
        v = env.get(name, _MISSING)
        if v is not _MISSING:
            return v
        for scope in reversed(self.scopes):
            v = scope.get(name, _MISSING)
            if v is not _MISSING:
                return v
        raise ExecutionError(f"tensor {name!r} is not available")

    def exec_node(self, node: G.Node, env: dict) -> None:
        args = [self._lookup(t, env) if t else None for t in node.inputs]
        plan = self.plan
        if plan.identity:
            state = None
            ctx = OpContext(node, None, self)
        else:
            # Decomposed precision (fused=False): an op with an ONNX function body runs through it.
            outs = run_decomposed(self, node, args)
            if outs is not None:
                self._store(node, outs, env)
                return
            args, state = plan.on_inputs(node, args)
            ctx = OpContext(node, state[0], self)
        if node.subgraphs:
            self.scopes.append(env)
        try:
            res = _call_op(node, node.impl.fn, ctx, args, node.attrs)
        finally:
            if node.subgraphs:
                self.scopes.pop()
        outs = _normalize(res, len(node.outputs))
        if not plan.identity:
            outs = plan.on_outputs(node, outs, state)
        self._store(node, outs, env)

    def _store(self, node: G.Node, outs: list, env: dict) -> None:
        if self.hook is not None:
            new = self.hook(node, outs)
            if new is not None:
                outs = list(new)
        for name, val in zip(node.outputs, outs):
            if name:
                env[name] = val
                if self.observe is not None and (self.observe is True or name in self.observe):
                    self.observed[name] = val

    def run_fast(self, fg: "_FastGraph", env: dict, free: bool = True) -> None:
        """The fp32 loop: no plan, hook or observer calls, arguments and the tensors to free
        after each node precomputed. Same errors as exec_node; results too, up to the
        rounding of fused Conv chains (exact steps when the trace is kept, free=False)."""
        if free:
            fg.compiled()(self, env)
            return
        scopes = self.scopes
        node = ins = None
        try:
            for node, fn, ins, attrs, outs, dead, sub in fg.steps_exact:
                args = [env[t] if t else None for t in ins]
                ctx = OpContext(node, None, self)
                if sub:
                    scopes.append(env)
                    try:
                        res = fn(ctx, *args, **attrs)
                    finally:
                        scopes.pop()
                else:
                    res = fn(ctx, *args, **attrs)
                if type(res) is np.ndarray and len(outs) == 1:
                    if outs[0]:
                        env[outs[0]] = res
                else:
                    for name, val in zip(outs, _normalize(res, len(outs))):
                        if name:
                            env[name] = val
                if free:
                    for t in dead:
                        env.pop(t, None)
        except HalfsimError:
            raise
        except Exception as e:
            if isinstance(e, KeyError) and ins is not None and e.args and e.args[0] in ins and e.args[0] not in env:
                raise ExecutionError(f"tensor {e.args[0]!r} is not available") from None
            if _DEBUG:
                raise
            raise _op_failed(node, e) from None

    def run_subgraph(self, graph: G.Graph, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if self.fast:
            fg = self.model._fast_graph(graph)
            env = {}  # the compiled body holds its constants (fg.env0) itself
            # Outer-scope names (transitively, for nested bodies) become local: one lookup per
            # call instead of a scope walk per read.
            for t in fg.outer:
                for scope in reversed(self.scopes):
                    v = scope.get(t, _MISSING)
                    if v is not _MISSING:
                        env[t] = v
                        break
            for vi in graph.inputs:
                if vi.name in feeds:
                    env[vi.name] = feeds[vi.name]
            self.run_fast(fg, env)
            return [self._lookup(o, env) for o in fg.outputs]
        env: dict[str, Any] = {}
        key = id(graph)
        inits = self._sub_inits.get(key)
        if inits is None:
            inits = {k: self.plan.on_initializer(k, v) for k, v in graph.initializers.items()}
            self._sub_inits[key] = inits
        env.update(inits)
        for vi in graph.inputs:
            if vi.name in feeds:
                env[vi.name] = feeds[vi.name]
        for node in graph.nodes:
            self.exec_node(node, env)
        return [self._lookup(o.name, env) for o in graph.outputs]


_MISSING = object()
# The runner of the fp32 schedules' prebuilt contexts (ops without bodies only read its plan).
_FP32_RUNNER = _Runner(None, FP32_PLAN, None, None)


def _make_plan(precision: Any, model: "Model"):
    from .precision import make_plan  # late import: precision builds on formats and kernels
    return make_plan(precision, model)


def _call_op(node: G.Node, fn: Callable, ctx: OpContext, args: list, attrs: Mapping) -> Any:
    """fn(ctx, *args, **attrs), with anything but a HalfsimError turned into the node's one-line error."""
    try:
        return fn(ctx, *args, **attrs)
    except HalfsimError:
        raise
    except Exception as e:
        if _DEBUG:
            raise
        raise _op_failed(node, e) from None


def _op_failed(node: G.Node, e: Exception) -> ExecutionError:
    """The one-line error for an op that raised something other than a HalfsimError."""
    return ExecutionError(f"node {node.label!r} ({node.op_type}) failed: {type(e).__name__}: {G._one_line(e)}")


def _normalize(res: Any, n: int) -> list:
    """An op's return value as exactly n outputs (None for missing ones, arrays for scalars)."""
    outs = list(res) if isinstance(res, (tuple, list)) else [res]
    if len(outs) < n:
        outs += [None] * (n - len(outs))
    return [o if o is None or isinstance(o, np.ndarray) or isinstance(o, list) else np.asarray(o)
            for o in outs[:n]]


class _FastGraph:
    """The fp32 schedule of one graph (main graph or body), built on its first fp32 run:
    nodes that read only weights run once and their outputs are shared between runs
    (read-only), as ORT folds them; every other node is a precomputed step
    (node, fn, inputs, attrs, outputs, tensors dead after it, has subgraphs). `steps` also
    fuses Conv chains, memoizes shape arithmetic and runs chains of view ops as one step;
    `steps_exact` keeps one step per node (traces)."""
    __slots__ = ("folded", "env0", "steps", "steps_exact", "outputs", "outer", "code", "_code_steps")

    def __init__(self, graph: G.Graph, runner: "_Runner", outer_consts: Mapping[str, Any] | None = None):
        # A body's outer-scope reads of the enclosing graph's weights and folded tensors are
        # constants too (silero's If bodies concatenate their LSTM weights on every call).
        outer = {t: outer_consts[t] for t in graph.outer_names if t in outer_consts} if outer_consts else {}
        const = _constant_nodes(graph, outer)
        env: dict[str, Any] = {**outer, **graph.initializers}
        unfolded: set[str] = set()
        for n in graph.nodes:
            if n.index in const:
                if outer_consts is None:
                    runner.exec_node(n, env)
                    continue
                # In a body (a branch that may never run) a failing constant node is left to
                # fail at run time, as before, and so is everything that reads it.
                try:
                    if unfolded.intersection(n.inputs):
                        raise ExecutionError("reads an unfolded tensor")
                    runner.exec_node(n, env)
                except HalfsimError:
                    const.discard(n.index)
                    unfolded.update(n.outputs)
        for n in graph.nodes:  # bodies now, with this graph's constants known
            if n.index not in const:
                for sg in n.subgraphs:
                    runner.model._fast[id(sg)] = _FastGraph(sg, runner, env)
        self.folded = {o: _frozen(env[o]) for n in graph.nodes if n.index in const for o in n.outputs if o}
        self.env0 = env
        self.outputs = graph.output_names
        self.outer = tuple(sorted(t for t in graph.outer_names if t not in outer))  # the rest: env0
        keep = set(self.outputs) | set(env)
        # Exact steps, one per node (runs that keep a trace need every tensor); `steps` has
        # Conv -> BatchNormalization -> Relu/Clip chains fused into one step, as ORT fuses them.
        self.steps_exact = []
        for n in graph.nodes:
            if n.index in const:
                continue
            reads = [t for t in n.inputs if t] + [t for sg in n.subgraphs for t in sg.outer_names]
            dead = tuple(dict.fromkeys(t for t in reads if graph.last_use.get(t) == n.index and t not in keep))
            fn = n.impl.fn
            spec = getattr(fn, "specialize", None)
            if spec is not None:  # the op prepares its constant inputs once (e.g. converted weights)
                fn = spec(n, {i: env[t] for i, t in enumerate(n.inputs) if t and t in env}) or fn
            if n.op_type == "Conv" and n.domain == "" and len(n.inputs) > 1 and n.inputs[1] in env \
                    and (len(n.inputs) < 3 or not n.inputs[2] or n.inputs[2] in env):
                # Streaming models' tiny 1-D convs: a per-shape gather + GEMM (same bits).
                from .kernels.conv_small import specialize_conv1d
                bias = env[n.inputs[2]] if len(n.inputs) > 2 and n.inputs[2] else None
                fn = specialize_conv1d(env[n.inputs[1]], bias, n.attrs, fn) or fn
            elif n.op_type == "MatMul" and n.domain == "" and len(n.inputs) == 2 and n.inputs[1] in env:
                fn = _matmul_const_b(env[n.inputs[1]], fn) or fn
            self.steps_exact.append((n, fn, tuple(n.inputs), n.attrs, tuple(n.outputs), dead, bool(n.subgraphs)))
        self.steps = _fuse_conv_chains(graph, self.steps_exact, env, set(self.outputs))
        # Small integer graph inputs (silero's sample rate) key shape-only steps by value.
        small = {vi.name for vi in graph.inputs if outer_consts is None and vi.dtype is not None
                 and vi.dtype.kind in "iub" and vi.shape is not None
                 and all(isinstance(d, int) for d in vi.shape) and int(np.prod(vi.shape)) <= _META_VALUE_MAX}
        self.steps = _memo_meta_steps(self.steps, env, set(self.outputs), small)
        self.steps = _fuse_view_chains(graph, self.steps, env, set(self.outputs))
        self.code, self._code_steps = None, None

    def compiled(self) -> Callable[["_Runner", dict], None]:
        """`steps` as one generated function (built on first use, and again if `steps` is
        replaced, e.g. by a profiler wrapping them)."""
        if self._code_steps is not self.steps:
            self.code, self._code_steps = _compile_steps(self.steps, self.outputs, self.env0), self.steps
        return self.code


_F32 = np.dtype(np.float32)


def _matmul_const_b(b: Any, base: Callable) -> Callable | None:
    """A MatMul step for a constant 2-D float32 B: a float32 A of one matrix (2-D, or 3-D with
    one batch) below the split size goes straight to np.matmul, which is what the MatMul op,
    ctx.matmul and the split matmul come down to there (~3 us of Python a call); anything
    else (and every error) through the op."""
    if not isinstance(b, np.ndarray) or b.dtype != _F32 or b.ndim != 2 or not b.size:
        return None
    from .kernels.blas import _MIN_WORK
    K = b.shape[0]
    rows = _MIN_WORK // b.size  # M below which the split matmul is one np.matmul

    def fn(ctx, a, b_):
        if b_ is b and type(a) is np.ndarray and (a.ndim == 2 or a.ndim == 3 and a.shape[0] == 1) \
                and a.dtype is _F32 and a.shape[-1] == K and a.shape[-2] < rows:
            return np.matmul(a, b)
        return base(ctx, a, b_)
    return fn


class Model:
    """An ONNX model ready to run. Create with halfsim.load()."""

    def __init__(self, proto: onnx.ModelProto, source: str = "<memory>"):
        self.proto = proto
        self.source = source
        self.opsets = G.model_opsets(proto)
        self.graph = G.build_graph(proto.graph, self.opsets)
        if not self.graph.outputs:
            raise HalfsimError("model has no outputs")
        self._const_nodes = _constant_nodes(self.graph)
        self._fast: dict[int, _FastGraph] = {}
        self._feed_specs: list | None = None
        self._plain_fp32_flag: bool | None = None

    @property
    def _plain_fp32(self) -> bool:
        """Whether precision "fp32" is the identity plan (no float16/bfloat16 tensors in the model)."""
        if self._plain_fp32_flag is None:
            self._plain_fp32_flag = _make_plan("fp32", self) is FP32_PLAN
        return self._plain_fp32_flag

    def _fast_graph(self, graph: G.Graph) -> "_FastGraph":
        fg = self._fast.get(id(graph))
        if fg is None:
            fg = self._fast[id(graph)] = _FastGraph(graph, _Runner(self, FP32_PLAN, None, None))
        return fg

    # -- introspection -------------------------------------------------------------
    @property
    def inputs(self) -> list[G.ValueInfo]:
        return self.graph.inputs

    @property
    def outputs(self) -> list[str]:
        return self.graph.output_names

    @property
    def nodes(self) -> list[G.Node]:
        return self.graph.nodes

    def node(self, name: str) -> G.Node:
        for n in self.graph.nodes:
            if n.label == name:
                return n
        raise HalfsimError(f"no node named {name!r}")

    # -- execution -----------------------------------------------------------------
    def check_feeds(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Validate feeds against the declared inputs; one-line InputError on any mismatch."""
        if type(feeds) is not dict and not isinstance(feeds, abc.Mapping):
            raise InputError("feeds must be a mapping from input name to array")
        specs = self._feed_specs
        if specs is None:  # per input: (name, declared dtype, rank, fixed (dimension, size) pairs)
            specs = self._feed_specs = [
                (vi.name, vi, vi.dtype, None if vi.shape is None else len(vi.shape),
                 () if vi.shape is None else tuple((i, d) for i, d in enumerate(vi.shape) if isinstance(d, int) and d > 0))
                for vi in self.graph.inputs]
            self._input_names = frozenset(sp[0] for sp in specs)
        inits = self.graph.initializers
        names = self._input_names
        if len(feeds) != len(specs) or not names.issuperset(feeds):
            extra = sorted(k for k in feeds if k not in inits and k not in names)  # no per-run sets of all weights
            if extra:
                raise InputError(f"unknown input {extra[0]!r}; the model's inputs are {[sp[0] for sp in specs]}")
        out = {}
        for name, vi, dtype, rank, fixed in specs:
            x = feeds.get(name, _MISSING)
            if x is _MISSING:
                raise InputError(f"missing input {name!r} ({vi.describe()})")
            if type(x) is not np.ndarray:
                if isinstance(x, (list, tuple)) and dtype is None and rank is None:
                    out[name] = [np.asarray(e) for e in x]  # a sequence-typed input stays a list
                    continue
                if not isinstance(x, np.ndarray):
                    x = np.asarray(x)
            if dtype is not None and x.dtype != dtype:
                raise InputError(f"input {name!r} has dtype {x.dtype}, the model expects {dtype} ({vi.describe()})")
            if rank is not None:
                if x.ndim != rank:
                    raise InputError(f"input {name!r} has rank {x.ndim} (shape {list(x.shape)}), the model expects {vi.describe()}")
                shape = x.shape
                for i, want in fixed:
                    if shape[i] != want:
                        raise InputError(f"input {name!r} has shape {list(shape)}, the model expects {vi.describe()} (dimension {i})")
            out[name] = x
        # Initializers that are also graph inputs may be overridden by feeds.
        if len(out) != len(feeds):
            for k in feeds:
                if k in inits:
                    out[k] = np.asarray(feeds[k])
        return out

    def run(self, feeds: Mapping[str, Any], precision: Any = "fp32", observe: Any = None, *,
            hook: Hook | None = None, reuse: Trace | None = None, dirty: Iterable[str | int] | None = None,
            keep_trace: bool = False) -> RunResult:
        """Run the model.

        precision: a preset name, a Policy, or a precision plan.
        observe: None, "all", or names of tensors to record (in result.observed).
        hook: called after every node as hook(node, outputs); may return replacement outputs.
        reuse, dirty: recompute only nodes downstream of `dirty` (names or indices), taking
            every other tensor from `reuse` (a Trace from an earlier run with keep_trace=True).
        keep_trace: keep every tensor (result.trace) instead of freeing them after last use.
        """
        plan = FP32_PLAN if type(precision) is str and precision == "fp32" and self._plain_fp32 \
            else _make_plan(precision, self)
        feeds = self.check_feeds(feeds)
        obs: Any = None
        if observe == "all" or observe is True:
            obs = True
        elif observe is not None:
            obs = set([observe] if isinstance(observe, str) else observe)
        runner = _Runner(self, plan, hook, obs)
        g = self.graph
        overrides = any(k in g.initializers for k in feeds)
        # BLAS at one thread, large matmuls split by halfsim (kernels/blas.py), under every plan:
        # fp32 and emulated runs then share one GEMM, so drift between them is rounding alone.
        with single_threaded_blas():
            if plan.identity and hook is None and obs is None and reuse is None and not overrides:
                runner.fast = True
                fg = self._fast_graph(g)
                if keep_trace:  # the step loop reads weights and folded tensors from env
                    env = dict(fg.env0)
                    env.update(feeds)
                else:  # the compiled schedule holds them itself; feeds is check_feeds' own dict
                    env = feeds
                with quiet_run():  # numpy's error state once per run, not once per op
                    runner.run_fast(fg, env, free=not keep_trace)
            else:
                env = None
                compiled = getattr(plan, "run_compiled", None)
                if compiled is not None and hook is None and obs is None and reuse is None and not keep_trace \
                        and not overrides:  # a plan's compiled schedule (plan_schedule.py), when it has one
                    env = compiled(self, feeds)
                if env is None:
                    env = self._run_general(runner, feeds, reuse, dirty, keep_trace, overrides)
        result = RunResult()
        for name in g.output_names:
            try:
                result[name] = env[name]
            except KeyError:
                raise ExecutionError(f"graph output {name!r} was not produced") from None
        result.observed = runner.observed
        result.events = getattr(plan, "events", [])
        result.trace = None
        if keep_trace:
            t = Trace(env.flatten() if isinstance(env, _Overlay) else env)
            result.trace = t
        return result

    def _run_general(self, runner: "_Runner", feeds: dict, reuse: "Trace | None", dirty, keep_trace: bool,
                     overrides: bool) -> dict:
        """Node by node through exec_node: precision plans, hooks, observers, cone re-runs."""
        plan, hook, obs = runner.plan, runner.hook, runner.observe
        g = self.graph
        outputs = set(g.output_names)
        env: dict[str, Any] = {}
        cone = None
        if reuse is not None:
            idx = {n.label: n.index for n in g.nodes}
            d = set()
            for x in (dirty or ()):
                if isinstance(x, int):
                    d.add(x)
                elif x in idx:
                    d.add(idx[x])
                else:
                    raise HalfsimError(f"no node named {x!r}")
            # Feeds (inputs, or initializers overridden through feeds) that are not the very
            # arrays of the trace make their consumers dirty too.
            changed = {k: v for k, v in feeds.items() if reuse.get(k) is not v}
            for k in changed:
                d.update(g.consumers.get(k, ()))
            cone = g.downstream(d)
        if cone is None:
            for k, v in g.initializers.items():
                if k not in feeds:  # an overridden initializer is neither rounded nor reported
                    env[k] = plan.on_initializer(k, v) if not plan.identity else v
            for k, v in feeds.items():
                env[k] = plan.on_graph_input(k, v) if not plan.identity else v
            if obs is not None:
                for k in env:
                    if obs is True or k in obs:
                        runner.observed[k] = env[k]
        else:
            env = _Overlay(reuse)
            for k, v in changed.items():
                env[k] = plan.on_graph_input(k, v) if not plan.identity else v
        free = not keep_trace and cone is None
        # Constant folding (no hook, weights as in the model): nodes that read only weights are
        # computed once per model (and precision policy: the plan's fold_cache) and their
        # outputs reused, as ORT folds them.
        plan_folds = None if plan.identity else getattr(plan, "fold_cache", None)
        fold = (plan.identity or plan_folds is not None) and hook is None and cone is None and not overrides
        folded = (self._fast_graph(g).folded if plan.identity else plan_folds) if fold else {}
        for node in g.nodes:
            if cone is not None and node.index not in cone:
                continue
            if fold and node.index in self._const_nodes:
                if not plan.identity:  # computed on the first run; its events and formats replayed
                    folded.ensure(node, env, lambda: runner.exec_node(node, env))
                for o in node.outputs:
                    if o:
                        env[o] = v = folded[o]
                        if obs is not None and (obs is True or o in obs):
                            runner.observed[o] = v
            else:
                runner.exec_node(node, env)
            if free:
                for t in node.inputs:
                    if t and g.last_use.get(t) == node.index and t not in outputs and t in env:
                        if obs is None or (obs is not True and t not in obs):
                            del env[t]
                for sg in node.subgraphs:
                    for t in sg.outer_names:
                        if g.last_use.get(t) == node.index and t not in outputs and t in env:
                            if obs is None or (obs is not True and t not in obs):
                                del env[t]
        return env


_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                     "Bernoulli"}


def _constant_nodes(g: G.Graph, known_outer: Iterable[str] = ()) -> set[int]:
    """Indices of nodes whose every input is a weight (the graph's, or `known_outer` constants
    of enclosing graphs) or another such node's output."""
    known = set(g.initializers) | set(known_outer)
    out = set()
    for n in g.nodes:
        if n.subgraphs or n.op_type in _NONDETERMINISTIC or n.domain not in ("", "com.microsoft"):
            continue
        if all((not t) or t in known for t in n.inputs):
            out.add(n.index)
            known.update(o for o in n.outputs if o)
    return out


_NO_CONSTS: Mapping[str, Any] = {}


def _compile_steps(steps: list, outputs: list[str], consts: Mapping[str, Any] = _NO_CONSTS
                   ) -> Callable[["_Runner", dict], None]:
    """Straight-line Python for a schedule: one statement per step with tensors in local
    variables, instead of a loop over step tuples with dict traffic per argument (about
    1 us per node less; streaming models run ~100 tiny nodes). Same calls, same arguments,
    same freeing (del after the last use), same errors (the step index names the node)."""
    glb: dict[str, Any] = {"C": OpContext, "nd": np.ndarray, "norm": _normalize, "HalfsimError": HalfsimError,
                           "IF": _run_if, "fail": lambda i, e: _step_failed(steps, i, e), "M": _MISSING,
                           "DEBUG": _DEBUG}
    local: dict[str, str] = {}
    lines: list[str] = []
    loads: list[str] = []
    produced: set[str] = set()

    maybe_missing: set[str] = set()  # tensors loaded with env.get(name, M): may be absent

    def var(t: str, load: str = "env[{!r}]") -> str:
        v = local.get(t)
        if v is None:  # read before any step wrote it: a graph input, weight, folded or outer tensor
            v = local[t] = f"v{len(local)}"
            if t in consts:  # weights and folded tensors: bound into the code, not copied per call
                glb[f"K{v}"] = consts[t]
                loads.append(f"        {v} = K{v}")
            else:
                loads.append(f"        {v} = {load.format(t)}")
                if load != "env[{!r}]":
                    maybe_missing.add(t)
        return v

    for k, (node, fn, ins, attrs, outs, dead, sub) in enumerate(steps):
        glb[f"f{k}"], glb[f"n{k}"], glb[f"a{k}"] = fn, node, attrs
        # Attributes as literal keywords bound to constants (no dict unpacked per call) where
        # their names allow it; the context built once, except for ops with bodies, which run
        # them through this run's runner (its scopes).
        if all(a.isidentifier() and not keyword.iskeyword(a) for a in attrs):
            for a, val in attrs.items():
                glb[f"a{k}_{a}"] = val
            kw = "".join(f", {a}=a{k}_{a}" for a in attrs)
        else:
            kw = f", **a{k}"
        if not attrs:
            kw = ""
        ctx = "c"
        if not sub:
            glb[f"c{k}"] = OpContext(node, None, _FP32_RUNNER)
            ctx = f"c{k}"
        direct = getattr(fn, "direct", None)
        if direct is not None and not attrs and not sub and all(ins):
            # An op that is one numpy call under quiet_run (Add, Mul, ...): called directly.
            glb[f"f{k}"] = direct
            args = ", ".join(var(t) for t in ins)
        else:
            args = ", ".join([ctx] + [var(t) if t else "None" for t in ins]) + kw
        call = f"f{k}({args})"
        lines.append(f"        i = {k}")
        if sub:  # bodies see this graph's tensors through the runner's scopes
            if node.op_type == "If" and node.domain == "" and fn is _if_op() and len(ins) == 1 and ins[0]:
                # The If op's work without its context, keywords and run_graph indirection:
                # pick the branch (the op's own condition check), run it in this runner.
                call = f"IF(r, n{k}, {var(ins[0])})"
            else:
                lines.append(f"        c = C(n{k}, None, r)")
            outer = sorted({t for sg in node.subgraphs for t in sg.outer_names})
            vals = [(t, var(t, 'env.get({!r}, M)')) for t in outer]
            if any(t in maybe_missing for t in outer):
                items = ", ".join(f"({t!r}, {v})" for t, v in vals)
                lines.append(f"        r.scopes.append({{k_: v_ for k_, v_ in ({items},) if v_ is not M}})")
            else:  # every name is bound here: a dict display
                lines.append("        r.scopes.append({" + ", ".join(f"{t!r}: {v}" for t, v in vals) + "})")
            lines.append("        try:")
            lines.append(f"            res = {call}")
            lines.append("        finally:")
            lines.append("            r.scopes.pop()")
            call = "res"
        for t in outs:
            if t:
                local[t] = f"v{len(local)}"
                produced.add(t)
        if len(outs) == 1 and outs[0]:
            v = local[outs[0]]
            lines.append(f"        {v} = {call}")
            lines.append(f"        if type({v}) is not nd: {v} = norm({v}, 1)[0]")
        else:
            targets = ", ".join(local[t] if t else "_" for t in outs)
            lines.append(f"        {targets}, = norm({call}, {len(outs)})")
        for t in dead:
            if t in local:
                lines.append(f"        del {local[t]}")
    for t in outputs:
        if t in produced or t in consts:
            lines.append(f"        env[{t!r}] = {var(t)}")
    src = "\n".join(["def run(r, env):", "    i = -1", "    try:"] + loads + lines + ["        pass",
                     "    except HalfsimError:", "        raise", "    except Exception as e:",
                     "        if DEBUG:", "            raise", "        raise fail(i, e) from None"])
    exec(compile(src, "<halfsim schedule>", "exec"), glb)
    return glb["run"]


def _if_op() -> Callable:
    from .ops.control import if_
    return if_


_NO_FEEDS: Mapping[str, np.ndarray] = {}


def _run_if(r: "_Runner", node: G.Node, cond: Any) -> list:
    """The If op in a compiled schedule: the branch its condition picks, run in `r`."""
    from .ops.control import _scalar_bool
    a = node.attrs
    return r.run_subgraph(a["then_branch"] if _scalar_bool(cond, "If condition") else a["else_branch"], _NO_FEEDS)


def _step_failed(steps: list, i: int, e: Exception) -> ExecutionError:
    if i < 0:  # loading the schedule's inputs: a tensor nothing provides
        name = e.args[0] if isinstance(e, KeyError) and e.args else "?"
        return ExecutionError(f"tensor {name!r} is not available")
    return _op_failed(steps[i][0], e)


def _fuse_conv_chains(graph: G.Graph, steps: list, env: dict, outputs: set) -> list:
    """Conv followed by BatchNormalization (folded into the Conv's weights and bias, as ORT
    does: scale/sqrt(var+eps) in fp32) and/or Relu/Clip (applied in place to the Conv's fresh
    output) becomes one step. Each link must be the only reader of the previous output, with
    weights and bounds known at load. New weight tensors are added to `env`."""
    by_node = {st[0].index: i for i, st in enumerate(steps)}

    def only_reader(t):
        c = graph.consumers.get(t, [])
        if t in outputs or len(c) != 1 or c[0] not in by_node:
            return None
        return steps[by_node[c[0]]]

    def const(t):
        return env.get(t) if t else None

    out, skip = [], set()
    for i, st in enumerate(steps):
        if i in skip:
            continue
        n = st[0]
        w = const(n.inputs[1]) if n.op_type == "Conv" and len(n.inputs) > 1 else None
        if (w is None or not isinstance(w, np.ndarray) or w.dtype not in (np.float32, np.float64)
                or (len(n.inputs) > 2 and n.inputs[2] and const(n.inputs[2]) is None)):
            out.append(st)
            continue
        b = const(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] else None
        chain, last, act = [st], n.outputs[0], None
        nxt = only_reader(last)
        if nxt is not None and nxt[0].op_type == "BatchNormalization" and _bn_foldable(nxt[0], env, w):
            bn = nxt[0]
            sc, bb, mu, vv = (env[t] for t in bn.inputs[1:5])
            t = w.dtype.type
            a = (sc.astype(w.dtype) / np.sqrt(vv.astype(w.dtype) + t(bn.attrs.get("epsilon", 1e-5)))).astype(w.dtype)
            w = w * a.reshape((-1,) + (1,) * (w.ndim - 1))
            b = ((np.zeros_like(a) if b is None else b.astype(w.dtype)) - mu.astype(w.dtype)) * a + bb.astype(w.dtype)
            chain.append(nxt)
            last = bn.outputs[0]
            nxt = only_reader(last)
        if nxt is not None and nxt[0].op_type in ("Relu", "Clip") and nxt[0].inputs[0] == last:
            act = _inplace_act(nxt[0], env, w.dtype)
            if act is not None:
                chain.append(nxt)
                last = nxt[0].outputs[0]
        if act is None and w.dtype == np.float32:
            # Per-channel Mul/Add, SiLU, decomposed HardSwish: ops/conv.py matches and applies them.
            from .ops.conv import match_conv_tail
            tail = match_conv_tail(graph, last, const, outputs, by_node, w.shape)
            if tail is not None:
                act, idx, last = tail
                chain += [steps[by_node[j]] for j in idx]
        if len(chain) == 1:
            out.append(st)
            continue
        ins = list(n.inputs[:2]) + [""]
        if chain[1][0].op_type == "BatchNormalization":
            ins[1] = f"{n.outputs[0]}::bn_folded_w"
            ins[2] = f"{n.outputs[0]}::bn_folded_b"
            env[ins[1]], env[ins[2]] = _frozen(w), _frozen(b)
        elif len(n.inputs) > 2:
            ins[2] = n.inputs[2]
        conv_fn = st[1]  # the specialized Conv when there is one

        def fused(ctx, *args, _conv=conv_fn, _act=act, **attrs):
            y = _conv(ctx, *args, **attrs)
            if _act is not None:
                if not y.flags.writeable:
                    y = y.copy()
                _act(y)
            return y
        dead = tuple(dict.fromkeys(t for s2 in chain for t in s2[5]))
        for s2 in chain[1:]:
            skip.add(by_node[s2[0].index])
        out.append((n, fused, tuple(ins), n.attrs, (last,), dead, False))
    return out


_META_VALUE_MAX = 64  # elements of a non-shape input up to which it keys a memo by value
_META_OUT_MAX = 4096  # elements of a memo's outputs up to which they are kept
_META_ENTRIES = 64  # keys kept per memo (then it starts again)


def _memo_meta_steps(steps: list, consts: Mapping, outputs: set, small: set) -> list:
    """Shape arithmetic (Shape -> Gather -> Unsqueeze -> Concat ..., If conditions on a sample
    rate) as one memo step per group: a step is "meta" when every input is a constant, a
    small integer graph input (`small`), another meta step's output, or, for Shape and Size,
    any tensor (only its shape is read). Meta steps move right after the step that makes
    their last non-constant input (same results: they are pure), and each such group becomes
    one step that looks its outputs up by the inputs' shapes and small values and runs the
    group only for a new key (silero: 28 of 63 steps a run). Graph outputs stay unmemoized:
    memo values are shared between runs, read-only."""
    produced_at = {}
    for i, st in enumerate(steps):
        for t in st[4]:
            if t:
                produced_at[t] = i
    meta_out: dict[str, int] = {}  # meta tensor -> position after which it can be computed
    ready: dict[int, int] = {}
    for i, (node, fn, ins, attrs, outs, dead, sub) in enumerate(steps):
        if sub or node.op_type in _NONDETERMINISTIC or node.domain not in ("", "com.microsoft") \
                or any(t in outputs for t in outs if t) or not any(outs):
            continue
        shape_only = node.op_type in ("Shape", "Size")
        pos = -1
        for t in ins:
            if not t or t in consts:
                continue
            if t in meta_out:
                pos = max(pos, meta_out[t])
            elif t in small or shape_only:
                pos = max(pos, produced_at.get(t, -1))
            else:
                break
        else:
            ready[i] = pos
            for t in outs:
                if t:
                    meta_out[t] = pos
    if not ready:
        return steps
    groups: dict[int, list[int]] = {}
    for i, pos in ready.items():
        groups.setdefault(pos, []).append(i)
    order: list = []
    for i in [-1] + list(range(len(steps))):
        if i >= 0 and i not in ready:
            order.append(steps[i])
        g = groups.get(i)
        if g is None:
            continue
        if len(g) == 1:
            order.append(steps[g[0]])
            continue
        members = [steps[j] for j in g]
        inside = {t for st in members for t in st[4] if t}
        needed = {t for j, st in enumerate(steps) if j not in g for t in st[2] if t in inside} | \
                 {t for j, st in enumerate(steps) if j not in g and st[6]
                  for sg in st[0].subgraphs for t in sg.outer_names if t in inside}
        outs = tuple(t for st in members for t in st[4] if t in needed)
        if not outs:
            continue  # nothing outside reads them
        ins = tuple(dict.fromkeys(t for st in members for t in st[2] if t and t not in inside and t not in consts))
        shape_keys = tuple(all(st[0].op_type in ("Shape", "Size") for st in members if t in st[2]) for t in ins)
        order.append((members[0][0], _MetaMemo(members, ins, shape_keys, outs, consts), ins, {}, outs, (), False))
    return _redo_dead(order, set(outputs) | set(consts))


class _MetaMemo:
    """One group of meta steps (see _memo_meta_steps) as a step function."""

    def __init__(self, members: list, ins: tuple, shape_keys: tuple, outs: tuple, consts: Mapping):
        self.members = [(st[0], st[1], st[2], st[3], st[4], OpContext(st[0], None, _FP32_RUNNER)) for st in members]
        self.ins, self.shape_keys, self.outs, self.consts = ins, shape_keys, outs, consts
        self.cache: dict = {}

    def __call__(self, ctx, *args):
        key = []
        for x, by_shape in zip(args, self.shape_keys):
            if type(x) is not np.ndarray:
                key = None
                break
            if by_shape:
                key.append(x.shape)
            elif x.size <= _META_VALUE_MAX:
                key.append((x.dtype.str, x.shape, x.tobytes()))
            else:
                key = None
                break
        if key is not None:
            key = tuple(key)
            hit = self.cache.get(key)
            if hit is not None:
                return hit
        env = dict(zip(self.ins, args))
        for node, fn, ins, attrs, outs, c in self.members:
            res = _call_op(node, fn, c, [(env[t] if t in env else self.consts[t]) if t else None for t in ins], attrs)
            for t, v in zip(outs, _normalize(res, len(outs))):
                if t:
                    env[t] = v
        vals = tuple(env[t] for t in self.outs)
        if key is not None and all(isinstance(v, np.ndarray) and v.size <= _META_OUT_MAX for v in vals):
            if len(self.cache) >= _META_ENTRIES:
                self.cache.clear()
            for v in vals:
                _frozen(v)
            self.cache[key] = vals
        return vals


# Ops whose output is their input's elements in the same order (Transpose: when the
# permutation moves only size-1 axes, checked per shape), and the heads a chain may start with.
_VIEW_TAIL = frozenset(("Squeeze", "Unsqueeze", "Reshape", "Flatten", "Identity", "Transpose"))
_VIEW_HEAD = _VIEW_TAIL | {"Slice"}


def _fuse_view_chains(graph: G.Graph, steps: list, consts: Mapping, outputs: set) -> list:
    """A step of _VIEW_HEAD followed by _VIEW_TAIL steps, each the only reader of the previous
    output (DTLN: Slice -> Squeeze -> Unsqueeze, Transpose -> Squeeze -> Transpose), with
    constant parameters, becomes one step: the head, then one reshape to the tail's final
    shape, found per input shape by running the tail's own ops (errors theirs). Streaming
    models run dozens of these ~1 us steps a call. Same values: each tail op is a reshape
    of the same elements (a real transpose keeps running the ops)."""
    def plain(st) -> bool:
        node, fn, ins, attrs, outs, dead, sub = st
        return (not sub and node.domain == "" and len(outs) == 1 and bool(outs[0]) and outs == tuple(node.outputs)
                and bool(ins) and bool(ins[0]) and ins[0] not in consts and not isinstance(fn, _MetaMemo)
                and all((not t) or t in consts for t in ins[1:]))
    by_node = {st[0].index: i for i, st in enumerate(steps) if plain(st)}
    out, taken = [], set()
    for i, st in enumerate(steps):
        if i in taken:
            continue
        if st[0].op_type not in _VIEW_HEAD or i not in by_node.values() or by_node.get(st[0].index) != i:
            out.append(st)
            continue
        chain, t = [], st[4][0]
        while t not in outputs:
            c = graph.consumers.get(t, [])
            j = by_node.get(c[0], -1) if len(c) == 1 else -1
            if j <= i or j in taken or steps[j][0].op_type not in _VIEW_TAIL or steps[j][2][0] != t \
                    or t in steps[j][2][1:]:
                break
            chain.append(steps[j])
            taken.add(j)
            t = steps[j][4][0]
        if not chain:
            out.append(st)
            continue
        out.append((st[0], _ViewChain(st, chain, consts), st[2], {}, (t,), (), False))
    return _redo_dead(out, set(outputs) | set(consts)) if taken else steps


class _ViewChain:
    """One chain of _fuse_view_chains as a step function."""

    def __init__(self, head: tuple, tail: list, consts: Mapping):
        self.head, self.head_attrs = head[1], head[3]
        self.tail = [(st[0], st[1], [consts[t] if t else None for t in st[2][1:]], st[3],
                      OpContext(st[0], None, _FP32_RUNNER)) for st in tail]
        self.cache: dict = {}

    def __call__(self, ctx, *args):
        y = self.head(ctx, *args, **self.head_attrs)
        if type(y) is np.ndarray:
            shape = self.cache.get(y.shape)
            if shape is not None:
                return y.reshape(shape)
        x, flat = y, type(y) is np.ndarray
        for node, fn, rest, attrs, c in self.tail:
            x0 = x
            x = _normalize(_call_op(node, fn, c, [x] + rest, attrs), 1)[0]
            if flat and (type(x) is not np.ndarray or node.op_type == "Transpose"
                         and not _keeps_order(x0.shape, attrs.get("perm"))):
                flat = False
        if flat:
            if len(self.cache) >= _META_ENTRIES:
                self.cache.clear()
            self.cache[y.shape] = x.shape
        return x


def _keeps_order(shape: tuple, perm) -> bool:
    """Whether Transpose(perm) of `shape` leaves the elements in C order (it moves only size-1 axes)."""
    perm = list(range(len(shape)))[::-1] if perm is None else [int(p) % max(1, len(shape)) for p in perm]
    moved = [p for p in perm if shape[p] != 1]
    return moved == sorted(moved)


def _redo_dead(steps: list, keep: set) -> list:
    """Steps with their tensors-to-free recomputed for this order (after the last reader)."""
    last: dict[str, int] = {}
    for i, st in enumerate(steps):
        reads = [t for t in st[2] if t] + ([t for sg in st[0].subgraphs for t in sg.outer_names] if st[6] else [])
        for t in reads:
            last[t] = i
    dead: list[list[str]] = [[] for _ in steps]
    for t, i in last.items():
        if t not in keep:
            dead[i].append(t)
    return [st[:5] + (tuple(dead[i]),) + st[6:] for i, st in enumerate(steps)]


def _bn_foldable(bn: G.Node, env: dict, w: np.ndarray) -> bool:
    if len(bn.inputs) < 5 or any(o for o in bn.outputs[1:]) or bn.attrs.get("training_mode", 0):
        return False
    if not bn.attrs.get("spatial", 1):
        return False
    ps = [env.get(t) for t in bn.inputs[1:5]]
    return all(isinstance(p, np.ndarray) and p.shape == (w.shape[0],) and p.dtype.kind == "f" for p in ps)


def _inplace_act(node: G.Node, env: dict, dtype: np.dtype):
    """An in-place f(y) with the op's own arithmetic (max, then min for Clip), or None."""
    from .ops.elementwise import clip_bounds, clip_ufunc
    dtype = np.dtype(dtype)
    if node.op_type == "Relu":
        lo, hi = np.zeros((), dtype), np.asarray(np.inf, dtype)  # a Conv's output: always float
    else:
        bounds = clip_bounds(node, env.get, dtype)
        if bounds is None:
            return None
        lo, hi = bounds
    if dtype in (np.float32, np.float64):
        # The Relu/Clip ops' own ufunc, so a fused chain keeps their bits (-0.0 included).
        return lambda y: clip_ufunc(y, lo, hi, out=y)

    def clip(y):
        np.maximum(y, lo, out=y)
        np.minimum(y, hi, out=y)
    return clip


def _frozen(v):
    """Folded values are shared between runs: make accidental in-place writes fail loudly."""
    if isinstance(v, np.ndarray):
        v.flags.writeable = False
    return v


class _Overlay(dict):
    """A dict whose misses fall back to a base trace (for downstream-cone re-runs)."""

    def __init__(self, base: Mapping):
        super().__init__()
        self.base = base

    def __missing__(self, key):
        return self.base[key]

    def get(self, key, default=None):
        if dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        return self.base.get(key, default)

    def __contains__(self, key):
        return dict.__contains__(self, key) or key in self.base

    def flatten(self) -> dict:
        d = dict(self.base)
        d.update(self)
        return d


def load(src: Any) -> Model:
    """Load an ONNX model from a path, bytes or a ModelProto, or a CoreML ML program from a
    .mlpackage/.mlmodel path (translated to ONNX by halfsim.mil)."""
    from .mil.loader import is_coreml_path
    if is_coreml_path(src):
        from .mil import load as load_ml_program
        return load_ml_program(src)
    proto = G.read_model(src)
    return Model(proto, source=src if isinstance(src, (str, os.PathLike)) else "<memory>")
