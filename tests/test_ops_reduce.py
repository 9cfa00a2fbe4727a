"""Reductions, ArgMax/ArgMin, CumSum and the softmax family against ONNX Runtime."""
import numpy as np
import pytest

import halfsim
from halfsim.errors import HalfsimError
from opcheck import check_op_or_skip as check_op, make_model

rng = np.random.default_rng(1)



def randn(*shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


REDUCE = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"]


def input_since(op_type):
    return 13 if op_type == "ReduceSum" else 18


def reduce_check(op_type, x, axes, keepdims=1, noop=None, opset=None, rtol=1e-5, atol=1e-6):
    """Check at an attribute-form opset and at an input-form opset."""
    if op_type in ("ReduceLogSum", "ReduceProd"):
        x = np.abs(x) + x.dtype.type(0.5) if x.dtype.kind == "f" else x
    opsets = [opset] if opset else [11, input_since(op_type), 20 if op_type in ("ReduceMax", "ReduceMin") else 18]
    for o in opsets:
        if o < input_since(op_type):
            attrs = {"keepdims": keepdims}
            if axes is not None:
                attrs["axes"] = list(axes)
            check_op(op_type, [x], attrs, opset=o, rtol=rtol, atol=atol)
        else:
            attrs = {"keepdims": keepdims}
            if noop is not None:
                attrs["noop_with_empty_axes"] = noop
            ins = [x] if axes is None else [x, np.array(axes, np.int64)]
            check_op(op_type, ins, attrs, opset=o, rtol=rtol, atol=atol)
            if axes is not None:
                check_op(op_type, ins, attrs, opset=o, rtol=rtol, atol=atol, initializers=(1,))


@pytest.mark.parametrize("op_type", REDUCE)
@pytest.mark.parametrize("axes", [None, [0], [-1], [1, 2], [0, 2], [-3, -2, -1]])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_float(op_type, axes, keepdims):
    reduce_check(op_type, randn(3, 4, 5), axes, keepdims)


@pytest.mark.parametrize("op_type", REDUCE)
@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32, np.int64])
def test_reduce_dtypes(op_type, dtype):
    if np.dtype(dtype).kind == "f":
        x = randn(3, 4, 5).astype(dtype)
    else:
        x = rng.integers(-5, 6, (3, 4, 5)).astype(dtype)
        if op_type in ("ReduceLogSum", "ReduceL2", "ReduceLogSumExp"):
            x = np.abs(x) + 1
    tol = 2e-3 if dtype == np.float16 else 1e-6
    reduce_check(op_type, x, [1], 1, rtol=tol, atol=tol)
    reduce_check(op_type, x, [0, 2], 0, rtol=tol, atol=tol)


def test_reduce_mean_int_truncates():
    x = np.array([[1, 2, -7], [-4, -5, 2]], np.int32)
    check_op("ReduceMean", [x, np.array([0], np.int64)], opset=18)
    check_op("ReduceMean", [x], {"axes": [1], "keepdims": 0}, opset=13)


@pytest.mark.parametrize("op_type", REDUCE)
@pytest.mark.parametrize("noop", [0, 1])
def test_reduce_empty_axes(op_type, noop):
    x = randn(2, 3)
    if op_type in ("ReduceLogSum", "ReduceProd"):
        x = np.abs(x) + 0.5
    check_op(op_type, [x, np.zeros(0, np.int64)], {"noop_with_empty_axes": noop}, opset=18)
    check_op(op_type, [x], {"noop_with_empty_axes": noop, "keepdims": 0}, opset=18)


@pytest.mark.parametrize("op_type", REDUCE)
@pytest.mark.parametrize("dtype", [np.float32, np.int32])
def test_reduce_empty_tensor(op_type, dtype):
    x = np.zeros((0, 3), dtype)
    check_op(op_type, [x, np.array([0], np.int64)], opset=18)
    check_op(op_type, [x, np.array([1], np.int64)], {"keepdims": 0}, opset=18)


@pytest.mark.parametrize("op_type", ["ReduceMax", "ReduceMin", "ReduceSum", "ReduceLogSumExp", "ReduceMean"])
def test_reduce_nan_inf(op_type):
    n, i = np.nan, np.inf
    x = np.array([[n, 1, 3], [1, n, 3], [3, 1, n], [i, 1, -i], [-i, -i, -i], [i, i, 1]], np.float32)
    check_op(op_type, [x, np.array([1], np.int64)], opset=18)
    check_op(op_type, [x.T.copy(), np.array([0], np.int64)], opset=18)


def test_reduce_max_bool_opset20():
    x = rng.random((3, 4)) > 0.5
    check_op("ReduceMax", [x, np.array([1], np.int64)], opset=20)
    check_op("ReduceMin", [x, np.array([0], np.int64)], opset=20)


def test_reduce_logsumexp_large():
    x = np.array([[1000, 1000, -1000], [-1e30, 0, 88.0]], np.float32)
    check_op("ReduceLogSumExp", [x], {"axes": [1]}, opset=13)


def test_reduce_bad_axis():
    x = randn(2, 3)
    m = make_model("ReduceSum", [x, np.array([2], np.int64)], opset=13, initializers=(1,))
    with pytest.raises(HalfsimError, match="axis"):
        halfsim.load(m).run({"in0": x})


# -- ArgMax / ArgMin ---------------------------------------------------------------------------
@pytest.mark.parametrize("op_type", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("axis", [0, 1, -1, -3])
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("last", [0, 1])
def test_argmax(op_type, axis, keepdims, last):
    x = rng.integers(0, 3, (3, 4, 5)).astype(np.float32)  # many ties
    check_op(op_type, [x], {"axis": axis, "keepdims": keepdims, "select_last_index": last}, opset=13)


@pytest.mark.parametrize("op_type", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float64, np.float16, np.uint8])
def test_argmax_dtypes(op_type, dtype):
    x = rng.integers(0, 5, (4, 6)).astype(dtype)
    check_op(op_type, [x], {"axis": 1}, opset=13)
    check_op(op_type, [x], {"axis": 0, "keepdims": 0}, opset=11)


