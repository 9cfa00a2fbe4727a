"""Pooling: MaxPool (with Indices), AveragePool, LpPool, their Global forms, MaxUnpool, MaxRoiPool.

Float window sums (AveragePool, LpPool) go through ctx.sum over a materialized window axis, so
the plan decides the accumulation format; the plain fp32 plan instead adds the kernel taps as
shifted strided slices (no window copy). Max pooling is exact in any format."""
from __future__ import annotations

import math

import numpy as np

from ..errors import ExecutionError, ModelError
from .conv import pad_spatial, window_geometry, windows
from .registry import op


def _geometry(x, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode, op_name):
    if x.ndim < 3:
        raise ExecutionError(f"{op_name}: input must have rank >= 3, got {list(x.shape)}")
    if not kernel_shape or len(kernel_shape) != x.ndim - 2:
        raise ModelError(f"{op_name}: kernel_shape must have {x.ndim - 2} values")
    kernel = [int(k) for k in kernel_shape]
    out, pb, pe, st, dl = window_geometry(x.shape[2:], kernel, strides, dilations, pads, auto_pad,
                                          ceil_mode=ceil_mode, op_name=op_name)
    # ceil_mode windows may reach past the end padding: pad further (those cells never count).
    extra = [max(0, (o - 1) * s + (k - 1) * d + 1 - (n + b + e)) if o > 0 else 0
             for o, s, k, d, n, b, e in zip(out, st, kernel, dl, x.shape[2:], pb, pe)]
    return kernel, out, pb, pe, st, dl, extra


def _tap_slices(tap, dl, st, out):
    return (slice(None), slice(None)) + tuple(slice(t * d, t * d + (o - 1) * s + 1, s) if o > 0 else slice(0, 0)
                                              for t, d, s, o in zip(tap, dl, st, out))


def _window_sum(ctx, xp, kernel, out, st, dl):
    """Sum over each window of padded xp: (N, C, *out)."""
    if ctx.plain:
        # Separable: reduce one spatial axis at a time (sum(k) passes instead of prod(k)).
        acc = xp
        for ax, (k, d, s, o) in enumerate(zip(kernel, dl, st, out)):
            red = None
            for t in range(k):
                sl = [slice(None)] * acc.ndim
                sl[2 + ax] = slice(t * d, t * d + (o - 1) * s + 1, s) if o > 0 else slice(0, 0)
                v = acc[tuple(sl)]
                red = v.copy() if red is None else np.add(red, v, out=red)
            acc = red
        return acc
    nd = len(kernel)
    w = windows(xp, kernel, out, st, dl)  # (N, C, *k, *o)
    perm = [0, 1] + list(range(2 + nd, 2 + 2 * nd)) + list(range(2, 2 + nd))
    w = w.transpose(perm).reshape(xp.shape[:2] + tuple(out) + (math.prod(kernel),))
    return ctx.sum(w, axis=-1, keepdims=False)


def _counts(in_sp, kernel, out, pb, pe, st, dl, extra, include_pad):
    """Number of counted cells in each window (spatial shape), as float64."""
    full = [n + b + e + x for n, b, e, x in zip(in_sp, pb, pe, extra)]
    mask = np.zeros([1, 1] + full, dtype=np.float64)
    if include_pad:
        mask[(0, 0) + tuple(slice(0, n + b + e) for n, b, e in zip(in_sp, pb, pe))] = 1
    else:
        mask[(0, 0) + tuple(slice(b, b + n) for n, b in zip(in_sp, pb))] = 1
    nd = len(kernel)
    w = windows(mask, kernel, out, st, dl)
    return w.sum(axis=tuple(range(2, 2 + nd)))[0, 0]


def _pool_input(x, pb, pe, extra, value=0):
    return pad_spatial(x, pb, [e + x_ for e, x_ in zip(pe, extra)], value)


