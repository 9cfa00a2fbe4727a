"""Resize (opsets 10-19) and Upsample (7-9).

Interpolation is separable: every resized axis is processed in turn with a per-axis table of
source indices and weights (2 taps for linear, 4 for cubic, a stretched window for antialias),
so the work is a few vectorized `take`s and multiply-adds; no Python loop over pixels.
Coordinates are computed in float32 with ORT's formulas (ORT is the oracle), so nearest-mode
tie cases land on the same source pixel.

Aliasing convention: inputs are never modified; the result is always a fresh array.
"""
from __future__ import annotations

import numpy as np

from ..errors import ExecutionError
from .registry import op

f32 = np.float32

_CTMS = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
         "tf_half_pixel_for_nn", "tf_crop_and_resize")


def _original_coords(ctm: str, n_out: int, n_in: int, scale: f32, roi_start: f32, roi_end: f32) -> np.ndarray:
    """Source coordinate of every output index along one axis (float32, unclamped)."""
    x = np.arange(n_out, dtype=f32)
    R, L, s = f32(n_out), f32(n_in), f32(scale)
    if ctm == "asymmetric":
        return x / s
    if ctm == "half_pixel":
        return (x + f32(0.5)) / s - f32(0.5)
    if ctm == "pytorch_half_pixel":
        return (x + f32(0.5)) / s - f32(0.5) if n_out > 1 else np.zeros(n_out, f32)
    if ctm == "tf_half_pixel_for_nn":
        return (x + f32(0.5)) / s
    if ctm == "align_corners":
        return np.zeros(n_out, f32) if n_out == 1 else x * (L - f32(1)) / (R - f32(1))
    if ctm == "tf_crop_and_resize":
        rs, re = f32(roi_start), f32(roi_end)
        if n_out > 1:
            return rs * (L - f32(1)) + (x * (re - rs) * (L - f32(1))) / (R - f32(1))
        return np.full(n_out, 0.5 * (float(rs) + float(re)) * (float(L) - 1.0), dtype=f32)
    if ctm == "half_pixel_symmetric":
        out_w = s * L
        adjustment = R / out_w
        center = L / f32(2)
        offset = center * (f32(1) - adjustment)
        return (float(offset) + (x.astype(np.float64) + 0.5) / float(s) - 0.5).astype(f32)
    raise ExecutionError(f"Resize: unsupported coordinate_transformation_mode {ctm!r}")


def _nearest_index(c: np.ndarray, mode: str, downsample: bool) -> np.ndarray:
    if mode == "simple":  # Resize-10 / Upsample: ceil when downsampling, truncate otherwise
        return np.ceil(c).astype(np.int64) if downsample else np.trunc(c).astype(np.int64)
    if mode == "round_prefer_floor":
        half = c == np.trunc(c) + f32(0.5)
        return np.where(half, np.floor(c), _round_half_away(c)).astype(np.int64)
    if mode == "round_prefer_ceil":
        return _round_half_away(c).astype(np.int64)
    if mode == "floor":
        return np.floor(c).astype(np.int64)
    if mode == "ceil":
        return np.ceil(c).astype(np.int64)
    raise ExecutionError(f"Resize: unsupported nearest_mode {mode!r}")


def _round_half_away(c: np.ndarray) -> np.ndarray:
    """C's std::round: halves away from zero (numpy rounds them to even)."""
    return np.sign(c) * np.floor(np.abs(c) + f32(0.5))


def _cubic_coeffs(s: np.ndarray, a: f32) -> np.ndarray:
    """Keys cubic coefficients for taps -1, 0, 1, 2 at fractional offset s: shape (n, 4)."""
    s = np.abs(s).astype(f32)
    a = f32(a)
    one, two = f32(1), f32(2)
    s1, s2 = s + one, one - s
    s3 = two - s
    c0 = ((a * s1 - f32(5) * a) * s1 + f32(8) * a) * s1 - f32(4) * a
    c1 = ((a + two) * s - (a + f32(3))) * s * s + one
    c2 = ((a + two) * s2 - (a + f32(3))) * s2 * s2 + one
    c3 = ((a * s3 - f32(5) * a) * s3 + f32(8) * a) * s3 - f32(4) * a
    return np.stack([c0, c1, c2, c3], axis=1)


def _aa_filter(x: np.ndarray, mode: str, a: f32) -> np.ndarray:
    ax = np.abs(x).astype(f32)
    if mode == "linear":
        return np.where(ax < 1, f32(1) - ax, f32(0)).astype(f32)
    a = f32(a)
    near = ((a + f32(2)) * ax - (a + f32(3))) * ax * ax + f32(1)
    far = (((ax - f32(5)) * ax + f32(8)) * ax - f32(4)) * a
    return np.where(ax < 1, near, np.where(ax < 2, far, f32(0))).astype(f32)


