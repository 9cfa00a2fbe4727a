"""Shape and tensor-creation ops against ONNX Runtime."""
import numpy as np
import pytest
from onnx import TensorProto, helper

import halfsim
from opcheck import assert_same, check_op, make_model, run_ort

rng = np.random.default_rng(0)
F = np.float32


def r(*shape, dtype=F):
    a = rng.standard_normal(shape)
    if np.dtype(dtype).kind in "iu":
        return (a * 10).astype(dtype)
    if np.dtype(dtype).kind == "b":
        return a > 0
    return a.astype(dtype)


I64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731


# --- creation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("attrs", [
    {"value": helper.make_tensor("v", TensorProto.FLOAT, [2, 3], list(range(6)))},
    {"value": helper.make_tensor("v", TensorProto.INT32, [], [7])},
    {"value": helper.make_tensor("v", TensorProto.FLOAT16, [2], np.array([1.5, -2], np.float16).view(np.uint16).tolist())},
    {"value_float": 2.5}, {"value_floats": [1.0, 2.0]}, {"value_int": 3}, {"value_ints": [1, -2, 3]},
    {"value_string": "abc"}, {"value_strings": ["a", "bc"]},
])
def test_constant(attrs):
    check_op("Constant", [], attrs, opset=13)


def test_constant_sparse():
    sp = helper.make_sparse_tensor(helper.make_tensor("v", TensorProto.FLOAT, [2], [5, 6]),
                                   helper.make_tensor("i", TensorProto.INT64, [2], [1, 4]), [2, 3])
    m = make_model("Constant", [], {"sparse_value": sp}, opset=13)
    want = run_ort(m, {})[0]  # ORT hands back a SparseTensor: densify it (COO, flat indices)
    dense = np.zeros(want.dense_shape(), np.float32).reshape(-1)
    dense[want.get_coo_data().indices().reshape(-1)] = want.values()
    got = halfsim.load(m).run({})["out0"]
    assert_same(got, dense.reshape(want.dense_shape()))


@pytest.mark.parametrize("value", [None, helper.make_tensor("v", TensorProto.INT32, [1], [4]),
                                   helper.make_tensor("v", TensorProto.FLOAT16, [1], [np.float16(2).view(np.uint16)])])
@pytest.mark.parametrize("shape", [I64(2, 3), I64(0, 3), np.zeros(0, np.int64)])
def test_constant_of_shape(value, shape):
    check_op("ConstantOfShape", [shape], {} if value is None else {"value": value}, initializers=(0,))


@pytest.mark.parametrize("k", [0, 1, -2, 5])
@pytest.mark.parametrize("dtype", [None, TensorProto.INT32, TensorProto.DOUBLE])
def test_eye_like(k, dtype):
    attrs = {"k": k} if dtype is None else {"k": k, "dtype": dtype}
    check_op("EyeLike", [r(3, 4)], attrs)


@pytest.mark.parametrize("vals", [(0, 10, 3), (10, 0, -3), (5, 5, 1), (0.0, 1.0, 0.1), (1.5, -2.0, -0.35),
                                  (0, 7, 100)])
@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.int32, np.float64])
def test_range(vals, dtype):
    if np.dtype(dtype).kind == "i" and any(float(v) != int(v) for v in vals):
        pytest.skip("fractional range")
    check_op("Range", [np.array(v, dtype) for v in vals], initializers=(0, 1, 2))
    check_op("Range", [np.array(v, dtype) for v in vals])


@pytest.mark.parametrize("axis", [-1, 0, 1])
@pytest.mark.parametrize("types", [(np.int64, np.int64, np.float32), (np.int64, np.int64, np.int64),
                                   (np.float32, np.float32, np.float32), (np.int32, np.float32, np.float32)])