# ------------------------------------------------------------------------------- MaxPool
@op("MaxPool", since=1)
def max_pool(ctx, x, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None, pads=None,
             storage_order=0, strides=None):
    kernel, out, pb, pe, st, dl, extra = _geometry(x, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode,
                                                   "MaxPool")
    want_idx = len(ctx.node.outputs) > 1 and bool(ctx.node.outputs[1])
    if _has_nan_or_neg_inf(x):
        # Which NaN or -inf comes out depends on ORT's fold: replay it. Without Indices and
        # dilations ORT's float32 MaxPool is MlasPool (kernels/pool_mlas.py).
        if not want_idx and all(d == 1 for d in dl) and x.ndim <= 5 and x.dtype == np.float32:
            from ..kernels.pool_mlas import mlas_max_pool
            return mlas_max_pool(x, kernel, out, st, pb, [e + x_ for e, x_ in zip(pe, extra)])
        y, idx = _first_then_greater(x, _pool_input(x, pb, pe, extra, -np.inf), kernel, out, pb, st, dl, storage_order)
        return (y, idx) if want_idx else y
    if not want_idx and len(kernel) == 2 and x.dtype in (np.float32, np.float64, np.int8, np.uint8) and x.size:
        from ..kernels.conv import maxpool2d_call  # numba, separable rows/columns, implicit padding
        return maxpool2d_call(x, kernel, out, st, dl, pb)
    lowest = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    xp = _pool_input(x, pb, pe, extra, lowest)
    y = None
    for tap in np.ndindex(*kernel):
        v = xp[_tap_slices(tap, dl, st, out)]
        y = v.copy() if y is None else np.maximum(y, v, out=y)
    if y is None or not want_idx:
        return y
    found = np.zeros(y.shape, dtype=bool)
    idx = np.zeros(y.shape, dtype=np.int64)
    for v, valid, flat in _taps(x, xp, kernel, out, pb, st, dl, storage_order):
        hit = (~found) & valid & (v == y)  # the first maximum, as ORT reports
        idx = np.where(hit, flat, idx)
        found |= hit
    return y, idx


def _has_nan_or_neg_inf(x: np.ndarray) -> bool:
    """Only then do max poolings differ (np.min propagates NaN): one cheap pass."""
    return x.dtype.kind == "f" and x.size > 0 and not bool(np.min(x) > -np.inf)


def _first_then_greater(x, xp, kernel, out, pb, st, dl, storage_order):
    """ORT's MaxPool loops outside MLAS (Indices, dilations, float64): a window's first in-range
    cell, then each later one strictly greater. A NaN survives only as the first cell, and an
    all -inf window stays -inf. Returns (max, flat index)."""
    y = np.full(xp.shape[:2] + tuple(out), np.nan, dtype=x.dtype)
    idx = np.zeros(y.shape, dtype=np.int64)
    seen = np.zeros(y.shape, dtype=bool)
    for v, valid, flat in _taps(x, xp, kernel, out, pb, st, dl, storage_order):
        take = valid & (~seen | (v > y))
        np.copyto(y, v, where=take)
        idx = np.where(take, flat, idx)
        seen |= valid
    return y, idx


def _taps(x, xp, kernel, out, pb, st, dl, storage_order):
    """Per window tap, in ORT's order: (values over every window, whether the cell lies inside
    the input, its flat index over N, C, *spatial, row-major or column-major by storage_order)."""
    N, C = x.shape[:2]
    in_sp = x.shape[2:]
    nd = len(kernel)
    order = range(nd - 1, -1, -1) if not storage_order else range(nd)
    sstr = [0] * nd
    acc = 1
    for i in order:
        sstr[i] = acc
        acc *= in_sp[i]
    base = (np.arange(N * C, dtype=np.int64) * math.prod(in_sp)).reshape((N, C) + (1,) * nd)
    for tap in np.ndindex(*kernel):
        flat = base
        valid = np.ones((1, 1) + tuple(out), dtype=bool)
        for i in range(nd):
            pos = np.arange(out[i]) * st[i] + tap[i] * dl[i] - pb[i]
            shp = [1] * (nd + 2)
            shp[2 + i] = out[i]
            flat = flat + (pos * sstr[i]).reshape(shp)
            valid = valid & ((pos >= 0) & (pos < in_sp[i])).reshape(shp)
        yield xp[_tap_slices(tap, dl, st, out)], valid, flat


@op("GlobalMaxPool", since=1)
def global_max_pool(ctx, x):
    if x.dtype == np.float32 and x.ndim <= 5 and _has_nan_or_neg_inf(x):
        from ..kernels.pool_mlas import mlas_max_pool
        return mlas_max_pool(x, x.shape[2:], [1] * (x.ndim - 2), [1] * (x.ndim - 2), [0] * (x.ndim - 2), [0] * (x.ndim - 2))
    return np.max(x, axis=tuple(range(2, x.ndim)), keepdims=True)


# --------------------------------------------------------------------------- AveragePool
@op("AveragePool", since=1)
def average_pool(ctx, x, *, auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, dilations=None, kernel_shape=None,
                 pads=None, strides=None):
    kernel, out, pb, pe, st, dl, extra = _geometry(x, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode,
                                                   "AveragePool")
    s = _window_sum(ctx, _pool_input(x, pb, pe, extra), kernel, out, st, dl)
    cnt = _counts(x.shape[2:], kernel, out, pb, pe, st, dl, extra, count_include_pad)
    return (s / cnt.astype(x.dtype)).astype(x.dtype, copy=False)


