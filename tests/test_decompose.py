"""fused=False: ops with an ONNX function body run through it, every step rounded."""
import numpy as np
import onnx
import onnx.defs
import onnx.inliner
import pytest
from onnx import FunctionProto, TensorProto as TP, helper, numpy_helper

import halfsim
from halfsim.backends import ort as ortb
from halfsim.decompose import body_for, has_body
from halfsim.policy import Policy

D = 16


def _model(op, attrs, opset, shape=(4, D), inits=(), outputs=("y",), domain="", functions=()):
    x = helper.make_tensor_value_info("x", TP.FLOAT, list(shape))
    ys = [helper.make_tensor_value_info(o, TP.FLOAT, None) for o in outputs]
    names = [f"w{i}" for i in range(len(inits))]
    node = helper.make_node(op, ["x"] + names, list(outputs), name="n", domain=domain, **attrs)
    g = helper.make_graph([node], "g", [x], ys, [numpy_helper.from_array(a, n) for a, n in zip(inits, names)])
    ops = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    m = helper.make_model(g, opset_imports=ops, functions=list(functions))
    m.ir_version = 8
    return m


def _ln_inits():
    rng = np.random.default_rng(1)
    return (rng.uniform(0.5, 2, D).astype(np.float32), rng.uniform(-1, 1, D).astype(np.float32))


def _x(scale=1.0, offset=0.0, shape=(4, D), seed=0):
    x = np.random.default_rng(seed).standard_normal(shape) * scale + offset
    return x.astype(np.float16).astype(np.float32)  # fp16 values: graph inputs need no rounding


DECOMPOSED = Policy("dec32").add({"fused": False})
DEC16 = Policy("dec16").add({"storage": "fp16", "accumulate": "fp32", "fused": False})
FUSED16 = Policy("fused16").add({"storage": "fp16", "accumulate": "fp32", "fused": True})

CASES = {
    "LayerNormalization": ({"epsilon": 1e-5, "axis": -1}, 17, _ln_inits()),
    "Softmax": ({"axis": -1}, 13, ()),
    "Softmax18": ({"axis": 0}, 18, ()),
    "LogSoftmax": ({}, 18, ()),
    "MeanVarianceNormalization": ({"axes": [1]}, 18, ()),
}


def _op(key):
    return key.rstrip("0123456789")


