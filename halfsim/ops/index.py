"""Indexing ops: gathers, scatters, NonZero, Unique, TopK.

Aliasing convention: ops never modify their inputs in place; scatters copy `data` first.
Negative indices count from the end of their axis (as ONNX allows); indices outside
[-dim, dim) raise ExecutionError rather than reading out of bounds.
"""
from __future__ import annotations

import numpy as np

from ..errors import ExecutionError
from .registry import op


def _axis(a: int, rank: int) -> int:
    if not -rank <= a < rank:
        raise ExecutionError(f"axis {a} is out of range for rank {rank}")
    return a + rank if a < 0 else a


def _norm_idx(idx: np.ndarray, dim, what: str) -> np.ndarray:
    """Indices with negatives wrapped, bounds-checked against `dim` (an int or a broadcastable array)."""
    idx = np.asarray(idx).astype(np.int64, copy=False)
    if idx.size == 0:
        return idx
    bad = (idx < -np.asarray(dim)) | (idx >= dim)
    if np.any(bad):
        raise ExecutionError(f"{what}: index {int(idx[bad].reshape(-1)[0])} is out of bounds")
    return np.where(idx < 0, idx + dim, idx)


# --- gathers --------------------------------------------------------------------------------

@op("Gather", since=1, data_movement=True)
def gather(ctx, data, indices, *, axis=0):
    ax = _axis(axis, data.ndim)
    if indices.ndim == 0 and indices.dtype.kind in "iu":
        # One index (shape arithmetic): Python int checks instead of array passes.
        i, n = int(indices), data.shape[ax]
        if not -n <= i < n:
            raise ExecutionError(f"Gather: index {i} is out of bounds")
        return np.asarray(np.take(data, i + n if i < 0 else i, axis=ax))
    idx = _norm_idx(indices, data.shape[ax], "Gather")
    return np.take(data, idx, axis=ax)


def _specialize_gather(node, consts: dict):
    """fp32 schedules, constant indices (shape arithmetic: Gather(Shape(x), [k])): the wrapped,
    bounds-checked indices are kept per size of the gathered axis."""
    if 1 not in consts or consts[1].ndim == 0:  # a scalar index has its own fast path
        return None
    indices = consts[1]
    axis = node.attrs.get("axis", 0)
    cache: dict = {}

    def fn(ctx, data, _indices, **attrs):
        ax = _axis(axis, data.ndim)
        dim = data.shape[ax]
        idx = cache.get(dim)
        if idx is None:
            if len(cache) >= 64:
                cache.clear()
            idx = cache[dim] = _norm_idx(indices, dim, "Gather")
        return np.take(data, idx, axis=ax)
    return fn


gather.specialize = _specialize_gather


@op("GatherElements", since=11, data_movement=True)
def gather_elements(ctx, data, indices, *, axis=0):
    ax = _axis(axis, data.ndim)
    if indices.ndim != data.ndim:
        raise ExecutionError("GatherElements: data and indices differ in rank")
    idx = _norm_idx(indices, data.shape[ax], "GatherElements")
    return np.take_along_axis(data, idx, axis=ax) if idx.size else np.empty(idx.shape, data.dtype)


def _nd_index(data: np.ndarray, indices: np.ndarray, batch_dims: int, what: str):
    """(data reshaped to [B, ...], index tuple, out shape) for GatherND/ScatterND."""
    b = batch_dims
    k = indices.shape[-1]
    if indices.ndim < 1 or k > data.ndim - b or data.shape[:b] != indices.shape[:b]:
        raise ExecutionError(f"{what}: indices shape {list(indices.shape)} does not fit data {list(data.shape)}")
    B = int(np.prod(data.shape[:b], dtype=np.int64))
    d = data.reshape((B,) + data.shape[b:])
    ind = indices.reshape(B, -1, k)
    comps = [_norm_idx(ind[..., j], data.shape[b + j], what) for j in range(k)]
    bidx = np.arange(B, dtype=np.int64)[:, None]
    out_shape = indices.shape[:-1] + data.shape[b + k:]
    return d, (bidx,) + tuple(comps), out_shape


@op("GatherND", since=11, data_movement=True)
def gather_nd(ctx, data, indices, *, batch_dims=0):
    d, ix, out_shape = _nd_index(data, indices, batch_dims, "GatherND")
    return d[ix].reshape(out_shape)


# --- scatters -------------------------------------------------------------------------------

_UFUNC = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _nan_scatter(out, ix, upd, is_max) -> bool:
    from .specials import scatter_max_min
    return scatter_max_min(out, ix, upd, is_max)


def _scatter_into(out: np.ndarray, ix: tuple, upd: np.ndarray, reduction: str, what: str) -> None:
    if reduction == "none":
        out[ix] = upd  # duplicates: the last update wins, as ORT's sequential loop does
    elif reduction in ("max", "min") and out.dtype.kind == "f" and _nan_scatter(out, ix, upd, reduction == "max"):
        pass  # ORT's sequential fold, NaN and signed zeros included (ops/specials.py)
    elif reduction in _UFUNC:
        _UFUNC[reduction].at(out, ix, upd)
    else:
        raise ExecutionError(f"{what}: unknown reduction {reduction!r}")


