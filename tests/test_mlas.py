"""kernels/mlas.py against ONNX Runtime's own CPU Sigmoid and Tanh ops, bit for bit."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import onnxruntime as ort
import pytest
from numba import njit
from onnx import TensorProto, helper

from halfsim.kernels import mlas

f32 = np.float32
# Signed zeros, subnormals, the clamp bounds and their float32 neighbours, huge values, inf, NaN.
EDGES = np.array([0.0, -0.0, 1e-45, -1e-45, 1e-38, -1e-38, 1e-30, 1e-7, -1e-7, 0.5, -0.5,
                  18.0, -18.0, 9.0, -9.0, np.nextafter(f32(18), f32(19)), np.nextafter(f32(-18), f32(-19)),
                  np.nextafter(f32(18), f32(0)), np.nextafter(f32(9), f32(10)), np.nextafter(f32(9), f32(0)),
                  np.nextafter(f32(-9), f32(-10)), 1e30, -1e30, 3.4028235e38, -3.4028235e38,
                  np.inf, -np.inf, np.nan, -np.nan], f32)


def _ort(op: str, x: np.ndarray) -> np.ndarray:
    g = helper.make_graph([helper.make_node(op, ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


def _inputs(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2**32, 50_000, dtype=np.uint64).astype(np.uint32).view(f32)  # every exponent
    return np.concatenate([EDGES, (rng.standard_normal(50_001) * 6).astype(f32), bits,
                           rng.uniform(-20, 20, 20_003).astype(f32)])


OPS = [("Sigmoid", mlas.logistic), ("Tanh", mlas.tanh)]


@pytest.mark.parametrize("op,fn", OPS)
def test_bit_exact_against_ort(op, fn):
    x = _inputs(1)
    want = _ort(op, x)
    got = fn(x)
    bad = want.view(np.uint32) != got.view(np.uint32)
    assert not bad.any(), f"{bad.sum()} mismatches, first at x={x[bad][:5]}: ort {want[bad][:5]} vs {got[bad][:5]}"


@pytest.mark.parametrize("op,fn", OPS)
def test_differs_from_libm_where_mlas_does(op, fn):
    # The rational approximation is not the correctly rounded function: an oracle that is plain
    # numpy would fail the bit-exact test above, so that test has teeth.
    x = np.linspace(-20, 20, 4001, dtype=f32)
    ref = 1 / (1 + np.exp(-x.astype(np.float64))) if op == "Sigmoid" else np.tanh(x.astype(np.float64))
    assert (fn(x) != ref.astype(f32)).any()


@pytest.mark.parametrize("op,fn", OPS)
def test_shapes_out_and_layout(op, fn):
    x = _inputs(2)[:6 * 7 * 11].reshape(6, 7, 11)
    want = _ort(op, x)
    np.testing.assert_array_equal(fn(x).view(np.uint32), want.view(np.uint32))
    np.testing.assert_array_equal(fn(x.T).view(np.uint32), _ort(op, np.ascontiguousarray(x.T)).view(np.uint32))
    y = x.copy()
    assert fn(y, out=y) is y  # in place
    np.testing.assert_array_equal(y.view(np.uint32), want.view(np.uint32))
    assert fn(np.zeros((0, 3), f32)).shape == (0, 3)
    assert fn(np.float64(0.25) * np.ones(3)).dtype == f32  # float64 input: float32 result
    with pytest.raises(ValueError):
        fn(x, out=np.empty(3, f32))


@njit
def _fused(x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = mlas.logistic_f32(x[i]) * mlas.tanh_f32(x[i])
    return out


def test_scalar_forms_callable_from_numba():
    x = _inputs(3)
    want = (_ort("Sigmoid", x) * _ort("Tanh", x)).astype(f32)
    np.testing.assert_array_equal(_fused(x).view(np.uint32), want.view(np.uint32))


@njit
def _fma_all(a, b, c):
    out = np.empty_like(a)
    for i in range(a.size):
        out[i] = mlas._fma(a[i], b[i], c[i])
    return out


def test_fma_correctly_rounded():
    rng = np.random.default_rng(16)
    a, b, c = (rng.standard_normal(3000).astype(f32) for _ in range(3))
    # float32 a, b, c with a*b + c = 1 + 2**-23 + 2**-24 - 2**-60: just below the tie between
    # 1 + 2**-23 and 1 + 2**-22; float64 arithmetic rounds onto the tie and a second rounding
    # (to even) would go up. A correctly rounded fma goes down.
    a[0], b[0], c[0] = 2.0 ** -24 * (1 + 2.0 ** -18), 1 - 2.0 ** -18, 1 + 2.0 ** -23
    got = _fma_all(a, b, c)
    assert got[0] == 1 + 2.0 ** -23
    for x, y, z, g in zip(a, b, c, got):
        exact = Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z))
        lo, hi = np.nextafter(g, f32(-np.inf)), np.nextafter(g, f32(np.inf))
        # the nearest float32: no farther than either neighbour
        assert abs(Fraction(float(g)) - exact) <= abs(Fraction(float(lo)) - exact)
        assert abs(Fraction(float(g)) - exact) <= abs(Fraction(float(hi)) - exact)
