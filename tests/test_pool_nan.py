"""MaxPool / GlobalMaxPool with NaN, infinities and signed zeros, bit for bit against ONNX
Runtime: which special value a window yields depends on ORT's kernel (kernels/pool_mlas.py)."""
from __future__ import annotations

import numpy as np
import pytest

import halfsim

from opcheck import feeds_of, make_model, run_ort

SPECIALS = np.array([np.nan, -np.inf, np.inf, 0.0, -0.0, np.finfo(np.float32).min], np.float32)


def _sprinkle(rng, shape, dtype=np.float32, share=None):
    x = rng.standard_normal(shape).astype(dtype)
    f = x.reshape(-1)
    hit = rng.random(f.size) < (share if share is not None else rng.choice([0.05, 0.3, 0.9]))
    f[hit] = rng.choice(SPECIALS, size=int(hit.sum())).astype(dtype)
    return x


def _bits_equal(got, want, zero_sign=True):
    got, want = np.asarray(got), np.asarray(want)
    if not zero_sign:
        got, want = got + 0, want + 0  # -0.0 + 0 == +0.0
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    u = {4: np.uint32, 8: np.uint64}[got.dtype.itemsize] if got.dtype.kind == "f" else got.dtype
    bad = np.nonzero(got.view(u) != want.view(u))
    assert bad[0].size == 0, f"{bad[0].size} cells differ, first at {[a[0] for a in bad]}: {got[bad][:4]} vs ORT {want[bad][:4]}"


def _check(op, x, attrs, n_outputs=1, opset=13):
    m = make_model(op, [x], attrs, n_outputs=n_outputs, opset=opset)
    feeds = feeds_of(m, [x])
    want = run_ort(m, feeds)
    got = halfsim.load(m).run(feeds)
    # Without NaN or -inf halfsim takes its fast kernels, which keep values but not the sign of
    # a zero maximum (ORT's sign depends on its fold order; the emulation keeps it).
    exact = bool(np.isnan(x).any() or np.isneginf(x).any())
    for i, w in enumerate(want):
        _bits_equal(got[f"out{i}"], w, zero_sign=exact or i == 1)


def _random_case(rng):
    nd = int(rng.integers(1, 4))
    sp = [int(rng.integers(1, 11)) for _ in range(nd)]
    k = [int(rng.integers(1, min(n, 5) + 1)) for n in sp]
    st = [int(rng.integers(1, 4)) for _ in range(nd)]
    pads = [int(rng.integers(0, kk)) for kk in k] + [int(rng.integers(0, kk)) for kk in k]
    return [1, int(rng.integers(1, 3))] + sp, dict(kernel_shape=k, strides=st, pads=pads,
                                                   ceil_mode=int(rng.random() < 0.3))


@pytest.mark.parametrize("seed", range(8))
def test_maxpool_specials_match_ort_bitwise(seed):
    # 1-D (generic fold), 2-D and 3-D (vectorized folds: strides <= 2; generic: stride 3) windows.
    rng = np.random.default_rng(seed)
    for _ in range(15):
        shape, attrs = _random_case(rng)
        _check("MaxPool", _sprinkle(rng, shape), attrs)


@pytest.mark.parametrize("shape", [(1, 3, 7), (2, 2, 5, 6), (1, 2, 3, 4, 5), (1, 1, 4, 4)])
def test_global_and_whole_window_maxpool_specials(shape):
    rng = np.random.default_rng(len(shape))
    for share in (0.1, 0.5, 1.0):
        x = _sprinkle(rng, shape, share=share)
        _check("GlobalMaxPool", x, {})
        _check("MaxPool", x, dict(kernel_shape=list(shape[2:])))  # the same global fold in ORT


def test_maxpool_nan_positions_in_a_2x2_window():
    # The vectorized 2-D fold: rows first (maxps: a NaN in a later row wins), then across the
    # window width along the row buffer; std::max for the columns past the last group of 4.
    for w in (4, 5):
        for pos in np.ndindex(2, w):
            x = np.arange(2 * w, dtype=np.float32).reshape(1, 1, 2, w)
            x[(0, 0) + pos] = np.nan
            _check("MaxPool", x, dict(kernel_shape=[2, 2]))
    x = np.full((1, 1, 3, 3), -np.inf, np.float32)  # all -inf: ORT folds from the lowest finite float
    _check("MaxPool", x, dict(kernel_shape=[2, 2], pads=[1, 1, 1, 1]))
    _check("MaxPool", x.reshape(1, 1, 9), dict(kernel_shape=[3]))


@pytest.mark.parametrize("seed", range(3))
def test_maxpool_indices_and_dilations_with_specials(seed):
    # ORT's other path: a strict `v > max` fold from the lowest float (NaN and -inf dropped);
    # a window with no maximum reports index -1 on every axis.
    rng = np.random.default_rng(100 + seed)
    for _ in range(8):
        shape, attrs = _random_case(rng)
        attrs.pop("ceil_mode")
        x = _sprinkle(rng, shape)
        _check("MaxPool", x, dict(attrs, storage_order=int(rng.integers(0, 2))), n_outputs=2)
        nd = len(shape) - 2
        dil = [2 if 2 * k - 1 <= n + attrs["pads"][i] + attrs["pads"][i + nd] else 1
               for i, (k, n) in enumerate(zip(attrs["kernel_shape"], shape[2:]))]
        _check("MaxPool", x, dict(attrs, dilations=dil), opset=11)
    x = np.full((1, 1, 4, 4), np.nan, np.float32)
    _check("MaxPool", x, dict(kernel_shape=[2, 2]), n_outputs=2)


def test_maxpool_float64_specials():
    rng = np.random.default_rng(7)
    for _ in range(6):
        shape, attrs = _random_case(rng)
        _check("MaxPool", _sprinkle(rng, shape, np.float64), attrs)
