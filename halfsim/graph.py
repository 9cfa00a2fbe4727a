"""Loading ONNX models into an executable plan: nodes in topological order, attributes
converted once, op implementations resolved at load time, and the last use of every tensor
so the interpreter can free it."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import AttributeProto, numpy_helper

from .errors import ModelError, UnsupportedOpError
from .ops.registry import OpImpl, resolve

DEFAULT_DOMAINS = ("", "ai.onnx")
MIN_OPSET, MAX_OPSET = 7, 23


def np_dtype(elem_type: int) -> np.dtype:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except Exception:
        raise ModelError(f"unsupported tensor element type {onnx.TensorProto.DataType.Name(elem_type)}") from None


@dataclass
class ValueInfo:
    name: str
    dtype: np.dtype | None
    shape: tuple | None  # entries: int, a symbolic name (str) or None; None: rank unknown

    def describe(self) -> str:
        dt = self.dtype.name if self.dtype is not None else "?"
        if self.shape is None:
            return f"{dt}[?]"
        return f"{dt}[{','.join(str(d) if d is not None else '?' for d in self.shape)}]"


def _value_info(vi: onnx.ValueInfoProto) -> ValueInfo:
    t = vi.type
    if not t.HasField("tensor_type"):
        return ValueInfo(vi.name, None, None)
    tt = t.tensor_type
    dtype = np_dtype(tt.elem_type) if tt.elem_type else None
    shape = None
    if tt.HasField("shape"):
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
    return ValueInfo(vi.name, dtype, shape)


@dataclass
class Node:
    index: int
    name: str
    op_type: str
    domain: str
    opset: int
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]
    impl: OpImpl
    subgraphs: list["Graph"] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.name or f"{self.op_type}_{self.index}"


@dataclass
class Graph:
    name: str
    nodes: list[Node]
    initializers: dict[str, np.ndarray]
    inputs: list[ValueInfo]          # graph inputs that are not initializers
    outputs: list[ValueInfo]
    outer_names: set[str]            # names read from an enclosing graph
    last_use: dict[str, int]         # tensor -> index of the last node reading it
    producer: dict[str, int]         # tensor -> index of the node writing it
    consumers: dict[str, list[int]]  # tensor -> nodes reading it (including inside subgraphs)

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    def downstream(self, nodes: set[int]) -> set[int]:
        """Indices of `nodes` and every node that depends on them."""
        cone = set(nodes)
        for n in self.nodes:  # topological order: one pass suffices
            if n.index in cone:
                continue
            if any(self.producer.get(t, -1) in cone for t in _all_reads(n)):
                cone.add(n.index)
        return cone


def _all_reads(node: Node) -> list[str]:
    reads = [t for t in node.inputs if t]
    for g in node.subgraphs:
        reads.extend(g.outer_names)
    return reads


def _attr_value(a: AttributeProto, opsets: dict[str, int], outer: set[str]) -> Any:
    T = AttributeProto
    if a.type == T.FLOAT:
        return float(a.f)
    if a.type == T.INT:
        return int(a.i)
    if a.type == T.STRING:
        return a.s.decode("utf-8", "replace")
    if a.type == T.TENSOR:
        return numpy_helper.to_array(a.t)
    if a.type == T.GRAPH:
        return build_graph(a.g, opsets, outer)
    if a.type == T.FLOATS:
        return [float(v) for v in a.floats]
    if a.type == T.INTS:
        return [int(v) for v in a.ints]
    if a.type == T.STRINGS:
        return [s.decode("utf-8", "replace") for s in a.strings]
    if a.type == T.TENSORS:
        return [numpy_helper.to_array(t) for t in a.tensors]
    if a.type == T.GRAPHS:
        return [build_graph(g, opsets, outer) for g in a.graphs]
    if a.type == T.SPARSE_TENSOR:
        return _sparse_to_dense(a.sparse_tensor)
    if a.type == T.TYPE_PROTO:  # Optional's 'type': passed through as the TypeProto
        return a.tp
    if a.type == T.TYPE_PROTOS:
        return list(a.type_protos)
    raise ModelError(f"attribute {a.name!r} has unsupported type {T.AttributeType.Name(a.type)}")


def _sparse_to_dense(sp: onnx.SparseTensorProto) -> np.ndarray:
    values = numpy_helper.to_array(sp.values)
    idx = numpy_helper.to_array(sp.indices)
    dense = np.zeros(int(np.prod(sp.dims)), dtype=values.dtype)
    flat = idx if idx.ndim == 1 else np.ravel_multi_index(idx.T, tuple(sp.dims))
    dense[flat] = values
    return dense.reshape(tuple(sp.dims))


def build_graph(gp: onnx.GraphProto, opsets: dict[str, int], outer: set[str] | None = None) -> Graph:
    """Compile a GraphProto. `outer` holds the names visible from enclosing graphs."""
    outer = set(outer or ())
    inits: dict[str, np.ndarray] = {}
    for t in gp.initializer:
        try:
            inits[t.name] = numpy_helper.to_array(t)
        except Exception as e:
            raise ModelError(f"initializer {t.name!r} cannot be read: {_one_line(e)}") from None
    for st in gp.sparse_initializer:
        inits[st.values.name] = _sparse_to_dense(st)
    inputs = [_value_info(v) for v in gp.input if v.name not in inits]
    outputs = [_value_info(v) for v in gp.output]

    # Names visible to nodes of this graph (subgraphs see all of them as outer scope).
    local = set(inits) | {v.name for v in inputs}
    for n in gp.node:
        local.update(o for o in n.output if o)
    visible = outer | local

    raw = list(gp.node)
    order = _toposort(raw, set(inits) | {v.name for v in inputs} | outer, gp.name)
    nodes: list[Node] = []
    for idx, ri in enumerate(order):
        n = raw[ri]
        domain = "" if n.domain in DEFAULT_DOMAINS else n.domain
        opset = opsets.get(domain)
        if opset is None:
            raise ModelError(f"node {n.name or n.op_type!r} uses domain {domain!r} that the model does not import")
        impl = resolve(n.op_type, domain, opset, n.name)
        attrs: dict[str, Any] = {}
        subgraphs: list[Graph] = []
        for a in n.attribute:
            if a.ref_attr_name:
                raise ModelError(f"node {n.name!r}: attribute references are only valid inside functions")
            v = _attr_value(a, opsets, visible)
            if isinstance(v, Graph):
                subgraphs.append(v)
            elif isinstance(v, list) and v and isinstance(v[0], Graph):
                subgraphs.extend(v)
            attrs[a.name] = v
        if impl.attr_names is not None:
            unknown = set(attrs) - impl.attr_names
            if unknown:
                raise UnsupportedOpError(n.op_type, domain, opset, n.name).with_detail(
                    f"attribute(s) {', '.join(sorted(unknown))} not supported")
        nodes.append(Node(idx, n.name, n.op_type, domain, opset, list(n.input), list(n.output),
                          attrs, impl, subgraphs))

    producer: dict[str, int] = {}
    for nd in nodes:
        for o in nd.outputs:
            if o:
                producer[o] = nd.index
    consumers: dict[str, list[int]] = {}
    last_use: dict[str, int] = {}
    for nd in nodes:
        for t in _all_reads(nd):
            consumers.setdefault(t, []).append(nd.index)
            last_use[t] = nd.index
    outer_names = set()
    for nd in nodes:
        for t in _all_reads(nd):
            if t not in local:
                outer_names.add(t)
    for o in outputs:
        if o.name not in local:
            outer_names.add(o.name)
    return Graph(gp.name, nodes, inits, inputs, outputs, outer_names, last_use, producer, consumers)


def _toposort(raw: list[onnx.NodeProto], available: set[str], gname: str) -> list[int]:
    """Kahn's order, stable with respect to the file's order (which is usually already valid)."""
    avail = set(available)
    # Names produced by this graph's nodes; anything else a node reads must come from outside.
    produced = {o for n in raw for o in n.output if o}

    def reads(n: onnx.NodeProto) -> set[str]:
        r = {i for i in n.input if i}
        for a in n.attribute:
            for g in ([a.g] if a.type == AttributeProto.GRAPH else list(a.graphs)):
                r |= _subgraph_free_names(g)
        return r

    pending = [(i, reads(n)) for i, n in enumerate(raw)]
    for i, r in pending:
        missing = sorted(x for x in r if x not in avail and x not in produced)
        if missing:
            raise ModelError(f"node {raw[i].name or raw[i].op_type!r} reads tensor {missing[0]!r} that nothing produces")
    order: list[int] = []
    while pending:
        progressed = False
        rest = []
        for i, r in pending:
            if all(x in avail or x not in produced for x in r):
                order.append(i)
                avail.update(o for o in raw[i].output if o)
                progressed = True
            else:
                rest.append((i, r))
        pending = rest
        if not progressed:
            n = raw[pending[0][0]]
            missing = sorted(x for x in pending[0][1] if x not in avail)
            raise ModelError(f"graph {gname!r} has a cycle or unreachable input: node {n.name or n.op_type!r} waits for {missing[:3]}")
    return order


def _subgraph_free_names(g: onnx.GraphProto) -> set[str]:
    defined = {t.name for t in g.initializer} | {v.name for v in g.input}
    defined |= {o for n in g.node for o in n.output if o}
    free = set()
    for n in g.node:
        free |= {i for i in n.input if i and i not in defined}
        for a in n.attribute:
            for sg in ([a.g] if a.type == AttributeProto.GRAPH else list(a.graphs)):
                free |= {x for x in _subgraph_free_names(sg) if x not in defined}
    free |= {o.name for o in g.output if o.name not in defined}
    return free


def _one_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__


def read_model(src: str | os.PathLike | bytes | onnx.ModelProto) -> onnx.ModelProto:
    """Read a model file (external data resolved beside it), bytes, or pass a ModelProto through."""
    if isinstance(src, onnx.ModelProto):
        return src
    if isinstance(src, (bytes, bytearray)):
        try:
            return onnx.load_from_string(bytes(src))
        except Exception as e:
            raise ModelError(f"model bytes are not a valid ONNX model: {_one_line(e)}") from None
    path = os.fspath(src)
    if not os.path.exists(path):
        raise ModelError(f"model file not found: {path}")
    if os.path.isdir(path):
        raise ModelError(f"model path is a directory, not an ONNX file: {path}")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ModelError(f"cannot read model file {path}: {e.strerror}") from None
    try:
        m = onnx.load_from_string(data)
    except Exception as e:
        raise ModelError(f"{path} is not a valid ONNX model (corrupt or truncated protobuf: {_one_line(e)})") from None
    if not m.HasField("graph") or (not m.graph.node and not m.graph.output):
        raise ModelError(f"{path} is not a valid ONNX model (no graph)")
    try:
        from onnx.external_data_helper import load_external_data_for_model, uses_external_data
        if any(uses_external_data(t) for t in m.graph.initializer):
            load_external_data_for_model(m, os.path.dirname(os.path.abspath(path)))
    except Exception as e:
        raise ModelError(f"{path}: external weight data cannot be loaded: {_one_line(e)}") from None
    return m


def model_opsets(m: onnx.ModelProto) -> dict[str, int]:
    ops = {}
    for o in m.opset_import:
        ops["" if o.domain in DEFAULT_DOMAINS else o.domain] = int(o.version)
    if "" not in ops:
        ops[""] = 1 if m.ir_version < 3 else MIN_OPSET
    v = ops[""]
    if not MIN_OPSET <= v <= MAX_OPSET:
        raise ModelError(f"unsupported default-domain opset {v} (halfsim supports opsets {MIN_OPSET} to {MAX_OPSET})")
    return ops
