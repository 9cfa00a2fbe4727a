"""Normalization ops: BatchNormalization (inference), LayerNormalization, InstanceNormalization,
GroupNormalization, LpNormalization, LRN, MeanVarianceNormalization.

Statistics go through ctx.sum (the precision plan's accumulate format); every internal step
(mean, centered values, variance, rsqrt, scale, shift) goes through ctx.round so a decomposed
plan rounds where an inlining runtime would. Means and variances are the centered two-pass
form, as ORT computes them."""
from __future__ import annotations

import numpy as np

from ..errors import ExecutionError, ModelError
from .elementwise import down, up
from .registry import op


def moments(ctx, xf: np.ndarray, axes: tuple, eps: float):
    """(mean, centered, inv_std) over `axes` with keepdims, each step rounded by ctx."""
    t = xf.dtype.type
    n = 1
    for a in axes:
        n *= xf.shape[a]
    n = max(n, 1)
    mean = ctx.round(ctx.round(ctx.sum(xf, axes, True)) / t(n))
    d = ctx.round(xf - mean)
    var = ctx.round(ctx.round(ctx.sum(ctx.round(d * d), axes, True)) / t(n))
    inv = ctx.round(t(1) / ctx.round(np.sqrt(ctx.round(var + t(eps)))))
    return mean, d, inv


def _stash_dtype(stash_type: int, x: np.ndarray) -> np.dtype:
    return np.dtype(np.float64) if stash_type == 11 else np.dtype(np.float32)


def _carrier(x: np.ndarray, stash_type: int) -> np.ndarray:
    # stash_type=1 computes in float32 whatever the input type (ORT keeps float64 for double)
    if stash_type == 11:
        return x.astype(np.float64, copy=False)
    return up(x)


def _affine(ctx, y, scale, bias):
    if scale is not None:
        y = ctx.round(y * up(scale).astype(y.dtype, copy=False))
    if bias is not None:
        y = y + up(bias).astype(y.dtype, copy=False)
    return y


# -- BatchNormalization (inference) -----------------------------------------------------------
def _bn(ctx, x, scale, b, mean, var, eps, spatial=1):
    if x.ndim < 2:
        raise ExecutionError(f"BatchNormalization: input must have rank >= 2, got shape {list(x.shape)}")
    xf = up(x)
    t = xf.dtype.type

    def per_channel(p):
        p = up(np.asarray(p)).astype(xf.dtype, copy=False)
        if p.ndim == 1 and spatial:
            if p.shape[0] != x.shape[1]:
                raise ExecutionError(f"BatchNormalization: parameter of length {p.shape[0]} for {x.shape[1]} channels")
            return p.reshape((-1,) + (1,) * (x.ndim - 2))
        return p  # spatial=0: one value per (C, D1, ..., Dn)

    sc, bb, mu, vv = (per_channel(p) for p in (scale, b, mean, var))
    # Folded form (as ORT's kernel): y = x * (scale / sqrt(var + eps)) + (B - mean * that)
    a = ctx.round(sc * ctx.round(t(1) / ctx.round(np.sqrt(ctx.round(vv + t(eps))))))
    c = ctx.round(bb - ctx.round(mu * a))
    y = ctx.round(xf * a)
    y += c
    return down(y, x.dtype)


@op("BatchNormalization", since=7)
def batchnorm7(ctx, x, scale, b, mean, var, *, epsilon=1e-5, momentum=0.9, spatial=1):
    return _bn(ctx, x, scale, b, mean, var, epsilon, spatial)


@op("BatchNormalization", since=9)
def batchnorm9(ctx, x, scale, b, mean, var, *, epsilon=1e-5, momentum=0.9):
    return _bn(ctx, x, scale, b, mean, var, epsilon)


@op("BatchNormalization", since=14)
def batchnorm14(ctx, x, scale, b, mean, var, *, epsilon=1e-5, momentum=0.9, training_mode=0):
    if training_mode:
        raise ModelError("BatchNormalization with training_mode=1 is not supported (halfsim runs inference)")
    return _bn(ctx, x, scale, b, mean, var, epsilon)


# -- LayerNormalization -----------------------------------------------------------------------
def layer_norm(ctx, x, scale, bias, axis: int, eps: float, stash_type: int, simplified: bool = False):
    """(Y, mean, inv_std) with mean/inv_std shaped like x with the normalized axes kept as 1."""
    r = x.ndim
    if not -r <= axis < max(r, 1):
        raise ExecutionError(f"LayerNormalization: axis {axis} is out of range for rank {r}")
    axis %= max(r, 1)
    axes = tuple(range(axis, r))
    xf = _carrier(x, stash_type)
    sd = _stash_dtype(stash_type, x)
    with np.errstate(all="ignore"):
        if simplified:
            t = xf.dtype.type
            n = max(int(np.prod([x.shape[a] for a in axes])), 1)
            ms = ctx.round(ctx.round(ctx.sum(ctx.round(xf * xf), axes, True)) / t(n))
            inv = ctx.round(t(1) / ctx.round(np.sqrt(ctx.round(ms + t(eps)))))
            y = ctx.round(xf * inv)
            mean = None
        else:
            mean, d, inv = moments(ctx, xf, axes, eps)
            y = ctx.round(d * inv)
        y = _affine(ctx, y, scale, bias)
    return (down(y, x.dtype), None if mean is None else down(mean, sd), down(inv, sd))


