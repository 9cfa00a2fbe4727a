"""NaN, infinities and signed zeros op by op, bit for bit against ONNX Runtime (CPU, one thread):
which special value comes out depends on ORT's kernels, which halfsim replays where they differ
from plain numpy (kernels/reduce_ort.py, halfsim/ops/specials.py)."""
from __future__ import annotations

import numpy as np
import pytest

import halfsim

from opcheck import feeds_of, make_model, run_ort
from test_pool_nan import _sprinkle


def _bits_equal(got, want, zero_sign=True):
    """Same dtype, shape and bits (NaN payloads and signs included; zero signs if asked)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    g, w = np.atleast_1d(got).reshape(-1), np.atleast_1d(want).reshape(-1)
    if got.dtype.kind == "f":
        if not zero_sign:
            g, w = g + 0, w + 0  # -0.0 + 0 == +0.0
        u = {2: np.uint16, 4: np.uint32, 8: np.uint64}[got.dtype.itemsize]
        g, w = g.view(u), w.view(u)
    bad = np.flatnonzero(g != w)
    assert bad.size == 0, f"{bad.size} of {g.size} cells differ, first at {bad[:4]}: " \
                          f"{got.reshape(-1)[bad[:4]]} vs ORT {want.reshape(-1)[bad[:4]]}"


def _run_both(op, inputs, attrs=None, n_outputs=1, opset=17):
    m = make_model(op, inputs, attrs or {}, n_outputs=n_outputs, opset=opset)
    feeds = feeds_of(m, inputs)
    want = run_ort(m, feeds)
    got = halfsim.load(m).run(feeds)
    return [got[f"out{i}"] for i in range(n_outputs)], want


def _check(op, inputs, attrs=None, n_outputs=1, opset=17, zero_sign=True):
    got, want = _run_both(op, inputs, attrs, n_outputs, opset)
    for g, w in zip(got, want):
        _bits_equal(g, w, zero_sign=zero_sign)


def _random_axes(rng, nd):
    k = int(rng.integers(1, nd + 1))
    return sorted(rng.choice(nd, k, replace=False).tolist())


# -- ReduceMax / ReduceMin ------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_reduce_max_min_nan_match_ort_bitwise(seed):
    # Random ranks 1-4, axes sets (every ORT path: all axes, trailing, middle, leading+trailing,
    # leading, scattered), keepdims, float32/float64, axes as attribute (opset 13) and as input
    # (opset 18). With NaN present halfsim replays ORT's fold, signed zeros included.
    rng = np.random.default_rng(seed)
    for _ in range(12):
        nd = int(rng.integers(1, 5))
        shape = tuple(int(rng.integers(1, 10)) for _ in range(nd))
        x = _sprinkle(rng, shape, np.float64 if rng.random() < 0.25 else np.float32)
        axes = _random_axes(rng, nd)
        kd = int(rng.integers(0, 2))
        exact = bool(np.isnan(x).any())
        for op in ("ReduceMax", "ReduceMin"):
            _check(op, [x], {"axes": axes, "keepdims": kd}, opset=13, zero_sign=exact)
            _check(op, [x, np.array(axes, np.int64)], {"keepdims": kd}, opset=18, zero_sign=exact)


@pytest.mark.parametrize("shape,axes", [
    ((2, 3, 5, 6), [3]),        # KR: per-row Eigen fold, rows at every 16-byte offset
    ((1, 37), [1]),             # KR, one long row: two packet accumulators and a tail
    ((150,), [0]),              # R: whole buffer
    ((3, 9, 7), [1]),           # KRK: packets of 4 output cells, columns folded 1 + 4 + ...
    ((1, 9, 7), [1]),           # KRK shape with one outer block: the sequential fold instead
    ((4, 3, 10), [0, 2]),       # RKR: first element, then each trailing block's fold
    ((20, 300), [0]),           # RK above ORT's threshold (its own loop: the sequential fold)
    ((2, 3, 4, 5), [0, 2]),     # scattered axes: the sequential row-major fold
])
@pytest.mark.parametrize("share", [0.02, 0.3, 1.0])
def test_reduce_max_min_nan_paths(shape, axes, share):
    rng = np.random.default_rng(len(shape) * 100 + int(share * 10))
    x = _sprinkle(rng, shape, share=share)
    x.reshape(-1)[0] = np.nan if share > 0.5 else x.reshape(-1)[0]
    for op in ("ReduceMax", "ReduceMin"):
        _check(op, [x], {"axes": axes, "keepdims": 1}, opset=13, zero_sign=bool(np.isnan(x).any()))
        _check(op, [x], {"keepdims": 0}, opset=13, zero_sign=bool(np.isnan(x).any()))  # all axes


def test_reduce_max_min_nan_in_every_position():
    # One NaN walked through a row of 13 at each 16-byte offset: which positions ORT keeps
    # (a packet lane's start, the head) and which it drops (later packets, the tail).
    for n in (3, 4, 8, 13):
        for pos in range(n):
            x = np.arange(4 * n, dtype=np.float32).reshape(4, n)
            x[:, pos] = np.nan
            for op in ("ReduceMax", "ReduceMin"):
                _check(op, [x], {"axes": [1]}, opset=13)
                _check(op, [x.T.copy()], {"axes": [0]}, opset=13)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # float32's lowest -> -inf
def test_reduce_max_min_float16_nan():
    # ORT's float16 reductions fold element by element (no half-precision packets in its Eigen
    # build): a NaN survives only as the first element in row-major order, halfsim's rule there.
    rng = np.random.default_rng(16)
    for _ in range(20):
        nd = int(rng.integers(1, 5))
        shape = tuple(int(rng.integers(1, 9)) for _ in range(nd))
        x = _sprinkle(rng, shape, np.float16)
        for op in ("ReduceMax", "ReduceMin"):
            _check(op, [x], {"axes": _random_axes(rng, nd)}, opset=13, zero_sign=False)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.int8, np.uint8])
def test_reduce_max_min_integers_untouched(dtype):
    rng = np.random.default_rng(3)
    info = np.iinfo(dtype)
    x = rng.integers(info.min, info.max, size=(3, 4, 5), dtype=dtype, endpoint=True)
    for axes in ([0], [1], [2], [0, 2], [0, 1, 2]):
        for op in ("ReduceMax", "ReduceMin"):
            _check(op, [x], {"axes": axes}, opset=13)


@pytest.mark.parametrize("seed", range(3))
def test_argmax_argmin_nan_match_ort(seed):
    rng = np.random.default_rng(50 + seed)
    for _ in range(8):
        nd = int(rng.integers(1, 4))
        shape = tuple(int(rng.integers(1, 9)) for _ in range(nd))
        x = _sprinkle(rng, shape)
        axis = int(rng.integers(-nd, nd))
        for op in ("ArgMax", "ArgMin"):
            for last in (0, 1):
                _check(op, [x], {"axis": axis, "keepdims": int(rng.integers(0, 2)),
                                 "select_last_index": last})


@pytest.mark.parametrize("n", [1, 7, 8, 13, 31, 32, 45, 64, 77, 300])
def test_argmax_argmin_1d_nan(n):
    # A 1-D input is ORT's whole-buffer path (Eigen's maxCoeff(&index)), not the loop.
    rng = np.random.default_rng(n)
    for share in (0.1, 0.6):
        x = _sprinkle(rng, (n,), share=share)
        for op in ("ArgMax", "ArgMin"):
            for last in (0, 1):
                _check(op, [x], {"axis": 0, "select_last_index": last})


# -- DynamicQuantizeLinear ------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 5, 8, 12, 31, 32, 40, 67, 100, 1 << 14])
@pytest.mark.parametrize("kind", ["nan", "posinf", "neginf", "both_inf", "mixed"])
def test_dynamic_quantize_linear_specials(n, kind):
    # MLAS's min/max (8-lane and 32-lane AVX folds, scalar tail) decides whether NaN reaches the
    # range; the zero point and y follow from std::min/max and maxps/minps clamps.
    rng = np.random.default_rng(n)
    pick = {"nan": [np.nan], "posinf": [np.inf], "neginf": [-np.inf], "both_inf": [np.inf, -np.inf],
            "mixed": [np.nan, np.inf, -np.inf, 0.0, -0.0]}[kind]
    for share in (0.01, 0.2, 1.0):
        x = (rng.standard_normal(n) * 3).astype(np.float32)
        hit = rng.random(n) < share
        hit[rng.integers(0, n)] = True
        x[hit] = rng.choice(np.array(pick, np.float32), int(hit.sum()))
        _check("DynamicQuantizeLinear", [x.reshape(1, n)], n_outputs=3, opset=11)


def test_dynamic_quantize_linear_nan_lane_positions():
    # A NaN survives MLAS's vector fold only as the last value of its lane: walk one through.
    for n in (8, 11, 32, 40, 45):
        for pos in range(n):
            x = np.linspace(-2, 3, n, dtype=np.float32)
            x[pos] = np.nan
            _check("DynamicQuantizeLinear", [x], n_outputs=3, opset=11)


# -- Hardmax --------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,axis,opset", [
    ((4, 7), -1, 13), ((3, 5, 6), 1, 13), ((2, 3, 9), 0, 13), ((2, 3, 5, 6), -1, 13),
    ((3, 5, 6), 1, 11), ((2, 13), 1, 11)])
def test_hardmax_nan_rows(shape, axis, opset):
    # ORT: the row maximum from Eigen's colwise fold, then the first cell equal to it; a NaN
    # maximum matches nothing and leaves its row all zeros.
    rng = np.random.default_rng(len(shape) + axis + opset)
    for share in (0.05, 0.3, 0.9):
        x = _sprinkle(rng, shape, share=share)
        _check("Hardmax", [x], {"axis": axis}, opset=opset)


# -- Clip -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("lo,hi", [(np.nan, 1.0), (-1.0, np.nan), (np.nan, np.nan), (np.nan, -np.inf),
                                   (np.inf, np.nan), (2.0, -2.0), (np.inf, -np.inf), (-0.0, 0.0)])
def test_clip_special_bounds(dtype, lo, hi):
    # ORT ignores a NaN bound (x stays as it is on that side); NaN x stays NaN; lo > hi gives hi.
    rng = np.random.default_rng(9)
    for n in (5, 37):
        x = _sprinkle(rng, (3, n), dtype)
        _check("Clip", [x, dtype(lo), dtype(hi)], opset=13)
        # fp16 with a missing bound: ORT's default is 65504, halfsim's fp32 plan computes fp16 in
        # float32 whose default max lets inf through (known, left to the interpreter's owners)
        if dtype != np.float16:
            _check("Clip", [x, dtype(lo)], opset=13)


def test_clip_nan_bound_fused_after_conv():
    # The interpreter fuses Conv + Clip with constant bounds (ops/elementwise.clip_bounds).
    from onnx import TensorProto, helper
    from opcheck import graph_model
    rng = np.random.default_rng(2)
    x = _sprinkle(rng, (1, 2, 6, 6), share=0.1)
    for lo, hi in [(np.nan, 6.0), (0.0, np.nan)]:
        nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Clip", ["c", "lo", "hi"], ["y"])]
        m = graph_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
                        {"w": rng.standard_normal((3, 2, 3, 3)).astype(np.float32),
                         "lo": np.array(lo, np.float32), "hi": np.array(hi, np.float32)}, opset=13)
        _bits_equal(halfsim.load(m).run({"x": x})["y"], run_ort(m, {"x": x})[0])


# -- QuantizeLinear -------------------------------------------------------------------------
@pytest.mark.parametrize("zp", [np.uint8(7), np.int8(5), np.int8(-128), np.uint16(9), np.int16(-4)])
@pytest.mark.parametrize("scale", [0.5, np.nan, np.inf, 0.0, 1e-30])
def test_quantize_linear_specials(zp, scale):
    # ORT clamps x / scale with maxps/minps before rounding: a NaN quotient (NaN x, 0/0,
    # inf/inf) becomes the lowest code, +-inf the extremes.
    x = np.array([np.nan, -np.nan, np.inf, -np.inf, 1.5, -0.0, 0.0, 300, -300, 2.5, -2.5, 1e30] * 3,
                 np.float32)
    _check("QuantizeLinear", [x, np.float32(scale), zp], opset=21 if zp.dtype.itemsize == 2 else 13)


# -- RNN ------------------------------------------------------------------------------------
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("with_init", [False, True])
def test_rnn_first_step_without_initial_h(direction, with_init):
    # ORT's first step without initial_h skips h.R^T, so an infinite or NaN recurrence weight
    # only reaches the output from the second step on; with an (all-zero) initial_h it is
    # multiplied in at once. Values and NaN positions vs ORT (tanh's last bit is ORT's own).
    from opcheck import assert_same
    rng = np.random.default_rng(4)
    nd, H = (2 if direction == "bidirectional" else 1), 3
    x = rng.standard_normal((4, 2, 2)).astype(np.float32)
    W = rng.standard_normal((nd, H, 2)).astype(np.float32)
    R = rng.standard_normal((nd, H, H)).astype(np.float32)
    R[:, 1, 0], R[:, 2, 2] = np.inf, np.nan
    ins = [x, W, R] + ([None, None, np.zeros((nd, 2, H), np.float32)] if with_init else [])
    got, want = _run_both("RNN", ins, {"hidden_size": H, "direction": direction}, n_outputs=2)
    for g, w in zip(got, want):
        assert_same(g, w)
    assert np.isnan(want[0]).any() and not np.isnan(want[0]).all()


# -- Pow ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("exponent", [0.5, 2.0, -1.0, 3.0, -0.5, np.nan, np.inf, -np.inf, 0.0])
def test_pow_special_cases(dtype, exponent):
    # C's pow as ORT calls it: pow(-inf, 0.5) = +inf and pow(-0, 0.5) = +0 (numpy's sqrt
    # shortcut for 0.5 gave NaN and -0), pow(x, 0) = 1 even for NaN, pow(1, NaN) = 1.
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 2.5, -2.5, 4.0], dtype)
    _check("Pow", [x, dtype(exponent)], opset=15)
    _check("Pow", [x, np.full(x.shape, exponent, dtype)], opset=15)


# -- ScatterElements / ScatterND reduction max/min --------------------------------------------
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("reduction", ["max", "min"])
def test_scatter_max_min_nan(seed, reduction):
    # ORT folds updates in order with acc = acc > u ? acc : u: a NaN survives only as a cell's
    # last update, and a NaN in data gives way to the first update.
    rng = np.random.default_rng(seed)
    data = _sprinkle(rng, (4, 5), share=0.3)
    idx = rng.integers(-4, 4, (6, 5)).astype(np.int64)  # many duplicates, negative indices
    upd = _sprinkle(rng, (6, 5), share=0.4)
    _check("ScatterElements", [data, idx, upd], {"axis": 0, "reduction": reduction}, opset=18)
    idx1 = rng.integers(0, 5, (4, 7)).astype(np.int64)
    _check("ScatterElements", [data, idx1, _sprinkle(rng, (4, 7), share=0.4)], {"axis": 1, "reduction": reduction},
           opset=18)
    nd_idx = rng.integers(0, 4, (7, 1)).astype(np.int64)  # whole rows, repeated
    _check("ScatterND", [data, nd_idx, _sprinkle(rng, (7, 5), share=0.4)], {"reduction": reduction}, opset=18)
    nd_idx2 = np.stack([rng.integers(0, 4, 9), rng.integers(0, 5, 9)], axis=1).astype(np.int64)
    _check("ScatterND", [data, nd_idx2, _sprinkle(rng, (9,), share=0.4)], {"reduction": reduction}, opset=18)


@pytest.mark.parametrize("pick", [[np.nan], [np.inf], [-np.inf], [np.inf, -np.inf], [np.nan, -np.inf]])
def test_dynamic_quantize_matmul_specials(pick):
    # com.microsoft.DynamicQuantizeMatMul quantizes A with the same ORT parameters as
    # DynamicQuantizeLinear (MLAS's min/max). uint8 B: ORT's U8U8 GEMM is exact (its U8S8 AVX2
    # kernel saturates int16 pair sums, for ordinary inputs too: not a special-value matter).
    rng = np.random.default_rng(len(pick))
    for share in (0.02, 0.2):
        A = (rng.standard_normal((5, 37)) * 2).astype(np.float32)
        hit = rng.random(A.shape) < share
        A[hit] = rng.choice(np.array(pick, np.float32), int(hit.sum()))
        B = rng.integers(0, 256, (37, 4)).astype(np.uint8)
        ins = [A, B, np.float32(0.05), np.uint8(131), rng.standard_normal(4).astype(np.float32)]
        m = make_model("DynamicQuantizeMatMul", ins, {}, domain="com.microsoft", initializers=(1, 2, 3, 4))
        feeds = feeds_of(m, ins)
        _bits_equal(halfsim.load(m).run(feeds)["out0"], run_ort(m, feeds)[0])
