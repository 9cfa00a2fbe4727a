"""Mixed-precision export: the written model loads and runs in ONNX Runtime, halfsim runs it
with true fp16 semantics, and it has exactly the requested placement."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import halfsim
from halfsim.backends import ort
from halfsim.errors import HalfsimError
from halfsim.export import convert_fp16, export_placement
from halfsim.metrics import rel_l2
from halfsim.policy import preset

from opcheck import graph_model


def _vi(name, shape, t=T.FLOAT):
    return h.make_tensor_value_info(name, t, shape)


def mixed_model():
    """Many things a converter must get right: a shape path (Shape/Gather/Concat/Reshape),
    Resize with roi/scales, a Constant used by two consumers, ConstantOfShape, Cast to float,
    LayerNormalization (its Mean/InvStdDev outputs stay float), Split with two float outputs,
    a big weight (1e5, must saturate), an If whose branch reads an outer tensor, and a graph
    output that is also consumed inside the graph."""
    r = np.random.default_rng(0)
    w = (r.standard_normal((8, 8)) * 0.3).astype(np.float32)
    big = np.full((8,), 10.0, np.float32)
    big[0] = 1e5
    then_g = h.make_graph([h.make_node("Mul", ["ln", "half"], ["t_out"], name="then_mul")], "then", [],
                          [_vi("t_out", [4, 8])], [nh.from_array(np.array(0.5, np.float32), "half")])
    else_g = h.make_graph([h.make_node("Neg", ["ln"], ["e_out"], name="else_neg")], "else", [], [_vi("e_out", [4, 8])])
    nodes = [
        h.make_node("MatMul", ["x", "w"], ["mm"], name="mm"),
        h.make_node("Constant", [], ["c3"], name="c3", value=nh.from_array(np.array(3.0, np.float32), "c3")),
        h.make_node("Add", ["mm", "c3"], ["a1"], name="add_c3"),
        h.make_node("Mul", ["a1", "c3"], ["a2"], name="mul_c3"),
        h.make_node("LayerNormalization", ["a2", "gamma", "beta"], ["ln", "ln_mean", "ln_inv"], name="ln", axis=-1),
        h.make_node("Split", ["ln", "split"], ["s1", "s2"], name="split", axis=1),
        h.make_node("Concat", ["s2", "s1"], ["cat"], name="cat", axis=1),
        h.make_node("Shape", ["cat"], ["shp"], name="shape"),
        h.make_node("Gather", ["shp", "zero_i"], ["d0"], name="gather_d0", axis=0),
        h.make_node("Concat", ["d0", "m1_i"], ["newshape"], name="cat_shape", axis=0),
        h.make_node("Reshape", ["cat", "newshape"], ["rs"], name="reshape"),
        h.make_node("Unsqueeze", ["rs", "ax01"], ["rs4"], name="unsq"),
        h.make_node("Resize", ["rs4", "roi", "scales"], ["up"], name="resize", mode="linear"),
        h.make_node("ReduceMax", ["up"], ["upm"], name="upmax", axes=[2, 3], keepdims=0),
        h.make_node("Min", ["upm", "bigw"], ["scaled"], name="min_big"),
        h.make_node("ReduceSum", ["ln_mean"], ["lnm_sum"], name="lnm_sum", keepdims=1),
        h.make_node("Greater", ["lnm_sum", "zero_f"], ["cond_t"], name="gt"),
        h.make_node("Squeeze", ["cond_t"], ["cond"], name="sq_cond"),
        h.make_node("If", ["cond"], ["br"], name="branch", then_branch=then_g, else_branch=else_g),
        h.make_node("ConstantOfShape", ["shp"], ["ones"], name="cos",
                    value=nh.from_array(np.array([1.0], np.float32), "v")),
        h.make_node("Add", ["br", "ones"], ["y2"], name="add_ones"),
        h.make_node("Cast", ["d0"], ["d0f"], name="cast_f", to=T.FLOAT),
        h.make_node("Add", ["scaled", "d0f"], ["y1"], name="add_d0"),
        h.make_node("Relu", ["y1"], ["y3"], name="relu_out"),
    ]
    inits = {"w": w, "gamma": np.ones(8, np.float32), "beta": np.zeros(8, np.float32),
             "split": np.array([3, 5], np.int64), "zero_i": np.array([0], np.int64), "m1_i": np.array([-1], np.int64),
             "ax01": np.array([1, 2], np.int64), "roi": np.zeros(0, np.float32),
             "scales": np.array([1, 1, 2, 2], np.float32), "bigw": big, "zero_f": np.array(0.0, np.float32)}
    m = graph_model(nodes, [_vi("x", [4, 8])], [_vi("y1", [4, 8]), _vi("y2", [4, 8]), _vi("y3", [4, 8]),
                                           _vi("ln_inv", [4, 1])], inits)
    feeds = {"x": np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)}
    return m, feeds


def _types(m):
    return {t.name: t.data_type for t in m.graph.initializer}


def test_full_conversion_loads_in_ort_and_halfsim():
    m, feeds = mixed_model()
    ref = ort.run(m, feeds)
    rep = {}
    p = convert_fp16(m, report=rep)
    onnx.checker.check_model(p)
    got_ort = ort.run(p, feeds)
    got_hs = halfsim.load(p).run(feeds)
    for k in ref:
        assert got_ort[k].dtype == ref[k].dtype == np.float32  # keep_io_types
        assert got_hs[k].dtype == np.float32
        assert rel_l2(got_ort[k], ref[k]) < 2e-3, k
        assert rel_l2(got_hs[k], ref[k]) < 2e-3, k
    ty = _types(p)
    assert ty["w"] == T.FLOAT16 and ty["gamma"] == T.FLOAT16
    assert ty["scales"] == T.FLOAT and ty["roi"] == T.FLOAT  # Resize's scales and roi stay float
    assert ty["split"] == T.INT64
    big = nh.to_array(next(i for i in p.graph.initializer if i.name == "bigw"))
    assert big.dtype == np.float16 and big[0] == np.float16(65504)  # saturated, not inf
    assert "branch" in rep["forced_fp32"]  # the If stays fp32 with its bodies
    assert not p.graph.value_info
    # The Constant used by two fp16 nodes became an fp16 Constant.
    c3 = next(n for n in p.graph.node if n.op_type == "Constant" and n.output[0] == "c3")
    assert c3.attribute[0].t.data_type == T.FLOAT16


def test_keep_set_duplicates_shared_weight_and_matches_placement():
    m, feeds = mixed_model()
    keep = ["mul_c3", "ln"]
    p = convert_fp16(m, keep_fp32=keep)
    # c3 feeds add_c3 (fp16) and mul_c3 (fp32): stored once per type.
    consts = {n.output[0]: n.attribute[0].t.data_type for n in p.graph.node if n.op_type == "Constant"}
    assert consts["c3"] == T.FLOAT and T.FLOAT16 in [v for k, v in consts.items() if k.startswith("c3__fp16")]
    # The kept nodes read and write fp32; a Cast sits at every border.
    ln = next(n for n in p.graph.node if n.name == "ln")
    prod = {o: n for n in p.graph.node for o in n.output}
    assert prod[ln.input[0]].name == "mul_c3"
    mul = next(n for n in p.graph.node if n.name == "mul_c3")
    assert prod[mul.input[0]].op_type == "Cast"
    ort.run(p, feeds)  # loads and runs
    hm = halfsim.load(m)
    got = halfsim.load(p).run(feeds)
    want = hm.run(feeds, precision=preset("fp16").keep_fp32(keep))
    # The If keeps its branch fp32 in the export; every other output is bit-identical to
    # halfsim's prediction of this placement.
    for k in ("y1", "y3", "ln_inv"):
        np.testing.assert_array_equal(got[k], want[k])


def test_keep_io_types_false_declares_fp16_io():
    m, feeds = mixed_model()
    p = convert_fp16(m, keep_io_types=False)
    assert p.graph.input[0].type.tensor_type.elem_type == T.FLOAT16
    assert all(o.type.tensor_type.elem_type == T.FLOAT16 for o in p.graph.output)
    out = ort.run(p, {"x": feeds["x"].astype(np.float16)})
    assert all(v.dtype == np.float16 for v in out.values())


def test_opset_13_model_and_unknown_node_name():
    r = np.random.default_rng(0)
    nodes = [h.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             h.make_node("BatchNormalization", ["c", "s", "b", "mu", "var"], ["bn"], name="bn"),
             h.make_node("Clip", ["bn", "lo", "hi"], ["y"], name="clip")]
    m = graph_model(nodes, [_vi("x", [1, 2, 5, 5])], [_vi("y", [1, 3, 5, 5])],
               {"w": r.standard_normal((3, 2, 3, 3)).astype(np.float32), "s": np.ones(3, np.float32),
                "b": np.zeros(3, np.float32), "mu": np.zeros(3, np.float32), "var": np.array([1, 2e5, 3], np.float32),
                "lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)}, opset=13)
    feeds = {"x": r.standard_normal((1, 2, 5, 5)).astype(np.float32)}
    p = convert_fp16(m, keep_fp32=["bn"])
    assert _types(p)["var"] == T.FLOAT and _types(p)["w"] == T.FLOAT16 and _types(p)["hi"] == T.FLOAT16
    assert rel_l2(ort.run(p, feeds)["y"], ort.run(m, feeds)["y"]) < 1e-2
    with pytest.raises(HalfsimError, match="no node 'nope'"):
        convert_fp16(m, keep_fp32=["nope"])
    with pytest.raises(HalfsimError, match="fp16 ONNX form"):
        export_placement(halfsim.load(m), [], precision="bf16")


def test_export_refuses_fp16_model():
    m, feeds = mixed_model()
    p = convert_fp16(m, keep_io_types=False)
    with pytest.raises(HalfsimError, match="already holds fp16"):
        convert_fp16(p)