@pytest.mark.parametrize("key", ["LayerNormalization", "Softmax", "Softmax18", "LogSoftmax"])
def test_decomposed_fp32_matches_fused_op(key):
    attrs, opset, inits = CASES[key]
    proto = _model(_op(key), attrs, opset, inits=inits)
    m = halfsim.load(proto)
    x = _x()
    assert body_for(m, m.nodes[0], [x, *inits]) is not None
    got = m.run({"x": x}, precision=DECOMPOSED)["y"]
    ref = ortb.run(proto, {"x": x})["y"]
    np.testing.assert_allclose(got, ref, rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(got, m.run({"x": x})["y"], rtol=2e-6, atol=2e-6)


def test_layernorm_statistics_outputs_decomposed():
    attrs, opset, inits = CASES["LayerNormalization"]
    proto = _model("LayerNormalization", attrs, opset, inits=inits, outputs=("y", "mean", "istd"))
    m = halfsim.load(proto)
    x = _x(seed=3)
    got = m.run({"x": x}, precision=DECOMPOSED)
    ref = ortb.run(proto, {"x": x})
    for k in ("y", "mean", "istd"):
        np.testing.assert_allclose(got[k], ref[k].reshape(got[k].shape), rtol=2e-5, atol=2e-6)


def _schema_function(op, opset, node, input_types):
    """The schema's function body for `node`, straight from onnx (what an inliner expands)."""
    s = onnx.defs.get_schema(op, opset, "")
    fp = FunctionProto()
    if s.has_context_dependent_function:
        v = max(x for x in s.context_dependent_function_opset_versions if x <= opset)
        for name, a in s.attributes.items():
            if name not in [b.name for b in node.attribute] and a.default_value.type:
                node.attribute.append(a.default_value)
        fp.ParseFromString(s.get_context_dependent_function_with_opset_version(
            v, node.SerializeToString(), [t.SerializeToString() for t in input_types]))
    else:
        v = max(x for x in s.function_opset_versions if x <= opset)
        fp.ParseFromString(s.get_function_with_opset_version(v))
    return fp


def _inlined(op, attrs, opset, inits):
    """The model with the op expanded into its body's primitive ops by onnx's own inliner: the
    schema function is declared as a model-local function that the node calls."""
    names = ["x"] + [f"w{i}" for i in range(len(inits))]
    node = helper.make_node(op, names, ["y"], **attrs)
    types = [helper.make_tensor_type_proto(TP.FLOAT, [None, None])] + \
            [helper.make_tensor_type_proto(TP.FLOAT, [None]) for _ in inits]
    fp = _schema_function(op, opset, node, types)
    fp.domain, fp.name = "local", op
    fopset = max(o.version for o in fp.opset_import if o.domain in ("", "ai.onnx"))
    proto = _model(op, attrs, max(opset, fopset), inits=inits, domain="local", functions=[fp])
    inl = onnx.inliner.inline_local_functions(proto)
    assert {n.op_type for n in inl.graph.node}.isdisjoint({op}) and len(inl.graph.node) > 2
    return inl


def _ulps16(a, b):
    b16 = np.abs(b).astype(np.float16)
    ulp = np.spacing(b16).astype(np.float32)
    return np.max(np.abs(a - b) / ulp)


@pytest.mark.parametrize("key", ["LayerNormalization", "Softmax", "Softmax18", "LogSoftmax",
                                 "MeanVarianceNormalization"])
def test_decomposed_fp16_matches_ort_inlined_cast_rewrite(key):
    attrs, opset, inits = CASES[key]
    op = _op(key)
    proto = _model(op, attrs, opset, inits=inits)
    x = _x(scale=4.0, offset=3.0, seed=5)
    rewritten = ortb.cast_rewrite(_inlined(op, attrs, opset, inits), "fp16")
    ref = ortb.run(rewritten, {"x": x}, optimize=False)["y"]
    got = halfsim.load(proto).run({"x": x}, precision=DEC16)["y"]
    assert np.array_equal(got, got.astype(np.float16).astype(np.float32))
    assert _ulps16(got, ref) <= 1, (got, ref)


def test_fused_and_decomposed_layernorm_differ_in_fp16():
    attrs, opset, inits = CASES["LayerNormalization"]
    proto = _model("LayerNormalization", attrs, opset, inits=inits)
    m = halfsim.load(proto)
    x = _x(scale=1.0, offset=100.0, seed=7)
    ref = m.run({"x": x})["y"]
    fused = m.run({"x": x}, precision=FUSED16)["y"]
    dec = m.run({"x": x}, precision=DEC16)["y"]
    err_fused = np.abs(fused - ref).max()
    err_dec = np.abs(dec - ref).max()
    # E[x^2] - E[x]^2 of values near 100 in fp16 storage: the variance is mostly rounding noise.
    assert err_fused < 0.05
    assert err_dec > 10 * err_fused and err_dec > 0.2


def test_op_without_body_runs_decomposed():
    x = _x(seed=9).reshape(1, 4, D)
    inits = (np.ones(4, np.float32), np.zeros(4, np.float32))
    proto = _model("InstanceNormalization", {"epsilon": 1e-5}, 17, shape=(1, 4, D), inits=inits)
    m = halfsim.load(proto)
    assert not has_body(m.nodes[0])
    assert body_for(m, m.nodes[0], [x, *inits]) is None
    got = m.run({"x": x}, precision=DEC16)["y"]
    ref = m.run({"x": x})["y"]
    assert np.isfinite(got).all() and np.abs(got - ref).max() < 0.05

    proto = _model("Exp", {}, 17)
    m = halfsim.load(proto)
    got = m.run({"x": _x()}, precision=DEC16)["y"]
    np.testing.assert_allclose(got, np.exp(_x()), rtol=1e-3)


def test_decomposed_node_keeps_its_identity():
    """Observers, hooks and events see the model's node and tensors, not the body's."""
    attrs, opset, inits = CASES["LayerNormalization"]
    m = halfsim.load(_model("LayerNormalization", attrs, opset, inits=inits))
    seen = []

    def hook(node, outs):
        seen.append(node.label)
        return [o * 2 for o in outs]
    x = _x(scale=1.0, offset=100.0, seed=7)
    base = m.run({"x": x}, precision=DEC16)["y"]
    r = m.run({"x": x}, precision=DEC16, observe="all", hook=hook)
    assert seen == ["n"]
    np.testing.assert_array_equal(r["y"], base * 2)
    assert set(r.observed) <= {"x", "w0", "w1", "y"}
    big = _x(scale=1.0, offset=60000.0, seed=2)
    ev = m.run({"x": big}, precision=DEC16).events
    assert ev and all(e.node == "n" for e in ev)  # x*x overflows fp16 inside the body


def test_policy_rule_switches_per_node():
    attrs, opset, inits = CASES["LayerNormalization"]
    m = halfsim.load(_model("LayerNormalization", attrs, opset, inits=inits))
    x = _x(scale=1.0, offset=100.0, seed=7)
    p = halfsim.policy.preset("fp16")
    p.add({"fused": False}, op_type=["LayerNormalization"])
    np.testing.assert_array_equal(m.run({"x": x}, precision=p)["y"], m.run({"x": x}, precision=DEC16)["y"])
    assert not np.array_equal(m.run({"x": x}, precision="fp16")["y"], m.run({"x": x}, precision=p)["y"])