@pytest.mark.parametrize("op_type", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("last", [0, 1])
def test_argmax_nan(op_type, last):
    n = np.nan
    x = np.array([[n, 1, 3], [1, n, 3], [3, n, 1], [1, 3, n], [2, 2, n], [-np.inf, n, 5]], np.float32)
    check_op(op_type, [x], {"axis": 1, "select_last_index": last}, opset=13)


def test_argmax_empty_other_axis():
    check_op("ArgMax", [np.zeros((0, 3), np.float32)], {"axis": 1}, opset=13)


# -- CumSum ------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64])
def test_cumsum(axis, exclusive, reverse, dtype):
    x = (randn(3, 4, 5) * 10).astype(dtype)
    check_op("CumSum", [x, np.array(axis, np.int32)], {"exclusive": exclusive, "reverse": reverse}, opset=14)
    check_op("CumSum", [x, np.array([axis], np.int64)], {"exclusive": exclusive, "reverse": reverse}, opset=11,
             initializers=(1,))


def test_cumsum_float16_and_empty():
    check_op("CumSum", [randn(50).astype(np.float16), np.array(0, np.int64)], opset=14, rtol=2e-3, atol=2e-3)
    check_op("CumSum", [np.zeros((0, 3), np.float32), np.array(1, np.int64)], opset=14)


# -- Softmax family ----------------------------------------------------------------------------
SOFT = ["Softmax", "LogSoftmax", "Hardmax"]


@pytest.mark.parametrize("op_type", SOFT)
@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("axis", [None, 0, 1, 2, -1, -2])
def test_softmax_axis_semantics(op_type, opset, axis):
    x = randn(2, 3, 4) * 3
    if op_type == "Hardmax":
        x = np.round(x)  # ties: the first index wins
    check_op(op_type, [x], {} if axis is None else {"axis": axis}, opset=opset)


@pytest.mark.parametrize("op_type", SOFT)
@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_softmax_dtypes(op_type, dtype):
    x = (randn(3, 7) * 3).astype(dtype)
    tol = 2e-3 if dtype == np.float16 else 1e-6
    check_op(op_type, [x], {}, opset=13, rtol=tol, atol=tol)
    check_op(op_type, [x], {"axis": 0}, opset=11, rtol=tol, atol=tol)


@pytest.mark.parametrize("op_type", ["Softmax", "LogSoftmax"])
def test_softmax_specials(op_type):
    x = np.array([[1000, 1000, -1000], [-np.inf, 0, 1], [-np.inf, -np.inf, -np.inf], [np.nan, 0, 1],
                  [np.inf, 0, 1], [-1e30, 1e30, 0]], np.float32)
    check_op(op_type, [x], {}, opset=13)


@pytest.mark.parametrize("op_type", SOFT)
def test_softmax_empty(op_type):
    check_op(op_type, [np.zeros((0, 4), np.float32)], {}, opset=13)
    check_op(op_type, [np.zeros((2, 0), np.float32)], {}, opset=13)


def test_cumsum_large_non_last_axis():
    x = randn(4, 300, 50)
    for axis in (0, 1):
        check_op("CumSum", [x, np.array(axis, np.int64)], {"reverse": 1}, opset=14, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op_type,opset,const_axes", [("ReduceMean", 13, True), ("ReduceMean", 18, True),
                                                      ("ReduceSum", 13, True), ("ReduceSum", 11, True),
                                                      ("ReduceMean", 18, False)])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_sum_mean_fp32_schedule_matches_the_general_path_on_changing_shapes(op_type, opset, const_axes, keepdims):
    """fp32 schedules run a float32 ReduceSum/ReduceMean with constant axes as np.add.reduce
    and a division (axes kept per shape): bit-equal to the node-by-node op and ORT's values,
    shape after shape; other dtypes go through the op."""
    from onnx import TensorProto, helper, numpy_helper
    from opcheck import assert_same, run_ort
    axes = np.array([-1, 0], np.int64)
    attr_form = opset < input_since(op_type)
    for dt, et in [(np.float32, TensorProto.FLOAT), (np.float16, TensorProto.FLOAT16), (np.int32, TensorProto.INT32)]:
        ins, inits, graph_ins = ["x"], [], [helper.make_tensor_value_info("x", et, ["a", "b", "c"])]
        if not attr_form:
            ins.append("axes")
            if const_axes:
                inits.append(numpy_helper.from_array(axes, "axes"))
            else:
                graph_ins.append(helper.make_tensor_value_info("axes", TensorProto.INT64, [2]))
        node = helper.make_node(op_type, ins, ["y"], keepdims=keepdims, **({"axes": axes.tolist()} if attr_form else {}))
        g = helper.make_graph([node], "r", graph_ins, [helper.make_tensor_value_info("y", et, None)], inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
        hm = halfsim.load(m)
        for shape in [(2, 3, 4), (1, 1, 5), (2, 3, 4), (4, 1, 3)]:
            x = randn(*shape, dtype=dt) if dt != np.int32 else rng.integers(-9, 9, shape).astype(dt)
            feeds = {"x": x} if attr_form or const_axes else {"x": x, "axes": axes}
            got = hm.run(feeds)["y"]
            np.testing.assert_array_equal(got, hm.run(feeds, observe="all")["y"])
            assert_same(got, run_ort(m, feeds)[0], 2e-3 if dt == np.float16 else 1e-6, 1e-6, what=f"{shape} {dt}")
