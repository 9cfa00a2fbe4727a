"""Compiled schedules for precision plans: plain runs (no hook, observer, trace or cone re-run)
under a policy replay the per-node decisions of an earlier run instead of taking them again.

The general path (interpreter.exec_node -> PrecisionPlan.on_inputs / on_outputs) decides for
every node, on every run, which inputs to widen or round and to which format, how to round its
outputs and which format tags to set: about 8 us of Python a node. Those decisions depend only
on the policy, the graph and the dtypes of the tensors (tags follow from them), so a run
records them (PrecisionPlan._rec), and later runs execute a per-graph step list that applies
them: the same rounding calls (PrecisionPlan.apply_inputs / apply_outputs), so the same
outputs, events and tags, bit for bit, with the per-node Python cut to argument plumbing and a
dtype guard. A guard that fails (a tensor of another dtype than when recorded) abandons the
compiled run of that graph: its events are dropped and the graph runs the general path, which
records afresh; a graph that keeps missing stays on the general path.

Main-graph nodes that read only weights are folded as on the general path (the plan's
fold_cache: values computed once, their events replayed in node order). If/Loop/Scan bodies and
decomposed function bodies get their own schedules, built after their first general run."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from . import graph as G
from .decompose import DECOMPOSED, has_body, run_decomposed
from .errors import ExecutionError, HalfsimError
from .formats import Format
from .interpreter import (_DEBUG, _MISSING, OpContext, _call_op, _constant_nodes, _frozen, _normalize, _Runner,
                          _step_failed)
from .ops.registry import quiet_run
from .precision import _per_policy

_FOLD, _NODE, _DECOMPOSED = 0, 1, 2
_DEAD = "dead"              # a graph left on the general path
_MAX_MISSES = 3


class _Miss(Exception):
    """A tensor's dtype differs from the recorded run's: this schedule does not apply."""


class _Schedule:
    """The steps of one graph under one policy, and what a run replays before them."""
    __slots__ = ("steps", "env0", "init_events", "init_tags", "hits", "outer", "outputs", "code", "top")

    def __init__(self, steps, env0, init_events, init_tags, hits, outer, outputs, top):
        self.steps, self.env0, self.init_events, self.init_tags = steps, env0, init_events, init_tags
        self.hits, self.outer, self.outputs = hits, outer, outputs
        self.code, self.top = None, top

    def execute(self, runner: "_PlanRunner", env: dict) -> None:
        """Run the steps on `env` (its graph's inputs, weights and outer tensors; the graph's
        outputs are written back to it) as generated code."""
        if self.code is None:
            self.code = _compile(self)
        self.code(runner, env)


def _stores(plan) -> tuple[dict, dict]:
    """The model's (records, schedules) of the plan's policy."""
    return _per_policy(plan, "_plan_records", dict), _per_policy(plan, "_plan_schedules", dict)


def run(plan, model, feeds: Mapping[str, np.ndarray]) -> dict | None:
    """Run `model` under `plan` through its compiled schedule; None when there is none yet (or
    it does not apply): the caller then runs the general path, which records the decisions."""
    records, schedules = _stores(plan)
    plan._rec = records
    g = model.graph
    sched = schedules.get(id(g))
    if sched is None:
        sched = _build(plan, model, g, records, top=True)
        if sched is None:
            return None
        schedules[id(g)] = sched
    elif sched is _DEAD:
        return None
    runner = _PlanRunner(model, plan, records, schedules)
    events, tags = plan.events, plan.tags
    mark, tags0 = len(events), dict(tags)
    events.extend(sched.init_events)
    tags.update(sched.init_tags)
    env = dict(sched.env0)
    for k, v in feeds.items():
        env[k] = plan.on_graph_input(k, v)
    try:
        with quiet_run():  # numpy's error state once per run, as fp32 runs do, not once per op
            sched.execute(runner, env)
    except _Miss:
        _missed(schedules, g)
        del events[mark:]
        plan.tags = tags0
        return None
    runner.add_hits(sched)
    return env


def _missed(schedules: dict, g: G.Graph) -> None:
    """A run of g's schedule missed: rebuilt from the general run's new records next time,
    unless g keeps missing (dtypes that change from run to run): then it stays general."""
    key = ("misses", id(g))
    n = schedules[key] = schedules.get(key, 0) + 1
    if n >= _MAX_MISSES:
        schedules[id(g)] = _DEAD
    else:
        schedules.pop(id(g), None)


class _PlanRunner(_Runner):
    """Runs bodies (If/Loop/Scan, decomposed functions) through their schedules."""

    def __init__(self, model, plan, records: dict, schedules: dict):
        super().__init__(model, plan, None, None)
        self.records, self.schedules = records, schedules
        self._hit_scheds: set[int] = set()

    def add_hits(self, sched: _Schedule) -> None:
        """The policy rules' hit counts that resolving the schedule's nodes adds (once a run,
        as the plan resolves each node once)."""
        if sched.hits and id(sched) not in self._hit_scheds:
            self._hit_scheds.add(id(sched))
            rules = self.plan.policy.rules
            for i, c in sched.hits:
                rules[i].hits += c

    def run_subgraph(self, graph: G.Graph, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        sched = self.schedules.get(id(graph))
        if sched is None:
            sched = _build(self.plan, self.model, graph, self.records, top=False, runner=self)
            if sched is not None:
                self.schedules[id(graph)] = sched
        if sched is not None and sched is not _DEAD:
            inits = self._sub_inits.get(id(graph))
            if inits is None:  # weights rounded (events raised) once a run, as on the general path
                inits = self._sub_inits[id(graph)] = {k: self.plan.on_initializer(k, v)
                                                      for k, v in graph.initializers.items()}
            env = dict(inits)
            env.update(sched.env0)
            for t in sched.outer:
                for scope in reversed(self.scopes):
                    if t in scope:
                        env[t] = scope[t]
                        break
            for vi in graph.inputs:
                if vi.name in feeds:
                    env[vi.name] = feeds[vi.name]
            events = self.plan.events
            mark = len(events)
            try:
                sched.execute(self, env)
            except _Miss:
                _missed(self.schedules, graph)
                del events[mark:]
            else:
                self.add_hits(sched)
                try:
                    return [env[o] for o in sched.outputs]
                except KeyError as e:
                    raise ExecutionError(f"tensor {e.args[0]!r} is not available") from None
        return super().run_subgraph(graph, feeds)


# Ops whose `specialize` (fp32 schedules) reads only integer parameters or the shapes of its
# constant inputs, never their values: safe where the plan rounds those inputs.
_SPECIALIZE = frozenset(("Slice", "Reshape", "Squeeze", "Unsqueeze", "Split", "Gather", "Conv"))


def _build(plan, model, g: G.Graph, records: dict, top: bool, runner: "_PlanRunner | None" = None
           ) -> _Schedule | None:
    """The schedule of `g` from the recorded decisions, None while a node has none. In the main
    graph, weight-only nodes come from the plan's fold cache; in a body, nodes that read only
    the body's weights and the main graph's constants run once here, their outputs kept and
    their events and tags replayed on every call (the general path runs them every call)."""
    env0: dict[str, Any] = {}
    init_events: tuple = ()
    init_tags: dict = {}
    events, tags = plan.events, plan.tags
    mark = len(events)
    if top:
        folds, const = plan.fold_cache, model._const_nodes
        # The weights as the general path rounds them at the start of every run (from the
        # model's cache): computed here once, their events and tags replayed per run.
        for k, v in g.initializers.items():
            env0[k] = plan.on_initializer(k, v)
            if k in tags:
                init_tags[k] = tags[k]
        init_events = tuple(events[mark:])
    else:
        top_sched = runner.schedules.get(id(model.graph))
        outer = top_sched.env0 if isinstance(top_sched, _Schedule) else {}
        known = {t: outer[t] for t in g.outer_names if t in outer}
        known.update((k, plan.on_initializer(k, v)) for k, v in g.initializers.items())
        const = _constant_nodes(g, known)
        scratch = dict(known)
    del events[mark:]
    resolved = _per_policy(plan, "_policy_resolved", dict)
    outputs = set(g.output_names)
    steps: list = []
    hits: dict[int, int] = {}
    fold_events: list = []
    fold_tags: dict = {}

    def count_hits(n):  # the rule hits resolving n adds (the general path resolves it every run)
        hit = resolved.get(id(n))
        if hit is not None and hit[0] is n:
            for i in hit[2]:
                hits[i] = hits.get(i, 0) + 1

    for n in g.nodes:
        if n.index in const:
            if top:
                meta = folds.meta.get(n.index)
                if meta is None:
                    return None
                fold_events.extend(meta[0])
                fold_tags.update(meta[1])
                for o in n.outputs:
                    if o:
                        env0[o] = folds[o]
                continue
            before, mark = dict(tags), len(events)
            precs = id(n) in plan._precs
            try:
                runner.exec_node(n, scratch)
            except HalfsimError:
                del events[mark:]
                const.discard(n.index)  # fails at run time, as on the general path
            else:
                fold_events.extend(events[mark:])
                del events[mark:]
                fold_tags.update((k, v) for k, v in tags.items() if before.get(k) is not v)
                for o in n.outputs:
                    if o:
                        env0[o] = _frozen(scratch[o])
                if not precs:
                    count_hits(n)
                continue
        if fold_events or fold_tags:
            steps.append((_FOLD, tuple(fold_events), dict(fold_tags)))
            fold_events, fold_tags = [], {}
        r = records.get(id(n))
        if r is None or r[0] is not n:
            return None
        reads = [t for t in n.inputs if t] + [t for sg in n.subgraphs for t in sg.outer_names]
        dead = tuple(dict.fromkeys(t for t in reads if g.last_use.get(t) == n.index and t not in outputs)) if top else ()
        if r[1] is DECOMPOSED:
            steps.append((_DECOMPOSED, n, None, tuple(n.inputs), n.attrs, tuple(n.outputs), dead, None, None, True, {}))
            continue
        d, od = r[1], r[2]
        # A node that could decompose but whose body did not compile keeps asking run_decomposed
        # (its body depends on the input types), exactly as exec_node does.
        try_dec = not d.prec.fused and has_body(n)
        if not try_dec and id(n) not in plan._precs:
            count_hits(n)
        fn = n.impl.fn
        spec = getattr(fn, "specialize", None) if n.op_type in _SPECIALIZE and n.domain == "" else None
        if spec is not None:
            consts = env0 if top else scratch
            fn = spec(n, {i: consts[t] for i, t in enumerate(n.inputs) if t and t in consts}) or fn
        # Weights the node rounds (from the model's cache, events replayed): rounded here once.
        # Per run, the cache would be looked up, and recomputed whenever another policy's run
        # (whose folded constants are other arrays) took its entry in between.
        consts, baked = (env0 if top else scratch), {}
        for j in d.rounds:
            t = n.inputs[j]
            if j not in d.widen and t in plan.constants and t in consts:
                mark = len(events)
                rounded = plan._round_input(t, consts[t], d.storage, n)
                baked[j] = (rounded, tuple(events[mark:]))
                del events[mark:]
        steps.append((_NODE, n, fn, tuple(n.inputs), n.attrs, tuple(n.outputs), dead, d, od, try_dec, baked))
    if fold_events or fold_tags:
        steps.append((_FOLD, tuple(fold_events), dict(fold_tags)))
    outer_reads = tuple(sorted(t for t in g.outer_names if t not in env0))
    return _Schedule(steps, env0, init_events, init_tags, tuple(hits.items()), outer_reads, g.output_names, top)


def _execute(plan, runner: _PlanRunner, steps: list, env: dict) -> None:
    """The step loop: exec_node's work with the decisions taken, and a dtype guard per node."""
    events, tags = plan.events, plan.tags
    nd = np.ndarray
    for st in steps:
        kind = st[0]
        if kind is _FOLD:
            if st[1]:
                events.extend(st[1])
            tags.update(st[2])
            continue
        _, node, fn, ins, attrs, outs, dead, d, od, try_dec, _ = st
        try:
            args = [env[t] if t else None for t in ins]
        except KeyError as e:
            raise ExecutionError(f"tensor {e.args[0]!r} is not available") from None
        res = None
        if try_dec:
            res = run_decomposed(runner, node, args)
            if res is None and kind is _DECOMPOSED:
                raise _Miss
        if res is None:
            if [a.dtype if isinstance(a, nd) else None for a in args] != d.dtypes:
                raise _Miss
            if d.tags:
                tags.update(d.tags)
            new = plan.apply_inputs(d, node, args) if d.widen or d.rounds else args
            ctx = OpContext(node, d.prec, runner)
            if node.subgraphs:
                runner.scopes.append(env)
            try:
                res = _call_op(node, fn, ctx, new, attrs)
            finally:
                if node.subgraphs:
                    runner.scopes.pop()
            res = _normalize(res, len(outs))
            if [o.dtype if isinstance(o, nd) else None for o in res] != od.dtypes:
                raise _Miss
            if od.acts:
                res = plan.apply_outputs(od, d, node, res, new)
            if od.tags:
                tags.update(od.tags)
        for name, val in zip(outs, res):
            if name:
                env[name] = val
        for t in dead:
            env.pop(t, None)


