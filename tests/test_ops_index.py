"""Indexing ops (gathers, scatters, NonZero, Unique, TopK) against ONNX Runtime."""
import numpy as np
import pytest

import halfsim
from opcheck import check_op, make_model, run_ort

rng = np.random.default_rng(1)
F = np.float32
I64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731


def r(*shape, dtype=F):
    a = rng.standard_normal(shape)
    if np.dtype(dtype).kind in "iu":
        return (a * 10).astype(dtype)
    if np.dtype(dtype).kind == "b":
        return a > 0
    return a.astype(dtype)


def raises(op_type, inputs, attrs=None, opset=18, **kw):
    m = make_model(op_type, inputs, attrs, opset=opset, **kw)
    feeds = {f"in{i}": a for i, a in enumerate(inputs) if a is not None and i not in kw.get("initializers", ())}
    with pytest.raises(halfsim.errors.HalfsimError):
        halfsim.load(m).run(feeds)


# --- gathers --------------------------------------------------------------------------------

@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("indices", [I64(0, -1, 2), np.array([[1, 0], [-2, 2]], np.int32), I64(1).reshape(()),
                                     np.zeros((0, 2), np.int64)])
@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.bool_, np.float16])
def test_gather(axis, indices, dtype):
    check_op("Gather", [r(3, 4, 3, dtype=dtype), indices], {"axis": axis}, opset=13)


def test_gather_strings_and_bounds():
    check_op("Gather", [np.array(["a", "b", "c"], dtype=object), I64(2, 0, -1)], {"axis": 0})
    raises("Gather", [r(3, 4), I64(3)], {"axis": 0})
    raises("Gather", [r(3, 4), I64(-5)], {"axis": 1})


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather_elements(axis):
    x = r(3, 4)
    idx = rng.integers(-3, 3, size=(2, 4) if axis == 0 else (3, 2))
    check_op("GatherElements", [x, idx.astype(np.int64)], {"axis": axis})
    check_op("GatherElements", [x.astype(np.int32), idx.astype(np.int32)], {"axis": axis})


@pytest.mark.parametrize("batch_dims,data_shape,idx", [
    (0, (2, 3), I64([0, 1], [1, -1])),
    (0, (2, 3, 4), I64([1], [0])),
    (0, (2, 3, 4), np.array([[[0, 1, 2]], [[1, 2, 3]]], np.int64)),
    (1, (2, 3, 4), I64([1], [2])),
    (1, (2, 3, 4), np.array([[[0, 1], [2, 3]], [[1, -1], [0, 0]]], np.int64)),
    (2, (2, 3, 4), np.zeros((2, 3, 1), np.int64)),
    (0, (2, 3), np.zeros((0, 2), np.int64)),
])
def test_gather_nd(batch_dims, data_shape, idx):
    check_op("GatherND", [r(*data_shape), idx], {"batch_dims": batch_dims}, opset=13)
    check_op("GatherND", [r(*data_shape, dtype=np.int64), idx], {"batch_dims": batch_dims}, opset=13)


# --- scatters -------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction,opset", [(None, 11), ("none", 16), ("add", 16), ("mul", 16), ("max", 18),
                                             ("min", 18)])
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("dtype", [np.float32, np.int32])
def test_scatter_elements(reduction, opset, axis, dtype):
    data = r(3, 4, dtype=dtype)
    shape = (3, 3) if axis == 0 else (2, 3)
    dim = data.shape[axis]
    # distinct targets along the axis unless a reduction makes duplicates well defined
    if reduction in (None, "none"):
        idx = np.stack([rng.permutation(dim)[:shape[0]] for _ in range(shape[1])], 1) if axis == 0 else \
            np.stack([rng.permutation(dim)[:shape[1]] for _ in range(shape[0])], 0)
    else:
        idx = rng.integers(-dim, dim, size=shape)
    attrs = {"axis": axis} if reduction is None else {"axis": axis, "reduction": reduction}
    check_op("ScatterElements", [data, idx.astype(np.int64), r(*shape, dtype=dtype)], attrs, opset=opset)


def test_scatter_deprecated():
    data = r(3, 4)
    idx = np.array([[1, 0, 2, 1]], np.int64)
    check_op("Scatter", [data, idx, r(1, 4)], {"axis": 0}, opset=9)
    check_op("Scatter", [data, np.array([[3, -1]], np.int64), r(1, 2)], {"axis": 1}, opset=10)


def test_scatter_elements_bad_index():
    raises("ScatterElements", [r(3, 4), I64([5, 0]), r(1, 2)], {"axis": 0})


@pytest.mark.parametrize("reduction,opset", [(None, 11), ("none", 16), ("add", 16), ("mul", 16), ("max", 18),
                                             ("min", 18)])