@op("GlobalAveragePool", since=1)
def global_average_pool(ctx, x):
    axes = tuple(range(2, x.ndim))
    n = math.prod(x.shape[2:])
    if ctx.plain and x.dtype in (np.float32, np.float64) and x.size and x.flags.c_contiguous:
        # Plane sums as one BLAS matrix-vector product with ones: 3x faster than np.sum over
        # the spatial axes on the SE blocks of PP-OCR models (same sums up to order).
        s = x.reshape(-1, n) @ np.ones(n, x.dtype)
        return (s / x.dtype.type(n)).reshape(x.shape[:2] + (1,) * len(axes))
    return (ctx.sum(x, axis=axes, keepdims=True) / np.asarray(n, x.dtype)).astype(x.dtype, copy=False)


# -------------------------------------------------------------------------------- LpPool
def _pow_p(x, p):
    a = np.abs(x)
    return a * a if p == 2 else a ** np.asarray(p, x.dtype)


def _root_p(s, p, dtype):
    return (np.sqrt(s) if p == 2 else s ** np.asarray(1.0 / p, dtype)).astype(dtype, copy=False)


@op("LpPool", since=1)
def lp_pool(ctx, x, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None, p=2, pads=None,
            strides=None):
    kernel, out, pb, pe, st, dl, extra = _geometry(x, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode,
                                                   "LpPool")
    s = _window_sum(ctx, _pool_input(_pow_p(x, p), pb, pe, extra), kernel, out, st, dl)
    return _root_p(s, p, x.dtype)


@op("GlobalLpPool", since=1)
def global_lp_pool(ctx, x, *, p=2):
    s = ctx.sum(_pow_p(x, p), axis=tuple(range(2, x.ndim)), keepdims=True)
    return _root_p(s, p, x.dtype)


# ------------------------------------------------------------------------------ MaxUnpool
@op("MaxUnpool", since=9)
def max_unpool(ctx, x, indices, output_shape=None, *, kernel_shape=None, pads=None, strides=None):
    nd = x.ndim - 2
    if not kernel_shape or len(kernel_shape) != nd:
        raise ModelError(f"MaxUnpool: kernel_shape must have {nd} values")
    st = list(strides) if strides else [1] * nd
    pd = list(pads) if pads else [0] * (2 * nd)
    if output_shape is not None:
        shape = tuple(int(v) for v in output_shape)
    else:
        shape = x.shape[:2] + tuple((n - 1) * s + k - pd[i] - pd[i + nd]
                                    for i, (n, s, k) in enumerate(zip(x.shape[2:], st, kernel_shape)))
    if indices.shape != x.shape:
        raise ExecutionError(f"MaxUnpool: indices shape {list(indices.shape)} differs from X {list(x.shape)}")
    y = np.zeros(shape, dtype=x.dtype)
    flat = indices.reshape(-1).astype(np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= y.size):
        raise ExecutionError("MaxUnpool: an index is out of range of the output")
    y.reshape(-1)[flat] = x.reshape(-1)
    return y


# ----------------------------------------------------------------------------- MaxRoiPool
@op("MaxRoiPool", since=1)
def max_roi_pool(ctx, x, rois, *, pooled_shape, spatial_scale=1.0):
    if x.ndim != 4 or rois.ndim != 2 or rois.shape[1] != 5:
        raise ExecutionError("MaxRoiPool needs X of rank 4 and rois of shape [num_rois, 5]")
    ph, pw = int(pooled_shape[0]), int(pooled_shape[1])
    N, C, H, W = x.shape
    y = np.zeros((rois.shape[0], C, ph, pw), dtype=x.dtype)

    def rnd(v):  # std::round: half away from zero
        return int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)

    for r in range(rois.shape[0]):
        b = int(rois[r, 0])
        if not 0 <= b < N:
            raise ExecutionError(f"MaxRoiPool: roi {r} names batch {b} of {N}")
        x1, y1, x2, y2 = (rnd(float(v) * spatial_scale) for v in rois[r, 1:])
        rh, rw = max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)
        # Bin edges in float32, as ORT computes them.
        bh, bw = np.float32(rh) / np.float32(ph), np.float32(rw) / np.float32(pw)
        for i in range(ph):
            hs = min(max(int(np.floor(np.float32(i) * bh)) + y1, 0), H)
            he = min(max(int(np.ceil(np.float32(i + 1) * bh)) + y1, 0), H)
            for j in range(pw):
                ws = min(max(int(np.floor(np.float32(j) * bw)) + x1, 0), W)
                we = min(max(int(np.ceil(np.float32(j + 1) * bw)) + x1, 0), W)
                if he > hs and we > ws:
                    y[r, :, i, j] = x[b, :, hs:he, ws:we].max(axis=(1, 2))
    return y
