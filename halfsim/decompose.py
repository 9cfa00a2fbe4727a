"""Decomposed execution: a node whose precision says `fused=False` and whose op has an ONNX
function body runs THROUGH that body, every step a separate op that the precision plan rounds
to the storage format, as an inlining runtime (ORT without a fused kernel, onnx's inliner)
computes it.

The body is the op schema's function (static, or context-dependent: built from the node's
attributes and its inputs' element types and ranks) for the largest function opset version
not above the model's opset of the op's domain. Attribute references (`ref_attr_name`) are
resolved from the node's attributes, or the schema's defaults; a reference to an attribute
that neither sets is dropped (the inner op then uses its own default), as onnx's inliner does.
The function's formal inputs and outputs are renamed to the node's tensors, its internal
tensors prefixed with the node's label, so weights stay recognisable as weights and the
formats of the node's outputs are tagged as usual. Every inner node is named like the outer
node (events and errors point at the model's node) and runs with the outer node's OpPrecision;
bodies whose inner ops have bodies of their own are expanded in turn, as a full inliner does.

Ops without a body (or whose body halfsim cannot compile) keep their own implementation, with
the `ctx.round` steps of the decomposed precision. Bodies are compiled once per node and input
types, and cached on the model."""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnx.defs
from onnx import AttributeProto, FunctionProto, helper, numpy_helper

from . import graph as G

_T = AttributeProto
_SCHEMAS: dict[tuple[str, str, int], Any] = {}
_NO = object()


def _schema_function(op_type: str, domain: str, opset: int):
    """(schema, function opset version, context dependent?) or None when no body applies."""
    key = (op_type, domain, opset)
    got = _SCHEMAS.get(key, _NO)
    if got is not _NO:
        return got
    got = None
    try:
        schema = onnx.defs.get_schema(op_type, opset, domain)
    except Exception:
        schema = None
    if schema is not None:
        for cd, versions in ((False, schema.function_opset_versions if schema.has_function else ()),
                             (True, schema.context_dependent_function_opset_versions
                              if schema.has_context_dependent_function else ())):
            usable = [v for v in versions if v <= opset]
            if usable:
                got = (schema, max(usable), cd)
                break
    _SCHEMAS[key] = got
    return got


def has_body(node: G.Node) -> bool:
    """Whether `node`'s op has an ONNX function body at the node's opset."""
    return not node.subgraphs and _schema_function(node.op_type, node.domain, node.opset) is not None


def _attr_proto(name: str, value: Any, atype: int) -> AttributeProto | None:
    """An AttributeProto of type `atype` from a converted (Python) attribute value."""
    if atype == _T.FLOAT:
        return helper.make_attribute(name, float(value))
    if atype == _T.INT:
        return helper.make_attribute(name, int(value))
    if atype == _T.STRING:
        return helper.make_attribute(name, value.encode() if isinstance(value, str) else bytes(value))
    if atype == _T.TENSOR:
        a = AttributeProto(name=name, type=_T.TENSOR)
        a.t.CopyFrom(numpy_helper.from_array(np.asarray(value)))
        return a
    if atype == _T.FLOATS:
        return helper.make_attribute(name, [float(v) for v in value], attr_type=_T.FLOATS)
    if atype == _T.INTS:
        return helper.make_attribute(name, [int(v) for v in value], attr_type=_T.INTS)
    if atype == _T.STRINGS:
        return helper.make_attribute(name, [v.encode() if isinstance(v, str) else bytes(v) for v in value],
                                     attr_type=_T.STRINGS)
    return None  # graphs, sparse tensors, type protos: not rebuilt


def _node_attributes(node: G.Node, schema) -> dict[str, AttributeProto] | None:
    """The node's attributes as protos, plus the schema's defaults for those it leaves out."""
    out: dict[str, AttributeProto] = {}
    for name, value in node.attrs.items():
        sa = schema.attributes.get(name)
        if sa is None:
            continue
        a = _attr_proto(name, value, int(sa.type))
        if a is None:
            return None
        out[name] = a
    for name, sa in schema.attributes.items():
        if name not in out and sa.default_value.type != _T.UNDEFINED:
            d = AttributeProto()
            d.CopyFrom(sa.default_value)
            d.name = name
            out[name] = d
    return out


def _input_type(a: Any) -> onnx.TypeProto:
    if isinstance(a, np.ndarray):
        try:
            elem = helper.np_dtype_to_tensor_dtype(a.dtype)
        except Exception:
            elem = onnx.TensorProto.FLOAT
        return helper.make_tensor_type_proto(elem, [None] * a.ndim)
    return helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, None)


def function_proto(node: G.Node, args: list) -> tuple[FunctionProto, dict[str, AttributeProto]] | None:
    """The node's function body with the node's attributes (None when it has none)."""
    found = _schema_function(node.op_type, node.domain, node.opset)
    if found is None or node.subgraphs:
        return None
    schema, version, cd = found
    attrs = _node_attributes(node, schema)
    if attrs is None:
        return None
    fp = FunctionProto()
    if cd:
        np_ = helper.make_node(node.op_type, list(node.inputs), list(node.outputs), domain=node.domain)
        np_.attribute.extend(attrs.values())
        types = [_input_type(a).SerializeToString() for a in args]
        fp.ParseFromString(schema.get_context_dependent_function_with_opset_version(
            version, np_.SerializeToString(), types))
    else:
        fp.ParseFromString(schema.get_function_with_opset_version(version))
    return fp, attrs


