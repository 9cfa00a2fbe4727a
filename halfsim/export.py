"""Mixed-precision ONNX export: every main-graph node runs in fp16 except the ones kept in fp32.

- Float initializers and Constant values consumed by fp16 nodes are stored as fp16, clipped to
  +-65504 first (as the presets saturate weights); a value consumed by both regions is stored
  twice (fp32 and a clipped fp16 copy), so no Cast of a constant can overflow to inf.
- Nodes in fp16 take fp16 float inputs and produce fp16 float outputs wherever their ONNX type
  constraints allow float16 (taken from the op schema at the model's opset). Inputs that must
  stay fp32 or integer (shape inputs, indices, Resize roi/scales, any input whose schema type
  is fixed to float) keep their type; a Cast is inserted at every border between regions.
- Graph inputs and outputs keep their fp32 types (keep_io_types=True) with Casts inside.
- Nodes with subgraphs (If/Loop/Scan) and everything inside them stay fp32; outer tensors they
  read from the fp16 region are cast back to fp32 and renamed inside the bodies. Ops of other
  domains (com.microsoft, ...) and ops without a float16 type constraint stay fp32 too.
- value_info of the main graph is dropped (its types would be stale); ORT re-infers them.
Ops that ORT's CPU EP has no fp16 kernel for are fine: ORT inserts the casts itself."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import HalfsimError

F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16
FP16_MAX = float(np.finfo(np.float16).max)
_ANY_INPUT = {("Shape", 0), ("Size", 0), ("Cast", 0)}   # inputs that take any type as it comes
_FP32_INPUT = {("Resize", 1)}                            # roi: ORT's CPU kernels want float
_FP32_OPS = {"EyeLike", "RandomNormalLike", "RandomUniformLike", "Bernoulli", "Multinomial",
             "RandomNormal", "RandomUniform"}


def _clip16(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        c = np.where(np.isfinite(a), np.clip(a, -FP16_MAX, FP16_MAX), a)
    return c.astype(np.float16)


def _schema(node: onnx.NodeProto, opsets: Mapping[str, int]):
    dom = "" if node.domain in ("", "ai.onnx") else node.domain
    if dom not in ("",):
        return None
    try:
        return onnx.defs.get_schema(node.op_type, opsets.get(dom, 1), dom)
    except Exception:
        return None


def _formal(params, j: int):
    """The formal parameter that the j-th actual input/output binds to (variadic last)."""
    if j < len(params):
        return params[j]
    if params and params[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
        return params[-1]
    return None


class _Types:
    """Element types of every main-graph tensor: given dtypes, then ONNX shape inference,
    then propagation through op schemas."""

    def __init__(self, m: onnx.ModelProto, dtypes: Mapping[str, Any] | None):
        g = m.graph
        self.t: dict[str, int] = {}
        for vi in list(g.input) + list(g.output):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                self.t[vi.name] = vi.type.tensor_type.elem_type
        for init in g.initializer:
            self.t[init.name] = init.data_type
        try:
            inf = onnx.shape_inference.infer_shapes(m, strict_mode=False)
            for vi in inf.graph.value_info:
                if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                    self.t.setdefault(vi.name, vi.type.tensor_type.elem_type)
        except Exception:
            pass
        for k, v in (dtypes or {}).items():
            try:
                self.t[k] = helper.np_dtype_to_tensor_dtype(np.dtype(v))
            except Exception:
                pass

    def fill(self, nodes, opsets) -> None:
        for n in nodes:
            if all(o in self.t for o in n.output if o):
                continue
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        self.t[n.output[0]] = a.t.data_type
                    elif a.name in ("value_float", "value_floats"):
                        self.t[n.output[0]] = F32
                    elif a.name in ("value_int", "value_ints"):
                        self.t[n.output[0]] = TensorProto.INT64
                continue
            if n.op_type == "Cast":
                self.t.setdefault(n.output[0], next(a.i for a in n.attribute if a.name == "to"))
                continue
            s = _schema(n, opsets)
            if s is None:
                continue
            bound: dict[str, int] = {}
            for j, t in enumerate(n.input):
                p = _formal(s.inputs, j)
                if p is not None and t and t in self.t:
                    bound.setdefault(p.type_str, self.t[t])
            allowed = {c.type_param_str: list(c.allowed_type_strs) for c in s.type_constraints}
            for j, o in enumerate(n.output):
                p = _formal(s.outputs, j)
                if not o or o in self.t or p is None:
                    continue
                if p.type_str in bound:
                    self.t[o] = bound[p.type_str]
                else:
                    opts = allowed.get(p.type_str, [p.type_str])
                    if len(opts) == 1 and opts[0].startswith("tensor("):
                        self.t[o] = _type_of(opts[0])

    def get(self, name: str) -> int | None:
        return self.t.get(name)


def _type_of(s: str) -> int | None:
    names = {"tensor(float)": F32, "tensor(float16)": F16, "tensor(int64)": TensorProto.INT64,
             "tensor(int32)": TensorProto.INT32, "tensor(bool)": TensorProto.BOOL, "tensor(double)": TensorProto.DOUBLE}
    return names.get(s)


def _labels(g: onnx.GraphProto) -> tuple[list[int], list[str]]:
    """halfsim's topological order of the nodes and their labels (name or op_type_index)."""
    from .graph import _toposort
    avail = {t.name for t in g.initializer} | {v.name for v in g.input}
    order = _toposort(list(g.node), avail, g.name)
    labels = [""] * len(g.node)
    for pos, i in enumerate(order):
        n = g.node[i]
        labels[i] = n.name or f"{n.op_type}_{pos}"
    return order, labels