def _axis_taps(mode, ctm, nearest_mode, n_in, n_out, scale, roi_s, roi_e, cubic_a, exclude_outside, antialias,
               opset):
    """(indices (n_out, K), weights (n_out, K) or None, out-of-range mask or None) for one axis."""
    identity = scale == f32(1)  # ORT skips the transform when an axis is not scaled
    c = np.arange(n_out, dtype=f32) if identity else _original_coords(ctm, n_out, n_in, scale, roi_s, roi_e)
    outside = None
    if ctm == "tf_crop_and_resize":
        outside = (c < 0) | (c > f32(n_in - 1))
    if mode == "nearest":
        idx = _nearest_index(c, nearest_mode, bool(scale < 1))
        return np.clip(idx, 0, n_in - 1)[:, None], None, outside
    if antialias:
        inv = f32(1) / f32(scale)  # >1 when downsampling: the filter stretches
        support = f32(1 if mode == "linear" else 2)
        if inv >= 1:
            support = support * inv
        wscale = f32(1) / inv if inv >= 1 else f32(1)
        center = c + f32(0.5)
        xmin = np.floor(center - support + f32(0.5)).astype(np.int64)
        xmax = np.floor(center + support + f32(0.5)).astype(np.int64)
        K = int(np.max(xmax - xmin)) if n_out else 1
        taps = xmin[:, None] + np.arange(K)[None, :]
        valid = taps < xmax[:, None]
        w = np.where(valid, _aa_filter((taps.astype(f32) - center[:, None] + f32(0.5)) * wscale, mode, cubic_a), f32(0))
        inside = (taps >= 0) & (taps < n_in)
        if exclude_outside:
            w = np.where(inside, w, f32(0))
        total = np.sum(w, axis=1, dtype=f32)[:, None]
        w = (w * np.where(total == 0, f32(1), f32(1) / total)).astype(f32)
        # Without exclude_outside the weight of taps outside the image folds onto the edge pixel.
        return np.clip(taps, 0, n_in - 1), w, outside
    if mode == "linear":
        cc = np.clip(c, f32(0), f32(n_in - 1))
        i1 = np.minimum(cc.astype(np.int64), n_in - 1)
        i2 = np.minimum(i1 + 1, n_in - 1)
        d1 = np.abs(cc - i1.astype(f32))
        d2 = np.abs(cc - i2.astype(f32))
        same = i1 == i2
        d1 = np.where(same, f32(0.5), d1)
        d2 = np.where(same, f32(0.5), d2)
        return np.stack([i1, i2], 1), np.stack([d2, d1], 1).astype(f32), outside
    if mode == "cubic":
        fl = np.floor(c)
        base = fl.astype(np.int64)
        coeffs = _cubic_coeffs(c - fl, cubic_a)
        taps = base[:, None] + np.arange(-1, 3)[None, :]
        if exclude_outside:
            coeffs = np.where((taps >= 0) & (taps < n_in), coeffs, f32(0))
            coeffs = (coeffs / np.sum(coeffs, axis=1, dtype=f32)[:, None]).astype(f32)
        return np.clip(taps, 0, n_in - 1), coeffs.astype(f32), outside
    raise ExecutionError(f"Resize: unsupported mode {mode!r}")


def _apply_axis(y: np.ndarray, axis: int, idx: np.ndarray, w: np.ndarray | None, acc) -> np.ndarray:
    if w is None:
        return np.take(y, idx[:, 0], axis=axis)
    shape = [1] * y.ndim
    shape[axis] = -1
    out = None
    for k in range(idx.shape[1]):
        term = np.take(y, idx[:, k], axis=axis) * w[:, k].astype(acc).reshape(shape)
        out = term if out is None else out + term
    return out