def _compile(sched: _Schedule) -> Any:
    """The steps as one generated function run(r, env), like the fp32 schedules
    (interpreter._compile_steps): tensors in locals, the decisions inlined as constants, one
    dtype check per tensor read or made, `del` after the last use in the main graph. Steps that
    may decompose, and nodes with bodies, go through _execute with a small env."""
    steps = sched.steps
    glb: dict[str, Any] = {"C": OpContext, "nd": np.ndarray, "norm": _normalize, "HalfsimError": HalfsimError,
                           "Miss": _Miss, "M": _MISSING, "DEBUG": _DEBUG, "ex": _execute, "F32": np.float32,
                           "fail": lambda i, e: _step_failed(steps, i, e)}
    local: dict[str, str] = {}
    loads: list[str] = []
    lines: list[str] = []

    def var(t: str) -> str:
        v = local.get(t)
        if v is None:  # read before any step wrote it: a graph input, weight, folded or outer tensor
            v = local[t] = f"v{len(local)}"
            loads.append(f"        {v} = env[{t!r}]")
        return v

    def guard(v: str, dt, k: int, j: str) -> None:
        if dt is None:
            lines.append(f"        if type({v}) is nd: raise Miss")
        else:
            glb[f"D{k}_{j}"] = dt
            lines.append(f"        if type({v}) is not nd or ({v}.dtype is not D{k}_{j} and {v}.dtype != D{k}_{j}): raise Miss")

    def define(outs) -> list[str]:
        for t in outs:
            if t:
                local[t] = f"v{len(local)}"
        return [local[t] if t else "_" for t in outs]

    for k, st in enumerate(steps):
        lines.append(f"        i = {k}")
        if st[0] is _FOLD:
            glb[f"E{k}"], glb[f"T{k}"] = st[1], st[2]
            if st[1]:
                lines.append(f"        ev(E{k})")
            lines.append(f"        tu(T{k})")
            continue
        kind, node, fn, ins, attrs, outs, dead, d, od, try_dec, baked = st
        if try_dec or node.subgraphs:
            # exec_node's order (run_decomposed first) or a body reading this graph's tensors:
            # the step loop, on a dict of what it reads.
            glb[f"S{k}"] = [st]
            reads = sorted({t for t in ins if t} | {t for sg in node.subgraphs for t in sg.outer_names})
            items = ", ".join(f"({t!r}, {var(t) if t in local or sched.top else f'env.get({t!r}, M)'})"
                              for t in reads)
            lines.append(f"        e_ = {{k_: v_ for k_, v_ in ({items},) if v_ is not M}}" if reads else "        e_ = {}")
            lines.append(f"        ex(P, r, S{k}, e_)")
            targets = define(outs)
            for t, v in zip(outs, targets):
                if t:
                    lines.append(f"        {v} = e_[{t!r}]")
        else:
            glb[f"f{k}"], glb[f"n{k}"], glb[f"p{k}"], glb[f"a{k}"] = fn, node, d.prec, attrs
            args = []
            for j, t in enumerate(ins):
                if not t:
                    args.append("None")
                    continue
                v = var(t)
                guard(v, d.dtypes[j], k, str(j))
                args.append(v)
            if d.tags:
                glb[f"TI{k}"] = d.tags
                lines.append(f"        tu(TI{k})")
            new = list(args)
            for j in d.widen:
                new[j] = f"w{j}_"
                lines.append(f"        w{j}_ = {args[j]}.astype(F32)")
            if d.rounds:
                glb[f"ST{k}"] = d.storage
                for j in d.rounds:
                    new[j] = f"w{j}_"
                    if j in baked:
                        glb[f"B{k}_{j}"], glb[f"BE{k}_{j}"] = baked[j]
                        lines.append(f"        w{j}_ = B{k}_{j}")
                        if baked[j][1]:
                            lines.append(f"        ev(BE{k}_{j})")
                    else:
                        lines.append(f"        w{j}_ = RI({ins[j]!r}, {new[j] if j in d.widen else args[j]}, ST{k}, n{k})")
            call = f"f{k}(C(n{k}, p{k}, r), {', '.join(new)}{f', **a{k}' if attrs else ''})"
            targets = define(outs)
            if len(outs) == 1:
                lines.append(f"        o_ = {call}")
                lines.append("        if type(o_) is not nd: o_ = norm(o_, 1)[0]")
                res = ["o_"]
            else:
                res = [f"o{j}_" for j in range(len(outs))]
                lines.append(f"        {', '.join(res)}, = norm({call}, {len(outs)})")
            for j, o in enumerate(res):
                guard(o, od.dtypes[j], k, f"o{j}")
            if od.acts and all(isinstance(a[2], Format) and not a[3] and a[4] is None for a in od.acts):
                for j, t, fmt, _, _ in od.acts:  # the common case: round to the storage format
                    glb[f"R{k}_{j}"] = fmt
                    lines.append(f"        {res[j]} = RO({res[j]}, R{k}_{j}, p{k}, {t!r}, n{k}, ({', '.join(new)},))")
            elif od.acts:
                glb[f"d{k}"], glb[f"od{k}"] = d, od
                lines.append(f"        {', '.join(res)}, = AO(od{k}, d{k}, n{k}, [{', '.join(res)}], [{', '.join(new)}])")
            if od.tags:
                glb[f"TO{k}"] = od.tags
                lines.append(f"        tu(TO{k})")
            for t, v, o in zip(outs, targets, res):
                if t:
                    lines.append(f"        {v} = {o}")
        for t in dead:
            if t in local:
                lines.append(f"        del {local[t]}")
    for t in sched.outputs:
        if t in local:
            lines.append(f"        env[{t!r}] = {local[t]}")
    src = "\n".join(["def run(r, env):", "    i = -1", "    P = r.plan",
                     "    ev, tu, RI, AO, RO = P.events.extend, P.tags.update, P._round_input, P.apply_outputs, P.round_output",
                     "    try:"] + loads + lines + [
        "        pass", "    except (HalfsimError, Miss):", "        raise", "    except Exception as e:",
        "        if DEBUG:", "            raise", "        raise fail(i, e) from None"])
    exec(compile(src, "<halfsim plan schedule>", "exec"), glb)
    return glb["run"]
