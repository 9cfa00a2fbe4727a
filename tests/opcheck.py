"""Single-node models checked against ONNX Runtime: the oracle for op-level tests."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import halfsim


def _tt(a: np.ndarray) -> int:
    return helper.np_dtype_to_tensor_dtype(a.dtype)


def make_model(op_type, inputs, attrs=None, *, n_outputs=1, opset=17, domain="", initializers=(),
               input_names=None) -> onnx.ModelProto:
    """One-node model. `inputs`: list of arrays (None for an omitted optional input);
    names listed in `initializers` (by position) become initializers instead of graph inputs."""
    names = input_names or [f"in{i}" for i in range(len(inputs))]
    g_inputs, inits, node_inputs = [], [], []
    for i, (nm, a) in enumerate(zip(names, inputs)):
        if a is None:
            node_inputs.append("")
            continue
        node_inputs.append(nm)
        if i in initializers:
            inits.append(numpy_helper.from_array(np.asarray(a), nm))
        else:
            g_inputs.append(helper.make_tensor_value_info(nm, _tt(np.asarray(a)), list(np.asarray(a).shape)))
    outs = [f"out{i}" for i in range(n_outputs)]
    node = helper.make_node(op_type, node_inputs, outs, domain=domain, **(attrs or {}))
    g_outputs = [onnx.ValueInfoProto(name=o) for o in outs]  # untyped: ORT infers, halfsim never trusts it
    graph = helper.make_graph([node], "opcheck", g_inputs, g_outputs, inits)
    opsets = [helper.make_opsetid("", opset)]
    if domain:
        opsets.append(helper.make_opsetid(domain, 1))
    m = helper.make_model(graph, opset_imports=opsets)
    m.ir_version = min(m.ir_version, 10)
    return m


def graph_model(nodes, inputs, outputs, inits: dict, opset: int = 17) -> onnx.ModelProto:
    """A checked single-graph model from nodes, value infos and {name: array} initializers."""
    g = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def feeds_of(model: onnx.ModelProto, inputs, input_names=None) -> dict:
    names = input_names or [f"in{i}" for i in range(len(inputs))]
    gi = {v.name for v in model.graph.input}
    return {n: np.asarray(a) for n, a in zip(names, inputs) if a is not None and n in gi}


def run_ort(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


def assert_same(got, want, rtol=1e-5, atol=1e-6, what=""):
    got = np.asarray(got)
    want = np.asarray(want)
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != ORT {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {got.shape} != ORT {want.shape}"
    if want.dtype.kind in "fc":
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol,
                                   equal_nan=True, err_msg=what)
    else:
        np.testing.assert_array_equal(got, want, err_msg=what)


def check_op(op_type, inputs, attrs=None, *, n_outputs=1, opset=17, domain="", initializers=(),
             rtol=1e-5, atol=1e-6, input_names=None):
    """Run one node in ORT and halfsim; assert same dtypes, shapes and values. Returns outputs."""
    m = make_model(op_type, inputs, attrs, n_outputs=n_outputs, opset=opset, domain=domain,
                   initializers=initializers, input_names=input_names)
    feeds = feeds_of(m, inputs, input_names)
    want = run_ort(m, feeds)
    got = halfsim.load(m).run(feeds)
    for i, w in enumerate(want):
        assert_same(got[f"out{i}"], w, rtol, atol, what=f"{op_type} output {i}")
    return [got[f"out{i}"] for i in range(n_outputs)]


def check_op_or_skip(*args, **kw):
    """check_op, skipping the dtype/op pairs ORT's CPU EP has no kernel for (no oracle)."""
    import pytest
    from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as OrtNotImplemented
    try:
        return check_op(*args, **kw)
    except OrtNotImplemented as e:
        pytest.skip(f"ORT has no kernel: {str(e)[:80]}")