def _repeat_factor(idx: np.ndarray, n_in: int) -> int:
    """k when the nearest indices are 0,..,0, 1,..,1, ... each k times (an integer upsample),
    else 0."""
    k = idx.size // n_in if n_in else 0
    if k < 1 or k * n_in != idx.size or not np.array_equal(idx, np.arange(idx.size) // k):
        return 0
    return k


def _repeat_last2(x: np.ndarray, kh: int, kw: int) -> np.ndarray:
    """x with every element of its last two axes repeated (kh, kw) times: each column copy
    writes one phase of the widened rows, then whole rows are copied (long contiguous
    copies instead of two gathers: 2x faster on det's 2x upsamples)."""
    *lead, H, W = x.shape
    out = np.empty(tuple(lead) + (H, kh, W, kw), dtype=x.dtype)
    for b in range(kw):
        out[..., 0, :, b] = x
    for a in range(1, kh):
        out[..., a, :, :] = out[..., 0, :, :]
    return out.reshape(tuple(lead) + (H * kh, W * kw))


def _plan(shape: tuple, roi, scales, sizes, mode, ctm, nearest_mode, cubic_a, exclude_outside, antialias, axes,
          policy, opset):
    """(in_dims, out_dims, {axis: (indices, weights, outside)}, (kh, kw) of an integer nearest
    upsample of the last two axes or None) for an input shape: the part of Resize that
    depends on the shape and parameters only."""
    r = len(shape)
    if mode not in ("nearest", "linear", "cubic"):
        raise ExecutionError(f"Resize: unsupported mode {mode!r}")
    if antialias and mode == "nearest":
        raise ExecutionError("Resize: antialias needs linear or cubic mode")
    ax = list(range(r)) if axes is None else [a + r if a < 0 else a for a in axes]
    if any(not 0 <= a < r for a in ax) or len(set(ax)) != len(ax):
        raise ExecutionError(f"Resize: invalid axes {axes} for rank {r}")
    in_dims = list(shape)
    full_scales = [f32(1)] * r
    out_dims = list(in_dims)
    if sizes is not None and np.asarray(sizes).size:
        sz = [int(v) for v in np.asarray(sizes).reshape(-1)]
        if len(sz) != len(ax):
            raise ExecutionError(f"Resize: {len(sz)} sizes for {len(ax)} axes")
        for a, s in zip(ax, sz):
            if s < 0:
                raise ExecutionError(f"Resize: negative output size {s}")
            if in_dims[a] == 0 and s != 0:
                raise ExecutionError("Resize: cannot resize an empty dimension to a non-empty one")
            out_dims[a] = s
            full_scales[a] = f32(1) if in_dims[a] == 0 else f32(s) / f32(in_dims[a])
        if policy != "stretch":
            if policy not in ("not_larger", "not_smaller"):
                raise ExecutionError(f"Resize: unknown keep_aspect_ratio_policy {policy!r}")
            pick = min if policy == "not_larger" else max
            s = pick(full_scales[a] for a in ax)
            for a in ax:
                full_scales[a] = s
                out_dims[a] = int(np.round(np.float64(s * f32(in_dims[a]))))
    elif scales is not None and np.asarray(scales).size:
        sc = np.asarray(scales, dtype=f32).reshape(-1)
        if len(sc) != len(ax):
            raise ExecutionError(f"Resize: {len(sc)} scales for rank {r}" if axes is None
                                 else f"Resize: {len(sc)} scales for {len(ax)} axes")
        for a, s in zip(ax, sc):
            if not s > 0:
                raise ExecutionError(f"Resize: scale {s} must be positive")
            full_scales[a] = f32(s)
            out_dims[a] = int(f32(s) * f32(in_dims[a]))
    else:
        raise ExecutionError("Resize: one of scales and sizes must be given")

    roi_full = [0.0] * r + [1.0] * r
    if ctm == "tf_crop_and_resize" and roi is not None and np.asarray(roi).size:
        rv = np.asarray(roi, dtype=f32).reshape(-1)
        if len(rv) != 2 * len(ax):
            raise ExecutionError(f"Resize: roi has {len(rv)} values, expected {2 * len(ax)}")
        for i, a in enumerate(ax):
            roi_full[a], roi_full[r + a] = rv[i], rv[len(ax) + i]

    taps = {}
    if out_dims == in_dims or 0 in in_dims or 0 in out_dims:
        return in_dims, out_dims, taps, None
    for a in range(r):
        if full_scales[a] == f32(1) and (r > 1 or mode != "nearest"):
            continue  # as ORT: an unscaled axis maps every index to itself, whatever the transform
        taps[a] = _axis_taps(mode, ctm, nearest_mode, in_dims[a], out_dims[a], full_scales[a],
                             roi_full[a], roi_full[r + a], cubic_a, exclude_outside, antialias, opset)
        for v in taps[a]:
            if v is not None:
                v.flags.writeable = False  # cached: shared by later calls
    rep = None
    if mode == "nearest" and r >= 2 and set(taps) == {r - 2, r - 1} and all(t[2] is None for t in taps.values()):
        k = [_repeat_factor(taps[a][0][:, 0], in_dims[a]) for a in (r - 2, r - 1)]
        rep = (k[0], k[1]) if k[0] and k[1] else None
    return in_dims, out_dims, taps, rep


_PLANS: dict = {}  # _plan results by shape and parameters (models resize the same shapes every run)


def _arr_key(v):
    if v is None:
        return None
    v = np.asarray(v)
    return v.dtype.str, v.shape, v.tobytes()


def _resize(x: np.ndarray, roi, scales, sizes, *, mode="nearest", ctm="half_pixel",
            nearest_mode="round_prefer_floor", cubic_a=-0.75, exclude_outside=0, extrapolation_value=0.0,
            antialias=0, axes=None, policy="stretch", opset=19) -> np.ndarray:
    key = (x.shape, mode, ctm, nearest_mode, cubic_a, exclude_outside, antialias,
           None if axes is None else tuple(int(a) for a in axes), policy, opset,
           _arr_key(roi), _arr_key(scales), _arr_key(sizes))
    plan = _PLANS.get(key)
    if plan is None:
        plan = _plan(x.shape, roi, scales, sizes, mode, ctm, nearest_mode, cubic_a, exclude_outside, antialias,
                     axes, policy, opset)
        if len(_PLANS) >= 256:
            _PLANS.clear()
        _PLANS[key] = plan
    in_dims, out_dims, taps, rep = plan
    r = x.ndim
    if out_dims == in_dims:
        return np.array(x)  # ORT copies the input when no dimension changes
    if x.size == 0 or 0 in out_dims:
        return np.zeros(out_dims, dtype=x.dtype)
    if rep is not None:
        return _repeat_last2(x, *rep)
    acc = np.float64 if x.dtype == np.float64 else f32
    y = x if mode == "nearest" else x.astype(acc)
    outside_any = None
    for a, (idx, w, outside) in taps.items():
        y = _apply_axis(y, a, idx, w, acc)
        if outside is not None and outside.any():
            shape = [1] * r
            shape[a] = -1
            m = outside.reshape(shape)
            outside_any = m if outside_any is None else (outside_any | m)
    if outside_any is not None:
        y = np.where(np.broadcast_to(outside_any, y.shape), np.asarray(extrapolation_value).astype(y.dtype), y)
    if y.dtype != x.dtype:
        if x.dtype.kind in "iu":
            y = np.rint(y) if antialias else np.trunc(y)
            info = np.iinfo(x.dtype)
            y = np.clip(y, info.min, info.max)
        y = y.astype(x.dtype)
    return np.ascontiguousarray(y)


# Resize is registered data_movement=False: linear/cubic produce new values. Nearest outputs are
# copies of inputs, so re-rounding them is a no-op.

@op("Resize", since=10)
def resize10(ctx, x, scales, *, mode="nearest"):
    return _resize(x, None, scales, None, mode=mode, ctm="asymmetric", nearest_mode="simple", opset=10)


@op("Resize", since=11)
def resize11(ctx, x, roi=None, scales=None, sizes=None, *, coordinate_transformation_mode="half_pixel",
             cubic_coeff_a=-0.75, exclude_outside=0, extrapolation_value=0.0, mode="nearest",
             nearest_mode="round_prefer_floor"):
    return _resize(x, roi, scales, sizes, mode=mode, ctm=coordinate_transformation_mode, nearest_mode=nearest_mode,
                   cubic_a=cubic_coeff_a, exclude_outside=exclude_outside,
                   extrapolation_value=extrapolation_value, opset=11)


@op("Resize", since=18)
def resize18(ctx, x, roi=None, scales=None, sizes=None, *, antialias=0, axes=None,
             coordinate_transformation_mode="half_pixel", cubic_coeff_a=-0.75, exclude_outside=0,
             extrapolation_value=0.0, keep_aspect_ratio_policy="stretch", mode="nearest",
             nearest_mode="round_prefer_floor"):
    if coordinate_transformation_mode == "tf_half_pixel_for_nn":
        raise ExecutionError("Resize: tf_half_pixel_for_nn was removed in opset 13")
    return _resize(x, roi, scales, sizes, mode=mode, ctm=coordinate_transformation_mode, nearest_mode=nearest_mode,
                   cubic_a=cubic_coeff_a, exclude_outside=exclude_outside, extrapolation_value=extrapolation_value,
                   antialias=antialias, axes=axes, policy=keep_aspect_ratio_policy, opset=18)


def _upsample(x, scales, mode):
    sc = np.asarray(scales, dtype=f32).reshape(-1)
    if len(sc) != x.ndim or np.any(sc < 1):
        raise ExecutionError(f"Upsample: scales {sc.tolist()} must be >= 1, one per dimension of rank {x.ndim}")
    if mode == "bilinear":
        mode = "linear"
    return _resize(x, None, sc, None, mode=mode, ctm="asymmetric", nearest_mode="simple", opset=9)


@op("Upsample", since=7)
def upsample7(ctx, x, *, scales, mode="nearest"):
    return _upsample(x, scales, mode)


@op("Upsample", since=9)
def upsample9(ctx, x, scales, *, mode="nearest"):
    return _upsample(x, scales, mode)