def _scatter_elements(data, indices, updates, axis, reduction, what="ScatterElements"):
    ax = _axis(axis, data.ndim)
    if indices.shape != updates.shape or indices.ndim != data.ndim:
        raise ExecutionError(f"{what}: indices {list(indices.shape)} and updates {list(updates.shape)} must match in shape and rank")
    out = np.array(data)
    if indices.size == 0:
        return out
    idx = _norm_idx(indices, data.shape[ax], what)
    ix = list(np.indices(indices.shape, sparse=True))
    for i in range(data.ndim):
        if i != ax and indices.shape[i] > data.shape[i]:
            raise ExecutionError(f"{what}: indices dimension {i} exceeds data")
    ix[ax] = idx
    _scatter_into(out, tuple(ix), updates, reduction, what)
    return out


@op("Scatter", since=9, data_movement=True)
def scatter(ctx, data, indices, updates, *, axis=0):
    return _scatter_elements(data, indices, updates, axis, "none", "Scatter")


@op("ScatterElements", since=11, data_movement=True)
def scatter_elements(ctx, data, indices, updates, *, axis=0):
    return _scatter_elements(data, indices, updates, axis, "none")


@op("ScatterElements", since=16)
def scatter_elements16(ctx, data, indices, updates, *, axis=0, reduction="none"):
    return _scatter_elements(data, indices, updates, axis, reduction)


def _scatter_nd(data, indices, updates, reduction):
    d, ix, out_shape = _nd_index(data, indices, 0, "ScatterND")
    if updates.shape != out_shape:
        raise ExecutionError(f"ScatterND: updates shape {list(updates.shape)} should be {list(out_shape)}")
    out = np.array(d)
    k = indices.shape[-1]
    upd = updates.reshape((1, -1) + data.shape[k:])
    _scatter_into(out, ix, upd, reduction, "ScatterND")
    return out.reshape(data.shape)


@op("ScatterND", since=11, data_movement=True)
def scatter_nd(ctx, data, indices, updates):
    return _scatter_nd(data, indices, updates, "none")


@op("ScatterND", since=16)
def scatter_nd16(ctx, data, indices, updates, *, reduction="none"):
    return _scatter_nd(data, indices, updates, reduction)


# --- selection ------------------------------------------------------------------------------

@op("NonZero", since=9)
def nonzero(ctx, x):
    if x.ndim == 0:  # ORT treats a scalar as shape [1]
        return np.zeros((1, int(bool(x))), dtype=np.int64)
    return np.array(np.nonzero(x), dtype=np.int64).reshape(x.ndim, -1)


@op("Unique", since=11, data_movement=True)
def unique(ctx, x, *, axis=None, sorted=1):
    if axis is None:
        flat = x.reshape(-1)
        u, first, inv, counts = np.unique(flat, return_index=True, return_inverse=True, return_counts=True)
    else:
        ax = _axis(axis, x.ndim)
        u, first, inv, counts = np.unique(x, return_index=True, return_inverse=True, return_counts=True, axis=ax)
    inv = inv.reshape(-1)
    if not sorted:  # order of first occurrence
        perm = np.argsort(first, kind="stable")
        rank = np.empty_like(perm)
        rank[perm] = np.arange(perm.size)
        u = np.take(u, perm, axis=0 if axis is None else _axis(axis, x.ndim))
        first, counts, inv = first[perm], counts[perm], rank[inv]
    i64 = np.int64
    return u, first.astype(i64), inv.astype(i64), counts.astype(i64)


def _topk(x: np.ndarray, k: int, axis: int, largest: int):
    ax = _axis(axis, x.ndim)
    n = x.shape[ax]
    if not 0 <= k <= n:
        raise ExecutionError(f"TopK: k={k} is outside [0, {n}]")
    if largest:
        # Descending values, ties by ascending index: stable-sort the reversed axis ascending,
        # then reverse the order (works for every dtype, unlike sorting -x).
        rev = np.flip(x, axis=ax)
        order = np.flip(np.argsort(rev, axis=ax, kind="stable"), axis=ax)
        order = (n - 1) - order
    else:
        order = np.argsort(x, axis=ax, kind="stable")
    idx = np.take(order, np.arange(k), axis=ax)
    return np.take_along_axis(x, idx, axis=ax), idx.astype(np.int64)


@op("TopK", since=1, data_movement=True)
def topk1(ctx, x, *, k, axis=-1):
    return _topk(x, k, axis, 1)


@op("TopK", since=10, data_movement=True)
def topk10(ctx, x, k, *, axis=-1):
    return _topk(x, int(np.asarray(k).reshape(-1)[0]), axis, 1)


@op("TopK", since=11, data_movement=True)
def topk11(ctx, x, k, *, axis=-1, largest=1, sorted=1):
    # sorted=0 leaves the order unspecified: sorted order is a valid choice.
    return _topk(x, int(np.asarray(k).reshape(-1)[0]), axis, largest)