@pytest.mark.parametrize("case", ["elem", "slice", "dup"])
def test_scatter_nd(reduction, opset, case):
    data = r(4, 3, 2)
    if case == "elem":
        idx, upd = I64([0, 1, 1], [3, -1, 0]), r(2)
    elif case == "slice":
        idx, upd = I64([[1], [-2]], [[0], [3]]), r(2, 2, 3, 2)
    else:
        if reduction in (None, "none"):
            pytest.skip("duplicates are only defined with a reduction")
        idx, upd = I64([1, 0], [1, 0], [2, 2]), r(3, 2)
    attrs = {} if reduction is None else {"reduction": reduction}
    check_op("ScatterND", [data, idx, upd], attrs, opset=opset)
    check_op("ScatterND", [data.astype(np.int64), idx, (upd * 5).astype(np.int64)], attrs, opset=opset)


# --- selection ------------------------------------------------------------------------------

@pytest.mark.parametrize("x", [r(3, 4), r(2, 3, 2, dtype=np.int32), r(5, dtype=np.bool_), np.zeros((2, 0), F),
                               np.zeros((3, 3), np.int64), np.array(2.0, F), np.array(0, np.int32)])
def test_nonzero(x):
    check_op("NonZero", [x], opset=13)


@pytest.mark.parametrize("sorted_", [0, 1])
@pytest.mark.parametrize("axis", [None, 0, 1, -1])
@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.int8])
def test_unique(sorted_, axis, dtype):
    x = rng.integers(-2, 3, size=(4, 3)).astype(dtype)
    x[2] = x[0]
    attrs = {"sorted": sorted_} if axis is None else {"sorted": sorted_, "axis": axis}
    check_op("Unique", [x], attrs, n_outputs=4, opset=11)


def test_unique_strings():
    check_op("Unique", [np.array(["b", "a", "b", "c", "a"], dtype=object)], {"sorted": 0}, n_outputs=4)
    check_op("Unique", [np.array(["b", "a", "b", "c", "a"], dtype=object)], {}, n_outputs=4)


@pytest.mark.parametrize("k", [0, 1, 3, 6])
@pytest.mark.parametrize("axis", [-1, 0, 1])
@pytest.mark.parametrize("largest", [0, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.int32, np.float64])
def test_topk(k, axis, largest, dtype):
    x = rng.integers(-3, 3, size=(6, 6, 6)).astype(dtype)  # many ties: lower index must come first
    check_op("TopK", [x, I64(k)], {"axis": axis, "largest": largest}, n_outputs=2, opset=11, initializers=(1,))


def test_topk_opsets():
    x = rng.integers(-3, 3, size=(4, 5)).astype(F)
    check_op("TopK", [x], {"k": 2}, n_outputs=2, opset=9)
    check_op("TopK", [x, I64(3)], {"axis": 0}, n_outputs=2, opset=10)
    raises("TopK", [x, I64(7)], opset=11)


def test_topk_unsorted_same_set():
    x = r(3, 20)
    m = make_model("TopK", [x, I64(5)], {"sorted": 0}, n_outputs=2, opset=11, initializers=(1,))
    from opcheck import run_ort
    want_v, want_i = run_ort(m, {"in0": x})
    got = halfsim.load(m).run({"in0": x})
    np.testing.assert_array_equal(np.sort(got["out1"], -1), np.sort(want_i, -1))
    np.testing.assert_array_equal(np.sort(got["out0"], -1), np.sort(want_v, -1))


@pytest.mark.parametrize("idx", [0, 2, -1, -3])
def test_gather_scalar_index_of_a_shape(idx):
    # Shape arithmetic: Gather(Shape(x), scalar) -> a 0-d int64 (the scalar fast path).
    check_op("Gather", [np.array([2, 5, 7], np.int64), np.array(idx, np.int64)], {"axis": 0}, opset=13)
    check_op("Gather", [r(3, 4), np.array(idx, np.int32)], {"axis": 0}, opset=13)
    raises("Gather", [r(3, 4), np.array(idx + (4 if idx >= 0 else -4), np.int64)], {"axis": 0})


def test_gather_constant_indices_on_changing_shapes():
    """fp32 schedules keep constant Gather indices wrapped per axis size: one model fed two
    shapes matches ORT on both, and an index out of bounds for a third still fails."""
    from onnx import TensorProto, helper
    idx = np.array([[0, -1], [2, -3]], np.int64)
    g = helper.make_graph([helper.make_node("Gather", ["x", "i"], ["y"], axis=1)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, "n"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [helper.make_tensor("i", TensorProto.INT64, idx.shape, idx.reshape(-1))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    hm = halfsim.load(m)
    for n in (5, 3, 5):
        x = np.arange(2 * n, dtype=np.float32).reshape(2, n)
        np.testing.assert_array_equal(hm.run({"x": x})["y"], run_ort(m, {"x": x})[0])
    with pytest.raises(halfsim.HalfsimError, match="out of bounds"):
        hm.run({"x": np.zeros((2, 2), np.float32)})