@op("LayerNormalization", since=1)  # ORT's contrib schema in the default domain, before opset 17
@op("LayerNormalization", since=17)
def layernorm(ctx, x, scale, bias=None, *, axis=-1, epsilon=1e-5, stash_type=1):
    return layer_norm(ctx, x, scale, bias, axis, epsilon, stash_type)


@op("SimplifiedLayerNormalization", since=1)  # ORT registers it in the default domain
def simplified_layernorm(ctx, x, scale, *, axis=-1, epsilon=1e-5, stash_type=1):
    y, _, inv = layer_norm(ctx, x, scale, None, axis, epsilon, stash_type, simplified=True)
    return y, inv


# -- InstanceNormalization / GroupNormalization -----------------------------------------------
@op("InstanceNormalization", since=6)
def instance_norm(ctx, x, scale, b, *, epsilon=1e-5):
    if x.ndim < 3:
        raise ExecutionError(f"InstanceNormalization: input must have rank >= 3, got shape {list(x.shape)}")
    xf = up(x)
    shp = (-1,) + (1,) * (x.ndim - 2)
    with np.errstate(all="ignore"):
        _, d, inv = moments(ctx, xf, tuple(range(2, x.ndim)), epsilon)
        y = _affine(ctx, ctx.round(d * inv), scale.reshape(shp), b.reshape(shp))
    return down(y, x.dtype)


def _group_norm(ctx, x, scale, bias, num_groups, eps, per_channel, stash_type=1):
    if x.ndim < 2:
        raise ExecutionError(f"GroupNormalization: input must have rank >= 2, got shape {list(x.shape)}")
    n, c = x.shape[:2]
    g = int(num_groups)
    if g <= 0 or c % g:
        raise ExecutionError(f"GroupNormalization: {c} channels cannot be split into num_groups={g}")
    xf = _carrier(x, stash_type)
    grouped = xf.reshape((n, g, c // g) + x.shape[2:])
    with np.errstate(all="ignore"):
        _, d, inv = moments(ctx, grouped, tuple(range(2, grouped.ndim)), eps)
        y = ctx.round(d * inv)
        if per_channel:  # opset 21: scale and bias have one value per channel
            y = y.reshape(x.shape)
            shp = (-1,) + (1,) * (x.ndim - 2)
        else:            # opset 18: one value per group
            shp = (-1,) + (1,) * (grouped.ndim - 2)
        y = _affine(ctx, y, scale.reshape(shp), bias.reshape(shp))
    return down(y.reshape(x.shape), x.dtype)


@op("GroupNormalization", since=18)
def group_norm18(ctx, x, scale, bias, *, num_groups, epsilon=1e-5):
    return _group_norm(ctx, x, scale, bias, num_groups, epsilon, per_channel=False)


@op("GroupNormalization", since=21)
def group_norm21(ctx, x, scale, bias, *, num_groups, epsilon=1e-5, stash_type=1):
    return _group_norm(ctx, x, scale, bias, num_groups, epsilon, per_channel=True, stash_type=stash_type)


# -- LpNormalization / LRN / MVN --------------------------------------------------------------
@op("LpNormalization", since=1)
def lp_norm(ctx, x, *, axis=-1, p=2):
    if p not in (1, 2):
        raise ModelError(f"LpNormalization: p must be 1 or 2, got {p}")
    if x.ndim and not -x.ndim <= axis < x.ndim:
        raise ExecutionError(f"LpNormalization: axis {axis} is out of range for rank {x.ndim}")
    xf = up(x)
    with np.errstate(all="ignore"):
        if p == 2:
            norm = ctx.round(np.sqrt(ctx.round(ctx.sum(ctx.round(xf * xf), axis, True))))
        else:
            norm = ctx.round(ctx.sum(ctx.round(np.abs(xf)), axis, True))
        y = xf / norm
        y[np.broadcast_to(norm == 0, y.shape)] = 0  # ORT leaves all-zero vectors at zero
    return down(y, x.dtype)


@op("LRN", since=1)
def lrn(ctx, x, *, size, alpha=1e-4, beta=0.75, bias=1.0):
    if x.ndim < 3:
        raise ExecutionError(f"LRN: input must have rank >= 3, got shape {list(x.shape)}")
    xf = up(x)
    t = xf.dtype.type
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    with np.errstate(all="ignore"):
        sq = ctx.round(xf * xf)
        pad = [(0, 0)] * x.ndim
        pad[1] = (lo, hi)
        win = np.lib.stride_tricks.sliding_window_view(np.pad(sq, pad), size, axis=1)
        ssum = ctx.round(ctx.sum(win, -1, False))
        den = ctx.round(np.power(ctx.round(t(bias) + ctx.round(ssum * t(alpha / size))), t(beta)))
        y = xf / den
    return down(y, x.dtype)


@op("MeanVarianceNormalization", since=9)
def mvn(ctx, x, *, axes=(0, 2, 3)):
    xf = up(x)
    ax = tuple(sorted({int(a) % x.ndim for a in axes}))
    if any(not -x.ndim <= int(a) < x.ndim for a in axes):
        raise ExecutionError(f"MeanVarianceNormalization: axes {list(axes)} out of range for rank {x.ndim}")
    with np.errstate(all="ignore"):
        _, d, inv = moments(ctx, xf, ax, 0.0)
        y = d * inv
    return down(y, x.dtype)