def test_one_hot(axis, types):
    ti, td, tv = types  # the type combinations ORT's CPU kernel registers
    idx = np.array([[0, 2, -1], [5, 1, -4]], ti)  # 5 out of range -> all off; negatives count from the end
    check_op("OneHot", [idx, np.array(4, td), np.array([-3, 5], tv)], {"axis": axis}, opset=11)


# --- shape queries --------------------------------------------------------------------------

@pytest.mark.parametrize("x", [r(2, 3), np.array(["a", "b"], dtype=object), np.array(True), r(0, 4, dtype=np.int8)])
def test_identity_size_shape(x):
    check_op("Identity", [x])
    check_op("Size", [x])
    check_op("Shape", [x], opset=13)


@pytest.mark.parametrize("se", [(None, None), (1, None), (-1, None), (0, -1), (-10, 10), (2, 1)])
def test_shape_start_end(se):
    attrs = {k: v for k, v in zip(("start", "end"), se) if v is not None}
    check_op("Shape", [r(2, 3, 4)], attrs, opset=15)


# --- reshaping ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,x", [(I64(3, -1), r(2, 3, 4)), (I64(0, -1), r(2, 3, 4)), (I64(-1), r(2, 3)),
                                     (I64(0, 0, 2, 2), r(1, 2, 4)), (I64(0, 4), r(0, 3)), (I64(), r(1, 1))])
@pytest.mark.parametrize("opset", [13, 14])
def test_reshape(shape, x, opset):
    check_op("Reshape", [x, shape], opset=opset, initializers=(1,))


def test_reshape_allowzero():
    check_op("Reshape", [r(0, 3), I64(3, 0)], {"allowzero": 1}, opset=14, initializers=(1,))
    check_op("Reshape", [r(2, 3), I64(0, 3)], {"allowzero": 0}, opset=14, initializers=(1,))


def test_reshape_bad():
    m = make_model("Reshape", [r(2, 3), I64(4, -1)], opset=14, initializers=(1,))
    with pytest.raises(halfsim.errors.HalfsimError):
        halfsim.load(m).run({"in0": r(2, 3)})


@pytest.mark.parametrize("axis", [0, 1, 2, 3, -1, -3])
def test_flatten(axis):
    check_op("Flatten", [r(2, 3, 4)], {"axis": axis}, opset=13)


@pytest.mark.parametrize("axes", [None, [1], [-1, 1], [3]])
@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze(axes, opset):
    x = r(2, 1, 3, 1)
    if opset >= 13:
        # ORT rejects an empty-named optional axes input, so omit it entirely
        check_op("Squeeze", [x] if axes is None else [x, np.array(axes, np.int64)], opset=opset, initializers=(1,))
    else:
        check_op("Squeeze", [x], {} if axes is None else {"axes": axes}, opset=opset)


@pytest.mark.parametrize("axes", [[0], [-1], [1, 3], [3, 0], [-4, 2]])
@pytest.mark.parametrize("opset", [11, 13])
def test_unsqueeze(axes, opset):
    x = r(2, 3, dtype=np.int32)
    if opset >= 13:
        check_op("Unsqueeze", [x, np.array(axes, np.int64)], opset=opset, initializers=(1,))
    else:
        check_op("Unsqueeze", [x], {"axes": axes}, opset=opset)
    check_op("Unsqueeze", [np.array(3.0, F), np.array([0], np.int64)], opset=13, initializers=(1,))


@pytest.mark.parametrize("perm", [None, [0, 2, 1], [2, 0, 1]])
@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.bool_, np.float16])
def test_transpose(perm, dtype):
    check_op("Transpose", [r(2, 3, 4, dtype=dtype)], {} if perm is None else {"perm": perm})


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(axis):
    shapes = [(2, 3, 4), (2, 3, 4)]
    xs = []
    for i, s in enumerate(shapes):
        s = list(s)
        s[axis] = i + 1
        xs.append(r(*s))
    check_op("Concat", xs, {"axis": axis})
    check_op("Concat", [x.astype(np.int32) for x in xs] + [xs[0][..., :0].astype(np.int32)] if axis == -1
             else [x.astype(np.int32) for x in xs], {"axis": axis})