def _rename_in_subgraph(g: onnx.GraphProto, mapping: Mapping[str, str]) -> None:
    for n in g.node:
        for j, t in enumerate(n.input):
            if t in mapping:
                n.input[j] = mapping[t]
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                _rename_in_subgraph(a.g, mapping)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sg in a.graphs:
                    _rename_in_subgraph(sg, mapping)
    for o in g.output:  # a body output may be an outer tensor directly
        if o.name in mapping:
            ident = helper.make_node("Identity", [mapping[o.name]], [o.name + "__outer"])
            g.node.append(ident)
            o.name = o.name + "__outer"


def _free_names(g: onnx.GraphProto) -> set[str]:
    from .graph import _subgraph_free_names
    return _subgraph_free_names(g)


def convert_fp16(model_proto: onnx.ModelProto, keep_fp32: Iterable[str] = (), keep_io_types: bool = True,
                 dtypes: Mapping[str, Any] | None = None, report: dict | None = None) -> onnx.ModelProto:
    """An fp16 copy of an fp32 model; nodes named in keep_fp32 (halfsim labels: the node name,
    or op_type_index for unnamed nodes) stay fp32. keep_fp32 empty: the full fp16 conversion.
    dtypes (tensor name -> numpy dtype, e.g. from a halfsim trace) fills types that shape
    inference cannot. `report`, if given, receives the nodes forced to stay fp32 and why."""
    if not isinstance(model_proto, onnx.ModelProto):
        raise HalfsimError("convert_fp16 needs an onnx.ModelProto")
    m = onnx.ModelProto()
    m.CopyFrom(model_proto)
    g = m.graph
    opsets = {("" if o.domain in ("", "ai.onnx") else o.domain): o.version for o in m.opset_import}
    order, labels = _labels(g)
    nodes = [g.node[i] for i in order]
    labs = [labels[i] for i in order]
    keep = set(keep_fp32)
    unknown = sorted(keep - set(labs))
    if unknown:
        raise HalfsimError(f"keep_fp32 names no node {unknown[0]!r}")
    types = _Types(m, dtypes)
    types.fill(nodes, opsets)
    init_names = {t.name for t in g.initializer}
    input_names = {v.name for v in g.input}
    forced: dict[str, str] = {}
    if any(t.data_type == F16 for t in g.initializer) or any(types.get(v.name) == F16 for v in g.input):
        raise HalfsimError("the model already holds fp16 tensors; export needs an fp32 model")

    # Constant sources: initializers (not overridable inputs) and Constant nodes with float32 values.
    const_node = {}
    for n in nodes:
        if n.op_type == "Constant" and types.get(n.output[0]) == F32:
            const_node[n.output[0]] = n
    sources = {t for t in init_names if t not in input_names and types.get(t) == F32} | set(const_node)

    # 1. Decide each node's mode and the types it wants and produces.
    plan = []  # (node, label, low, wants: {j: type or None (any)}, outs: {k: type})
    for n, lab in zip(nodes, labs):
        if n.op_type == "Constant":
            continue
        wants: dict[int, int | None] = {}
        outs: dict[int, int] = {}
        low = lab not in keep
        s = _schema(n, opsets)
        why = None
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute):
            why = "has subgraphs (kept fp32 with its bodies)"
        elif s is None:
            why = f"no ONNX schema for {n.domain or 'ai.onnx'}::{n.op_type}"
        elif n.op_type in _FP32_OPS:
            why = "dtype chosen by attribute"
        conv_vars: set[str] = set()
        if low and why is None:
            allowed = {c.type_param_str: set(c.allowed_type_strs) for c in s.type_constraints}
            bad = False
            for j, t in enumerate(n.input):
                p = _formal(s.inputs, j)
                if not t or types.get(t) != F32 or (n.op_type, j) in _ANY_INPUT or (n.op_type, j) in _FP32_INPUT:
                    continue
                if p is None or p.type_str not in allowed or not p.is_homogeneous:
                    continue
                if "tensor(float16)" in allowed[p.type_str]:
                    conv_vars.add(p.type_str)
            for j, t in enumerate(n.input):  # an input that must stay fp32 shares a converted type
                p = _formal(s.inputs, j)
                if t and (n.op_type, j) in _FP32_INPUT and p is not None and p.type_str in conv_vars:
                    bad = True
            if bad:
                why = "an input that must stay fp32 shares the type of the data"
                conv_vars = set()
            float_out = any(types.get(o) == F32 for o in n.output if o)
            if not conv_vars and (float_out or any(types.get(t) == F32 for t in n.input if t)):
                if n.op_type not in ("Cast", "Shape", "Size", "ConstantOfShape") and why is None:
                    why = "no float16 type for its float inputs at this opset"
        if why is not None and low and any(types.get(t) == F32 for t in list(n.input) + list(n.output) if t):
            forced[lab] = why
        low = low and why is None
        for j, t in enumerate(n.input):
            if not t:
                continue
            if (n.op_type, j) in _ANY_INPUT:
                wants[j] = None
                continue
            ty = types.get(t)
            p = _formal(s.inputs, j) if s is not None else None
            if low and ty == F32 and p is not None and p.type_str in conv_vars and (n.op_type, j) not in _FP32_INPUT:
                wants[j] = F16
            else:
                wants[j] = ty
        for k, o in enumerate(n.output):
            if not o:
                continue
            ty = types.get(o)
            p = _formal(s.outputs, k) if s is not None else None
            if low and ty == F32 and p is not None and p.type_str in conv_vars:
                outs[k] = F16
            elif low and ty == F32 and n.op_type == "Cast":
                outs[k] = F16
            elif low and ty == F32 and n.op_type == "ConstantOfShape":
                outs[k] = F16
            else:
                outs[k] = ty
        plan.append((n, lab, low, wants, outs))

    # 2. Demands on every tensor: which types its consumers want.
    demand: dict[str, set[int]] = {}
    for n, lab, low, wants, outs in plan:
        for j, t in enumerate(n.input):
            if t and wants.get(j) is not None:
                demand.setdefault(t, set()).add(wants[j])
        for a in n.attribute:
            for sg in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                for t in _free_names(sg):
                    if types.get(t) == F32:
                        demand.setdefault(t, set()).add(F32)
    out_type = {}
    for o in g.output:
        ty = types.get(o.name)
        out_type[o.name] = (F16 if ty == F32 and not keep_io_types else ty)
        if ty is not None:
            demand.setdefault(o.name, set()).add(out_type[o.name])

    # 3. Produced type and name of every tensor, and the versions consumers read.
    used = {t for n in g.node for t in list(n.input) + list(n.output)} | init_names | input_names
    used |= {o.name for o in g.output}

    def fresh(base: str) -> str:
        name, i = base, 1
        while name in used:
            name, i = f"{base}_{i}", i + 1
        used.add(name)
        return name

    suffix = {F16: "fp16", F32: "fp32"}
    version: dict[tuple[str, int], str] = {}   # (tensor, type) -> name carrying it
    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    drop_inits: set[str] = set()
    graph_outputs = {o.name for o in g.output}

    def produce(t: str, ty: int | None, where: list) -> str:
        """Name the producer writes `t` under, and the Casts from it to every other demanded type."""
        want = demand.get(t, set())
        name = t
        if ty is not None and t in graph_outputs and out_type.get(t) != ty:
            name = fresh(f"{t}__{suffix.get(ty, 'raw')}")
        version[(t, ty)] = name
        for w in sorted(want - {ty}) if ty in (F16, F32) else ():
            if w not in (F16, F32):
                continue
            target = t if (t in graph_outputs and out_type.get(t) == w) else fresh(f"{t}__{suffix[w]}")
            where.append(helper.make_node("Cast", [name], [target], to=w, name=fresh(f"{t}__cast_{suffix[w]}")))
            version[(t, w)] = target
        return name

    # Graph inputs (and initializers overridable as inputs).
    head: list[onnx.NodeProto] = []
    for vi in g.input:
        ty = types.get(vi.name)
        if ty == F32 and not keep_io_types and vi.name not in init_names:
            vi.type.tensor_type.elem_type = F16
            ty = F16
        produce(vi.name, ty, head)
    # Constant sources: store the versions the consumers want (fp16 clipped).
    for t in sorted(sources):
        want = demand.get(t, set()) or {F32}
        if t in const_node:
            n = const_node[t]
            val = _constant_value(n)
            if F32 in want:
                version[(t, F32)] = t
                head_nodes = [n]
                if F16 in want:
                    t16 = fresh(f"{t}__fp16")
                    head_nodes.append(helper.make_node("Constant", [], [t16], value=numpy_helper.from_array(_clip16(val), t16),
                                                       name=fresh(f"{n.name or t}__fp16")))
                    version[(t, F16)] = t16
                head.extend(head_nodes)
            else:
                head.append(helper.make_node("Constant", [], [t], value=numpy_helper.from_array(_clip16(val), t),
                                             name=n.name))
                version[(t, F16)] = t
        else:
            init = next(i for i in g.initializer if i.name == t)
            if F32 in want:
                version[(t, F32)] = t
                if F16 in want:
                    t16 = fresh(f"{t}__fp16")
                    new_inits.append(numpy_helper.from_array(_clip16(numpy_helper.to_array(init)), t16))
                    version[(t, F16)] = t16
            else:
                drop_inits.add(t)
                new_inits.append(numpy_helper.from_array(_clip16(numpy_helper.to_array(init)), t))
                version[(t, F16)] = t
    for t in init_names:
        if t not in sources:
            version.setdefault((t, types.get(t)), t)
    # Non-float Constant nodes and everything else, in topological order.
    for n in nodes:
        if n.op_type == "Constant" and n.output[0] not in const_node:
            head.append(n)
            for o in n.output:
                version[(o, types.get(o))] = o
    body: list[onnx.NodeProto] = []
    for n, lab, low, wants, outs in plan:
        pre: list[onnx.NodeProto] = []
        for j, t in enumerate(n.input):
            if not t:
                continue
            w = wants.get(j)
            if w is None:  # any type: take what exists, preferring the produced version
                cands = [v for (tt, _), v in version.items() if tt == t]
                n.input[j] = cands[0] if cands else t
                continue
            v = version.get((t, w))
            if v is None:
                have = [(ty, nm) for (tt, ty), nm in version.items() if tt == t]
                if not have:
                    v = t  # produced outside what we track (should not happen): leave it
                else:
                    nm = fresh(f"{t}__{suffix.get(w, 'cast')}")
                    pre.append(helper.make_node("Cast", [have[0][1]], [nm], to=w, name=fresh(f"{t}__cast")))
                    version[(t, w)] = nm
                    v = nm
            n.input[j] = v
        if low and n.op_type == "Cast" and outs.get(0) == F16:
            for a in n.attribute:
                if a.name == "to":
                    a.i = F16
        if low and n.op_type == "ConstantOfShape" and outs.get(0) == F16:
            for a in n.attribute:
                if a.name == "value":
                    a.t.CopyFrom(numpy_helper.from_array(_clip16(numpy_helper.to_array(a.t)), a.t.name))
            if not any(a.name == "value" for a in n.attribute):
                n.attribute.append(helper.make_attribute("value", numpy_helper.from_array(np.zeros(1, np.float16))))
        # Outer tensors read by subgraphs: fp32 versions, renamed inside the bodies.
        mapping = {}
        for a in n.attribute:
            for sg in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                for t in _free_names(sg):
                    if types.get(t) == F32:
                        v = version.get((t, F32))
                        if v is None:
                            have = [(ty, nm) for (tt, ty), nm in version.items() if tt == t]
                            if have:
                                v = fresh(f"{t}__fp32")
                                pre.append(helper.make_node("Cast", [have[0][1]], [v], to=F32, name=fresh(f"{t}__cast")))
                                version[(t, F32)] = v
                        if v is not None and v != t:
                            mapping[t] = v
        if mapping:
            for a in n.attribute:
                for sg in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    _rename_in_subgraph(sg, mapping)
        post: list[onnx.NodeProto] = []
        for k, o in enumerate(n.output):
            if o:
                n.output[k] = produce(o, outs.get(k), post)
        body.extend(pre)
        body.append(n)
        body.extend(post)

    del g.node[:]
    g.node.extend(head + body)
    keep_inits = [i for i in g.initializer if i.name not in drop_inits]
    del g.initializer[:]
    g.initializer.extend(keep_inits + new_inits)
    for o in g.output:
        if out_type.get(o.name) is not None and o.type.HasField("tensor_type"):
            o.type.tensor_type.elem_type = out_type[o.name]
    del g.value_info[:]
    if report is not None:
        report["forced_fp32"] = forced
    return m


