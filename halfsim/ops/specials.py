"""NaN and infinities where ONNX Runtime's CPU kernels give an answer that plain numpy does not.
The op modules call these only after a cheap check found such values, so ordinary inputs keep
their fast paths (the scatter fold, exact and faster than numpy's ufunc.at, serves all float
inputs). Each rule names the ORT code it follows; tests/test_specials.py compares against ORT
bit for bit."""
from __future__ import annotations

import numba
import numpy as np

from ..kernels.reduce_ort import mlas_min_max, ort_max_min


def quant_params_u8(x: np.ndarray) -> tuple[np.float32, np.float32]:
    """ORT's GetQuantizationParameter<uint8_t> (DynamicQuantizeLinear, DynamicQuantizeMatMul, one
    thread) for float32 x holding NaN or +-inf: MLAS's min/max (kernels/reduce_ort.mlas_min_max),
    widened to 0 with std::min/std::max (a NaN bound stays NaN), scale (max - min) / 255, zero
    point round(clamp(0 - min / scale)) where std::min(255, NaN) is 255. Returns (scale, zp)."""
    f32 = np.float32
    mn, mx = mlas_min_max(x)
    mn = f32(0) if f32(0) < mn else mn
    mx = f32(0) if mx < f32(0) else mx
    with np.errstate(all="ignore"):
        scale = f32(1) if mx == mn else f32((mx - mn) / f32(255))
        izp = f32(f32(0) - mn / scale)
    c = izp if izp < f32(255) else f32(255)
    c = c if f32(0) < c else f32(0)
    return scale, f32(np.rint(c))


def hardmax_rows(v: np.ndarray) -> np.ndarray:
    """Hardmax of float32 rows (N, D) holding NaN, as ORT: the row maximum from Eigen's
    colwise maxCoeff (ReduceMax's trailing-axes fold, kernels/reduce_ort), then a one at the
    first cell equal to it; a NaN maximum equals no cell, so its row stays all zeros."""
    m = ort_max_min(v, (1,), True, True)
    eq = v == m
    out = np.zeros(v.shape, v.dtype)
    rows = np.flatnonzero(eq.any(axis=1))
    out[rows, eq[rows].argmax(axis=1)] = 1
    return out


def arg_with_nan(xf: np.ndarray, nan: np.ndarray, ax: int, last: int, is_max: bool) -> np.ndarray:
    """ArgMax/ArgMin index (keepdims) along `ax` of float xf whose NaN mask is `nan`, as ORT's
    loops: the first element, then each later one strictly better (`>=`/`<=` with
    select_last_index). A NaN first element is never replaced (index 0); a later NaN never
    wins nor ties, even with an infinite extreme."""
    fill = xf.dtype.type(-np.inf if is_max else np.inf)
    clean = np.where(nan, fill, xf)
    best = (np.max if is_max else np.min)(clean, axis=ax, keepdims=True)
    hit = (clean == best) & ~nan
    n = xf.shape[ax]
    if last:
        r = n - 1 - np.argmax(np.flip(hit, axis=ax), axis=ax, keepdims=True)
    else:
        r = np.argmax(hit, axis=ax, keepdims=True)
    first_nan = np.take(nan, [0], axis=ax)
    return np.where(first_nan | ~hit.any(axis=ax, keepdims=True), 0, r).astype(np.int64)


@numba.njit(cache=True, nogil=True)
def _scatter_fold(out, targets, upd, is_max):
    for k in range(targets.size):
        t = targets[k]
        a = out[t]
        u = upd[k]
        out[t] = a if (a > u if is_max else a < u) else u


def scatter_max_min(out: np.ndarray, ix: tuple, upd: np.ndarray, is_max: bool) -> bool:
    """ScatterElements/ScatterND reduction max/min of a float `out` (a fresh contiguous copy of
    data) in place, as ORT's loop: updates in order, `acc = acc > u ? acc : u` (or <), so an
    unordered pair takes the update: a NaN survives only as the last update of its cell, and a
    NaN already in data gives way to the first update; a tie of zeros keeps the update's sign.
    Also for ordinary inputs: one compiled pass, far cheaper than numpy's ufunc.at. Returns
    False (nothing done) for a non-contiguous `out`, which could not be updated through a view."""
    if not out.flags.c_contiguous:
        return False
    lead = np.broadcast_shapes(*(np.shape(i) for i in ix))
    tail = out.shape[len(ix):]  # ScatterND indexes leading axes and scatters whole slices
    upd = np.broadcast_to(upd, lead + tail)
    cells = np.ravel_multi_index(tuple(np.broadcast_to(i, lead) for i in ix), out.shape[:len(ix)])
    r = int(np.prod(tail, dtype=np.int64))
    targets = (cells.reshape(-1, 1) * r + np.arange(r)).reshape(-1)
    _scatter_fold(out.reshape(-1), targets, np.ascontiguousarray(upd).reshape(-1), is_max)
    return True