def test_concat_strings_and_empty():
    check_op("Concat", [np.array(["a"], dtype=object), np.array(["b", "c"], dtype=object)], {"axis": 0})
    check_op("Concat", [r(0, 3), r(2, 3)], {"axis": 0})


@pytest.mark.parametrize("opset", [11, 13, 18])
@pytest.mark.parametrize("axis", [0, -1])
def test_split(opset, axis):
    x = r(6, 6)
    check_op("Split", [x], {"axis": axis}, n_outputs=3, opset=opset) if opset < 18 else \
        check_op("Split", [x], {"axis": axis, "num_outputs": 3}, n_outputs=3, opset=opset)
    if opset < 13:
        check_op("Split", [x], {"axis": axis, "split": [1, 2, 3]}, n_outputs=3, opset=opset)
    else:
        check_op("Split", [x, I64(1, 0, 5)], {"axis": axis}, n_outputs=3, opset=opset, initializers=(1,))


def test_split_uneven18():
    check_op("Split", [r(7, 2)], {"axis": 0, "num_outputs": 3}, n_outputs=3, opset=18)
    check_op("Split", [r(2, 5, dtype=np.int64)], {"axis": 1, "num_outputs": 2}, n_outputs=2, opset=18)


@pytest.mark.parametrize("spec", [
    ([0], [2], None, None), ([1, -3], [1000, -1], [0, 2], None), ([-1], [-1000], [1], [-1]),
    ([10], [-10], [0], [-2]), ([0, 0], [-1, 2], [-1, -2], [2, 1]), ([4], [1], [0], [-1]),
    ([2], [2], [0], [1]), ([-100], [100], [2], [3]), ([3], [-2**63], [1], [-1]), ([0], [2**63 - 1], [1], [1]),
])
@pytest.mark.parametrize("opset", [9, 13])
def test_slice(spec, opset):
    starts, ends, axes, steps = spec
    x = r(5, 6, 7)
    if opset < 10:
        if steps is not None and any(s != 1 for s in steps):
            pytest.skip("steps need opset 10")
        attrs = {"starts": starts, "ends": [min(max(e, -2**62), 2**62) for e in ends]}
        if axes is not None:
            attrs["axes"] = axes
        check_op("Slice", [x], attrs, opset=opset)
        return
    ins = [x, np.array(starts, np.int64), np.array(ends, np.int64),
           None if axes is None and steps is None else np.array(axes if axes is not None else range(len(starts)), np.int64),
           None if steps is None else np.array(steps, np.int64)]
    check_op("Slice", ins, opset=opset, initializers=(1, 2, 3, 4))
    ins32 = [x.astype(np.int32)] + [None if a is None else np.clip(a, -2**31, 2**31 - 1).astype(np.int32) for a in ins[1:]]
    check_op("Slice", ins32, opset=opset, initializers=(1, 2, 3, 4))


@pytest.mark.parametrize("xs,shape", [((3, 1), I64(2, 1, 6)), ((1,), I64(4)), ((2, 3), I64(1, 1)),
                                      ((2, 1), I64(2, 0)), ((), I64(2, 2))])
def test_expand(xs, shape):
    check_op("Expand", [r(*xs), shape], initializers=(1,))
    check_op("Expand", [r(*xs, dtype=np.bool_), shape])


@pytest.mark.parametrize("reps", [I64(1, 1), I64(2, 3), I64(0, 2)])
def test_tile(reps):
    check_op("Tile", [r(2, 3), reps], initializers=(1,))
    check_op("Tile", [np.array([["a", "b"]], dtype=object), reps])


# --- padding --------------------------------------------------------------------------------