def _constant_value(n: onnx.NodeProto) -> np.ndarray:
    for a in n.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
    raise HalfsimError(f"Constant {n.name!r} has no float value")


def check_precision(precision) -> None:
    """Export writes fp16 models: refuse precisions whose low format is not fp16."""
    name = precision if isinstance(precision, str) else getattr(precision, "name", "")
    if name and ("bf16" in name or "fp8" in name or name.endswith("tf32") or name == "fp32"):
        raise HalfsimError(f"export writes fp16 models; precision {name!r} has no fp16 ONNX form")


def export_placement(model, keep_fp32: Iterable[str], path: str | None = None, precision: str = "fp16",
                     feeds: Mapping[str, np.ndarray] | None = None, keep_io_types: bool = True,
                     report: dict | None = None, dtypes: Mapping[str, Any] | None = None) -> onnx.ModelProto:
    """Write `model` (a halfsim Model, a ModelProto or a path) with `keep_fp32` nodes in fp32
    and every other node in fp16. Returns the ModelProto; saves it when `path` is given."""
    from . import load
    from .interpreter import Model
    check_precision(precision)
    m = model if isinstance(model, Model) else load(model)
    if dtypes is None and feeds is not None:
        tr = m.run(feeds, keep_trace=True).trace
        dtypes = {k: v.dtype for k, v in tr.items() if isinstance(v, np.ndarray)}
    proto = convert_fp16(m.proto, keep_fp32, keep_io_types=keep_io_types, dtypes=dtypes, report=report)
    if path is not None:
        try:
            onnx.save(proto, path)
        except OSError as e:
            raise HalfsimError(f"cannot write {path}: {e.strerror}") from None
    return proto
