"""QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear checked against ONNX Runtime."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto

import halfsim
from opcheck import assert_same, check_op, feeds_of, make_model, run_ort

rng = np.random.default_rng(2)
F8 = [ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e4m3fnuz, ml_dtypes.float8_e5m2, ml_dtypes.float8_e5m2fnuz]


def check_exotic(op_type, inputs, attrs, *, opset, want_dtype, initializers=()):
    """check_op for float8 / int4 tensors, which ORT's Python API cannot exchange: those inputs
    become initializers, and ORT's output goes through an exact Cast (to float32, or int8 for
    int4) that halfsim's output gets from ml_dtypes. Returns halfsim's output."""
    inits = tuple(initializers) + tuple(i for i, a in enumerate(inputs)
                                        if a is not None and (a.dtype.kind == "V" or a.dtype.itemsize == 1 and a.dtype.kind == "f"))
    m = make_model(op_type, inputs, attrs, opset=opset, initializers=inits)
    feeds = feeds_of(m, inputs)
    got = halfsim.load(m).run(feeds)["out0"]
    assert got.dtype == np.dtype(want_dtype), f"{got.dtype} != {np.dtype(want_dtype)}"
    exotic = np.dtype(want_dtype).kind == "V" or np.dtype(want_dtype).itemsize == 1
    carrier = np.int8 if np.dtype(want_dtype) in (np.dtype(ml_dtypes.int4), np.dtype(ml_dtypes.uint4)) else np.float32
    if exotic:
        import onnx
        from onnx import helper
        m.graph.node[0].output[0] = "q0"
        m.graph.node.append(helper.make_node("Cast", ["q0"], ["out0"],
                                             to=helper.np_dtype_to_tensor_dtype(np.dtype(carrier))))
        got = got.astype(carrier)
    want = run_ort(m, feeds)[0]
    assert_same(got, want, rtol=0, atol=0, what=op_type)
    return halfsim.load(make_model(op_type, inputs, attrs, opset=opset, initializers=inits)).run(feeds)["out0"]


def ties(shape, scale):
    """Values on and around rounding ties of x / scale, plus out-of-range ones."""
    k = rng.integers(-300, 300, shape).astype(np.float32)
    frac = rng.choice(np.array([0.0, 0.5, -0.5, 0.49, 0.51, 0.25], np.float32), shape)
    return ((k + frac) * np.float32(scale)).astype(np.float32)


@pytest.mark.parametrize("qt", [np.uint8, np.int8, np.uint16, np.int16])
@pytest.mark.parametrize("opset", [10, 13, 19, 21])
def test_quantize_per_tensor(qt, opset):
    if np.dtype(qt).itemsize == 2 and opset < 21:
        pytest.skip("16-bit quantized types arrive with opset 21")
    x = ties((3, 4, 5), 0.25)
    zp = np.array(3 if np.dtype(qt).kind == "u" else -2, qt)
    check_op("QuantizeLinear", [x, np.array(0.25, np.float32), zp], opset=opset)


@pytest.mark.parametrize("opset", [10, 13, 19, 21])
def test_quantize_no_zero_point(opset):
    check_op("QuantizeLinear", [ties((4, 6), 0.1), np.array(0.1, np.float32)], opset=opset)


@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("qt", [np.uint8, np.int8])
def test_quantize_per_axis(axis, qt):
    x = ties((3, 4, 5), 0.1)
    n = x.shape[axis]
    s = rng.uniform(0.05, 0.2, n).astype(np.float32)
    zp = rng.integers(0, 10, n).astype(qt)
    check_op("QuantizeLinear", [x, s, zp], dict(axis=axis), opset=13)
    check_op("DequantizeLinear", [check_op("QuantizeLinear", [x, s, zp], dict(axis=axis), opset=13)[0], s, zp],
             dict(axis=axis), opset=13)


@pytest.mark.parametrize("qt", [np.uint8, np.int8, ml_dtypes.int4, ml_dtypes.uint4])
@pytest.mark.parametrize("block,axis", [(2, 1), (3, 1), (4, 0)])
def test_quantize_blocked(qt, block, axis):
    x = ties((6, 8), 0.05) if axis == 1 else ties((8, 6), 0.05)
    sshape = list(x.shape)
    sshape[axis] = -(-x.shape[axis] // block)
    s = rng.uniform(0.02, 0.2, sshape).astype(np.float32)
    zp = np.zeros(sshape, dtype=qt)
    q = check_exotic("QuantizeLinear", [x, s, zp], dict(axis=axis, block_size=block), opset=21, want_dtype=qt,
                     initializers=(1, 2))
    check_exotic("DequantizeLinear", [q, s, zp], dict(axis=axis, block_size=block), opset=21,
                 want_dtype=np.float32, initializers=(1, 2))


@pytest.mark.parametrize("qt", [ml_dtypes.int4, ml_dtypes.uint4])
def test_quantize_int4(qt):
    x = ties((4, 6), 0.5)
    check_exotic("QuantizeLinear", [x, np.array(0.5, np.float32), np.array(1, qt)], {}, opset=21, want_dtype=qt)


def test_quantize_output_dtype():
    x = ties((4, 6), 0.5)
    check_op("QuantizeLinear", [x, np.array(0.5, np.float32)], dict(output_dtype=TensorProto.INT8), opset=21)


def test_quantize_float16_input():
    x = ties((4, 6), 0.5).astype(np.float16)
    check_op("QuantizeLinear", [x, np.array(0.5, np.float16), np.array(4, np.uint8)], opset=19)


@pytest.mark.parametrize("f8", F8)
@pytest.mark.parametrize("saturate", [0, 1])
def test_quantize_float8(f8, saturate):
    mx = float(ml_dtypes.finfo(f8).max)
    x = np.concatenate([rng.standard_normal(40).astype(np.float32) * 50,
                        np.array([mx * 1.5, -mx * 3, np.inf, -np.inf, 0.0, -0.0, 1e-9], np.float32)]) * np.float32(2)
    check_exotic("QuantizeLinear", [x, np.array(2.0, np.float32), np.zeros((), f8)], dict(saturate=saturate),
                 opset=19, want_dtype=f8)


@pytest.mark.parametrize("f8", F8)
def test_dequantize_float8(f8):
    x = (rng.standard_normal(30) * 20).astype(f8)
    check_exotic("DequantizeLinear", [x, np.array(0.5, np.float32)], {}, opset=19, want_dtype=np.float32)
    check_exotic("DequantizeLinear", [x.reshape(5, 6), rng.uniform(0.1, 1, 6).astype(np.float32)], dict(axis=1),
                 opset=19, want_dtype=np.float32)


@pytest.mark.parametrize("qt", [np.uint8, np.int8, np.int32])
@pytest.mark.parametrize("opset", [10, 13, 19, 21])
def test_dequantize(qt, opset):
    info = np.iinfo(qt)
    lo, hi = (info.min, info.max) if qt != np.int32 else (-(2 ** 20), 2 ** 20)
    x = rng.integers(lo, hi, (3, 7)).astype(qt)
    zp = np.array(0 if qt == np.int32 else 5, qt)
    check_op("DequantizeLinear", [x, np.array(0.37, np.float32), zp], opset=opset)
    check_op("DequantizeLinear", [x, np.array(0.37, np.float32)], opset=opset)


def test_dequantize_float16_scale():
    x = rng.integers(0, 256, (3, 7)).astype(np.uint8)
    check_op("DequantizeLinear", [x, np.array(0.37, np.float16), np.array(9, np.uint8)], opset=19)


@pytest.mark.parametrize("kind", ["normal", "positive", "negative", "zeros", "ties", "single", "wide"])
def test_dynamic_quantize_linear(kind):
    x = {
        "normal": rng.standard_normal((3, 8)).astype(np.float32),
        "positive": rng.uniform(0.5, 3, (4, 5)).astype(np.float32),
        "negative": -rng.uniform(0.5, 3, (4, 5)).astype(np.float32),
        "zeros": np.zeros((2, 3), np.float32),
        "ties": (np.arange(-51, 205, dtype=np.float32) + 0.5) * np.float32(1 / 255 * 4),
        "single": np.array([3.0], np.float32),
        "wide": np.array([-1e6, 1e-3, 2e6], np.float32),
    }[kind]
    check_op("DynamicQuantizeLinear", [x], n_outputs=3, opset=11)


def test_quantize_bad_scale_shape():
    import halfsim
    from opcheck import make_model
    m = make_model("QuantizeLinear", [np.zeros((2, 3), np.float32), np.ones(4, np.float32)], dict(axis=1),
                   initializers=(1,), opset=13)
    with pytest.raises(halfsim.errors.HalfsimError):
        halfsim.load(m).run({"in0": np.zeros((2, 3), np.float32)})


@pytest.mark.parametrize("kind", ["normal", "positive", "negative", "zeros", "ties"])
def test_dynamic_quantize_linear_large(kind):
    # >= 16384 elements: the one-pass numba quantizer instead of numpy's
    base = {"normal": rng.standard_normal(1000) * 3, "positive": rng.uniform(0.5, 3, 1000),
            "negative": -rng.uniform(0.5, 3, 1000), "zeros": np.zeros(1000),
            "ties": (np.arange(-51, 205) + 0.5) * (1 / 255 * 4)}[kind]
    check_op("DynamicQuantizeLinear", [np.resize(base.astype(np.float32), (5, 4000))], n_outputs=3, opset=11)


def test_dynamic_quantize_linear_large_non_finite_keeps_numpy_path():
    from halfsim.ops import quant
    x = rng.standard_normal(20000).astype(np.float32)
    x[7] = np.inf
    m = make_model("DynamicQuantizeLinear", [x], n_outputs=3, opset=11)
    got = halfsim.load(m).run({"in0": x})
    scale, zp = quant.dynamic_quant_params(x)
    with np.errstate(invalid="ignore"):
        want = quant.quantize(x, scale, zp, np.uint8)
    np.testing.assert_array_equal(got["out0"], want)