PADS = [[1, 2, 0, 1], [0, 0, 0, 0], [-1, 1, 1, -2], [2, 0, 2, 3]]


@pytest.mark.parametrize("pads", PADS)
@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
@pytest.mark.parametrize("opset", [9, 11, 18])
def test_pad(pads, mode, opset):
    x = r(3, 4)
    if mode == "reflect" and any(p < 0 for p in pads):
        pytest.skip("negative pads with reflect")
    if opset < 11:
        check_op("Pad", [x], {"pads": pads, "mode": mode, "value": 1.5}, opset=opset)
        return
    check_op("Pad", [x, np.array(pads, np.int64), np.array(1.5, F)], {"mode": mode}, opset=opset, initializers=(1, 2))
    check_op("Pad", [x.astype(np.int32), np.array(pads, np.int64)], {"mode": mode}, opset=opset, initializers=(1,))


@pytest.mark.parametrize("axes,pads", [([1], [2, 1]), ([-2], [0, 2]), ([0, 1], [1, 1, 2, 2])])
@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
def test_pad_axes(axes, pads, mode):
    check_op("Pad", [r(3, 4), np.array(pads, np.int64), None, np.array(axes, np.int64)], {"mode": mode},
             opset=19, initializers=(1, 3))


@pytest.mark.parametrize("shape,axes", [(I64(2, 5), None), (I64(6, 3), None), (I64(7), [1]), (I64(1, 8), [-2, -1])])
def test_center_crop_pad(shape, axes):
    check_op("CenterCropPad", [r(4, 5), shape], {} if axes is None else {"axes": axes}, opset=18, initializers=(1,))


# --- block rearrangement --------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space(mode):
    check_op("DepthToSpace", [r(2, 8, 3, 4)], {"blocksize": 2, "mode": mode}, opset=13)


def test_space_to_depth():
    check_op("SpaceToDepth", [r(2, 3, 4, 6)], {"blocksize": 2})


# --- selection ------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [None, 0, 1, -1, 10, -10])
@pytest.mark.parametrize("upper", [0, 1])
def test_trilu(k, upper):
    x = r(2, 4, 5)
    check_op("Trilu", [x, None if k is None else np.array(k, np.int64)], {"upper": upper}, opset=14)


@pytest.mark.parametrize("batch_axis,time_axis", [(1, 0), (0, 1)])
def test_reverse_sequence(batch_axis, time_axis):
    x = r(4, 4, 3)
    check_op("ReverseSequence", [x, I64(4, 1, 0, 2)], {"batch_axis": batch_axis, "time_axis": time_axis})


@pytest.mark.parametrize("axis", [None, 0, 1, -1])
def test_compress(axis):
    x = r(3, 4)
    cond = np.array([True, False, True], bool)
    check_op("Compress", [x, cond], {} if axis is None else {"axis": axis})
    check_op("Compress", [x.astype(np.int64), np.zeros(2, bool)], {} if axis is None else {"axis": axis})


@pytest.mark.parametrize("op_type,inputs,attrs", [
    ("Unsqueeze", [r(2, 3), I64(-5, 2)], {}), ("Squeeze", [r(2, 3), I64(0)], {}),
    ("Pad", [r(3, 4), I64(3, 0, 0, 0)], {"mode": "reflect"}), ("Concat", [r(2, 3), r(3, 3)], {"axis": 1}),
    ("Transpose", [r(2, 3)], {"perm": [0, 0]}), ("Tile", [r(2, 3), I64(2)], {}),
])
def test_bad_input_raises_halfsim_error(op_type, inputs, attrs):
    m = make_model(op_type, inputs, attrs, opset=18, initializers=(1,))
    with pytest.raises(halfsim.errors.HalfsimError):
        halfsim.load(m).run({"in0": inputs[0]} if op_type != "Concat" else {"in0": inputs[0]})