def _rename_node(n: onnx.NodeProto, rename, attrs: dict[str, AttributeProto], label: str) -> onnx.NodeProto:
    out = onnx.NodeProto()
    out.op_type, out.domain, out.name = n.op_type, n.domain, label
    out.input.extend(rename(t) for t in n.input)
    out.output.extend(rename(t) for t in n.output)
    for a in n.attribute:
        if a.ref_attr_name:
            ref = attrs.get(a.ref_attr_name)
            if ref is None:
                continue  # unset, no default: the inner op's own default applies
            b = AttributeProto()
            b.CopyFrom(ref)
            b.name = a.name
            out.attribute.append(b)
        elif a.type == _T.GRAPH or a.type == _T.GRAPHS:
            b = AttributeProto()
            b.CopyFrom(a)
            for g in ([b.g] if a.type == _T.GRAPH else list(b.graphs)):
                _rename_subgraph(g, rename, attrs, label)
            out.attribute.append(b)
        else:
            out.attribute.append(a)
    return out


def _rename_subgraph(g: onnx.GraphProto, rename, attrs, label) -> None:
    """Rename, in a control-flow body inside a function, the function's names it reads."""
    local = {v.name for v in g.input} | {t.name for t in g.initializer} | {o for n in g.node for o in n.output}

    def sub(t: str) -> str:
        return t if not t or t in local else rename(t)
    nodes = [_rename_node(n, sub, attrs, label) for n in g.node]
    del g.node[:]
    g.node.extend(nodes)
    for o in g.output:
        o.name = sub(o.name)


def build_body(node: G.Node, args: list, opsets: dict[str, int]) -> G.Graph | None:
    """The node's function body compiled as a halfsim Graph reading the node's inputs and
    writing its outputs (None when the op has no body or halfsim cannot run it)."""
    try:
        got = function_proto(node, args)
    except Exception:
        return None
    if got is None:
        return None
    fp, attrs = got
    prefix = f"{node.label}/{node.op_type}/"
    names: dict[str, str] = {}
    for i, formal in enumerate(fp.input):
        names[formal] = node.inputs[i] if i < len(node.inputs) else ""
    outputs = []
    for j, formal in enumerate(fp.output):
        actual = node.outputs[j] if j < len(node.outputs) else ""
        if actual:
            names[formal] = actual
            outputs.append(actual)

    def rename(t: str) -> str:
        if not t:
            return t
        r = names.get(t)
        if r is None:
            r = names[t] = prefix + t
        return r
    body = [_rename_node(n, rename, attrs, node.label) for n in fp.node]
    produced = {o for n in body for o in n.output if o}
    if any(o not in produced for o in outputs):
        return None
    seen = []
    for t in node.inputs:
        if t and t not in seen:
            seen.append(t)
    gp = helper.make_graph(body, prefix + "body", [helper.make_empty_tensor_value_info(t) for t in seen],
                           [helper.make_empty_tensor_value_info(t) for t in outputs])
    ops = dict(opsets)
    for o in fp.opset_import:
        ops["" if o.domain in G.DEFAULT_DOMAINS else o.domain] = int(o.version)
    try:
        return G.build_graph(gp, ops)
    except Exception:
        return None


def _key(node: G.Node, args: list) -> tuple:
    return (id(node),) + tuple((a.dtype.str, a.ndim) if isinstance(a, np.ndarray) else None for a in args)


def body_for(model: Any, node: G.Node, args: list) -> G.Graph | None:
    """The cached body graph of `node` for these input types (None: not decomposable)."""
    if not has_body(node):
        return None
    cache = getattr(model, "_decomposed", None)
    if cache is None:
        cache = {}
        try:
            model._decomposed = cache
        except Exception:
            pass
    key = _key(node, args)
    g = cache.get(key, _NO)
    if g is _NO:
        g = cache[key] = build_body(node, args, getattr(model, "opsets", {"": node.opset}))
    return g


DECOMPOSED = "decomposed"  # what a recording plan (plan_schedule) notes for a node run through its body


def run_decomposed(runner: Any, node: G.Node, args: list) -> list | None:
    """Run `node` through its function body when its precision is decomposed; returns its
    outputs, or None to let the node run its own implementation."""
    plan = runner.plan
    prec_of = getattr(plan, "node_precision", None)
    assign = getattr(plan, "set_node_precision", None)
    if prec_of is None or assign is None:
        return None
    prec = prec_of(node)
    if prec.fused or not has_body(node):  # the cheap test first: most precisions are fused
        return None
    body = body_for(runner.model, node, args)
    if body is None:
        return None
    for inner in body.nodes:
        assign(inner, prec)
    feeds = {t: a for t, a in zip(node.inputs, args) if t}
    hook, observe = runner.hook, runner.observe
    runner.hook = runner.observe = None  # the node's own outputs are hooked/observed by the caller
    try:
        outs = runner.run_subgraph(body, feeds)
    finally:
        runner.hook, runner.observe = hook, observe
    rec = getattr(plan, "_rec", None)
    if rec is not None:
        rec[id(node)] = (node, DECOMPOSED, None)
    by_name = dict(zip(body.output_names, outs))
    return [by_name.get(t) if t else None for t in node.outputs]