def test_constant_parameter_ops_on_changing_shapes():
    """Slice/Reshape/Squeeze/Unsqueeze with constant parameters keep an index per input shape in
    fp32 schedules: one model fed different shapes (and back) must match ORT every time, and a
    shape the parameters do not fit still fails with a one-line error."""
    inits = {"st": I64(1, -3), "en": I64(100, -1), "ax": I64(0, 2), "sp": I64(1, 1), "sq": I64(1),
             "un": I64(0, -1), "shp": I64(0, -1)}
    nodes = [helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["s"]),
             helper.make_node("Unsqueeze", ["s", "un"], ["u"]),
             helper.make_node("Reshape", ["u", "shp"], ["y"]),
             helper.make_node("Squeeze", ["x1", "sq"], ["z"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["a", "b", "c"]),
                                       helper.make_tensor_value_info("x1", TensorProto.FLOAT, ["a", "d"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                           helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
                          [helper.make_tensor(k, TensorProto.INT64, v.shape, v) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    hm = halfsim.load(m)
    for shp in [(3, 4, 5), (2, 1, 7), (3, 4, 5), (5, 2, 4)]:
        feeds = {"x": r(*shp), "x1": r(shp[0], 1)}
        got = hm.run(feeds)
        for name, want in zip(["y", "z"], run_ort(m, feeds)):
            assert_same(got[name], want, 0, 0, what=f"{name} at {shp}")
    with pytest.raises(halfsim.HalfsimError, match="Squeeze"):
        hm.run({"x": r(3, 4, 5), "x1": r(3, 2)})


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
def test_pad_constant_pads_on_changing_shapes(mode):
    """A Pad with constant pads keeps its plan (checks, gather indices) per input shape and
    dtype in fp32 schedules: ORT's values and the node-by-node path's, shape after shape;
    a shape too small to reflect still fails with the op's one-line error."""
    inits = {"pads": I64(1, -1, 2, 0, 2, 1), "cv": np.array(2.5, F)}
    g = helper.make_graph([helper.make_node("Pad", ["x", "pads", "cv"], ["y"], mode=mode)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["a", "b", "c"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [helper.make_tensor(k, TensorProto.FLOAT if v.dtype == F else TensorProto.INT64, v.shape,
                                              v.reshape(-1)) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    hm = halfsim.load(m)
    for shp in [(3, 4, 5), (2, 5, 7), (3, 4, 5), (4, 6, 3)]:
        feeds = {"x": r(*shp)}
        got = hm.run(feeds)["y"]
        assert_same(got, run_ort(m, feeds)[0], 0, 0, what=f"{mode} at {shp}")
        np.testing.assert_array_equal(got, hm.run(feeds, observe="all")["y"])
    if mode == "reflect":
        with pytest.raises(halfsim.HalfsimError, match="reflect pads"):
            hm.run({"x": r(3, 4, 2)})


def test_transpose_and_concat_keep_their_checks_per_rank():
    """fp32 schedules check Transpose's perm and normalize Concat's axis once per rank: a
    later input of another rank is checked again (ORT's values, the node-by-node errors)."""
    g = helper.make_graph([helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0]),
                           helper.make_node("Concat", ["t", "t"], ["y"], axis=-1)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    hm = halfsim.load(m)
    for shp in [(2, 3), (4, 1), (2, 3)]:
        feeds = {"x": r(*shp)}
        assert_same(hm.run(feeds)["y"], run_ort(m, feeds)[0], 0, 0)
    for feeds in ({"x": r(2, 3, 4)}, {"x": r(2, 3)}):
        fast = general = None
        try:
            fast = hm.run(feeds)["y"]
        except halfsim.HalfsimError as e:
            fast = str(e)
        try:
            general = hm.run(feeds, observe="all")["y"]
        except halfsim.HalfsimError as e:
            general = str(e)
        if isinstance(fast, str):
            assert fast == general and "perm" in fast
        else:
            np.testing.assert_array_equal(fast, general)
