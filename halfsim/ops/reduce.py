"""Reductions, ArgMax/ArgMin, CumSum and the softmax family.

Every floating running sum goes through ctx.sum (the precision plan may accumulate in fp16
there); composite steps are passed through ctx.round. Integer reductions stay exact in their
own dtype. Empty reductions give what ORT gives: 0 for the sums and the mean, 1 for the
product, -inf/+inf (the integer extremes for ints) for max/min and the log-sums."""
from __future__ import annotations

import numpy as np

from ..errors import ExecutionError, ModelError
from .elementwise import _float_to_int, down, is_float, up
from .registry import op, quiet


def _norm_axes(axes, ndim: int, what: str) -> tuple[int, ...]:
    out = []
    for a in axes:
        a = int(a)
        if not -ndim <= a < max(ndim, 1):
            raise ExecutionError(f"{what}: axis {a} is out of range for rank {ndim}")
        out.append(a % ndim if ndim else 0)
    return tuple(sorted(set(out)))


def _axes_of(x: np.ndarray, axes, noop: int, what: str):
    """None: identity (noop_with_empty_axes); otherwise a tuple of axes to reduce."""
    if axes is not None and not isinstance(axes, (list, tuple)):
        axes = np.asarray(axes).reshape(-1).tolist()
    if not axes:
        # ORT reduces over no axis at all: Max/Sum/Mean copy, L1/L2/SumSquare/LogSum still
        # apply their elementwise part
        return () if noop else tuple(range(x.ndim))
    return _norm_axes(axes, x.ndim, what)


def _int_result(r: np.ndarray, dt: np.dtype) -> np.ndarray:
    return np.asarray(r).astype(dt, copy=False)


def _first_along(x: np.ndarray, axes: tuple, keepdims: bool) -> np.ndarray:
    idx = tuple(slice(0, 1) if i in axes else slice(None) for i in range(x.ndim))
    f = x[idx]
    return f if keepdims else f.reshape([d for i, d in enumerate(f.shape) if i not in axes])


def _max_min(x: np.ndarray, axes: tuple, keepdims: bool, is_max: bool) -> np.ndarray:
    if x.size == 0 or any(x.shape[a] == 0 for a in axes):
        shape = [1 if i in axes else d for i, d in enumerate(x.shape)] if keepdims else \
            [d for i, d in enumerate(x.shape) if i not in axes]
        if x.dtype == np.bool_:
            fill = not is_max
        elif x.dtype.kind in "iu":
            info = np.iinfo(x.dtype)
            fill = info.min if is_max else info.max
        else:
            fill = -np.inf if is_max else np.inf
        return np.full(shape, fill, dtype=x.dtype)
    xf = up(x)
    r = (np.max if is_max else np.min)(xf, axis=axes, keepdims=keepdims)
    if xf.dtype.kind == "f":
        nan = np.isnan(r)
        if nan.any() and x.dtype in (np.float32, np.float64):
            # Which NaN survives depends on ORT's fold order per reduction path: replay it.
            from ..kernels.reduce_ort import ort_max_min
            return ort_max_min(x, axes, keepdims, is_max)
        if nan.any():
            # ORT keeps the running best with '>' (or '<'): a NaN wins only when it is the first
            # element of its reduction, later NaNs are skipped.
            r = (np.fmax if is_max else np.fmin).reduce(xf, axis=axes, keepdims=keepdims)
            r = np.where(np.isnan(_first_along(xf, axes, keepdims)), np.float32(np.nan).astype(xf.dtype), r)
    return down(np.asarray(r), x.dtype)


def _reduce(kind: str, ctx, x: np.ndarray, axes, keepdims: int, noop: int) -> np.ndarray:
    ax = _axes_of(x, axes, noop, "Reduce" + kind)
    kd = bool(keepdims)
    if kind in ("Max", "Min"):
        return _max_min(x, ax, kd, kind == "Max")
    if not is_float(x):
        return _reduce_int(kind, x, ax, kd)
    xf = up(x)
    n = 1
    for a in ax:
        n *= x.shape[a]
    with quiet():
        if kind == "Sum":
            r = ctx.sum(xf, ax, kd)
        elif kind == "Mean":
            s = ctx.round(ctx.sum(xf, ax, kd))
            r = s / s.dtype.type(n) if n else s  # ORT gives 0 for an empty mean
        elif kind == "Prod":
            r = np.prod(xf, axis=ax, keepdims=kd)
        elif kind == "L1":
            r = ctx.sum(ctx.round(np.abs(xf)), ax, kd)
        elif kind == "L2":
            r = np.sqrt(ctx.round(ctx.sum(ctx.round(xf * xf), ax, kd)))
        elif kind == "SumSquare":
            r = ctx.sum(ctx.round(xf * xf), ax, kd)
        elif kind == "LogSum":
            r = np.log(ctx.round(ctx.sum(xf, ax, kd)))
        elif kind == "LogSumExp":
            r = _logsumexp(ctx, xf, ax, kd)
        else:  # pragma: no cover
            raise ModelError(f"unknown reduction {kind}")
    return down(np.asarray(r), x.dtype)


def _logsumexp(ctx, xf: np.ndarray, ax: tuple, kd: bool) -> np.ndarray:
    if xf.size == 0:
        return np.log(ctx.sum(xf, ax, kd))
    m = np.max(xf, axis=ax, keepdims=True)
    m = np.where(np.isfinite(m), m, m.dtype.type(0))  # all -inf rows: log(0) = -inf, no NaN
    e = ctx.round(np.exp(ctx.round(xf - m)))
    r = np.log(ctx.round(ctx.sum(e, ax, True))) + m
    return r if kd else r.reshape([d for i, d in enumerate(r.shape) if i not in ax])


def _reduce_int(kind: str, x: np.ndarray, ax: tuple, kd: bool) -> np.ndarray:
    dt = x.dtype
    n = 1
    for a in ax:
        n *= x.shape[a]
    if kind in ("Sum", "Mean", "L1", "SumSquare", "Prod"):
        acc = np.int64 if dt.kind == "i" or dt == np.bool_ else np.uint64
        if kind == "L1":
            x = np.abs(x)
        elif kind == "SumSquare":
            x = np.multiply(x, x)
        if kind == "Prod":
            r = np.prod(x, axis=ax, keepdims=kd, dtype=acc)
        else:
            r = np.sum(x, axis=ax, keepdims=kd, dtype=acc)
        if kind == "Mean" and n:
            r = np.asarray(r)
            q = np.abs(r) // n
            r = np.where(r < 0, -q, q)  # truncating integer division, as C++
        return _int_result(r, dt)
    # L2 / LogSum / LogSumExp on integers: computed in double and truncated
    xd = x.astype(np.float64)
    with quiet():
        if kind == "L2":
            r = np.sqrt(np.sum(xd * xd, axis=ax, keepdims=kd))
        elif kind == "LogSum":
            r = np.log(np.sum(xd, axis=ax, keepdims=kd))
        elif xd.size == 0:
            r = np.log(np.sum(xd, axis=ax, keepdims=kd))
        else:
            # ORT runs max + log(sum(exp(x - max))) in the integer type, truncating each step
            m = np.max(xd, axis=ax, keepdims=True)
            e = np.trunc(np.exp(xd - m))
            r = np.trunc(np.log(np.sum(e, axis=ax, keepdims=True))) + m
            if not kd:
                r = r.reshape([d for i, d in enumerate(r.shape) if i not in ax])
    return _float_to_int(np.asarray(r), dt)


def _register(kind: str, input_since: int) -> None:
    name = "Reduce" + kind

    def attr_form(ctx, data, *, axes=None, keepdims=1):
        return _reduce(kind, ctx, data, axes, keepdims, 0)

    def input_form(ctx, data, axes=None, *, keepdims=1, noop_with_empty_axes=0):
        return _reduce(kind, ctx, data, axes, keepdims, noop_with_empty_axes)

    attr_form.__name__ = input_form.__name__ = name
    if kind in ("Sum", "Mean"):
        attr_form.specialize = lambda node, consts: _specialize_sum(kind, node, consts, attr_form, True)
        input_form.specialize = lambda node, consts: _specialize_sum(kind, node, consts, input_form, False)
    op(name, since=1)(attr_form)
    op(name, since=input_since)(input_form)


_F32 = np.dtype(np.float32)


def _specialize_sum(kind: str, node, consts: dict, op_fn, attr_axes: bool):
    """fp32 schedules, constant axes: a float32 ReduceSum/ReduceMean is np.add.reduce (what
    ctx.sum is there) and one division, with the axes normalized once per input shape; other
    dtypes and the no-axis identity go to the op (the general path's ~10 Python calls cost
    more than a streaming model's few hundred elements)."""
    if attr_axes:
        axes = node.attrs.get("axes")
    elif len(node.inputs) > 1 and node.inputs[1]:
        if 1 not in consts:
            return None
        axes = consts[1]
    else:
        axes = None
    noop = node.attrs.get("noop_with_empty_axes", 0)
    kd = bool(node.attrs.get("keepdims", 1))
    mean = kind == "Mean"
    cache: dict = {}

    def fn(ctx, x, *rest, **attrs):
        if x.dtype is not _F32:
            return op_fn(ctx, x, *rest, **attrs)
        p = cache.get(x.shape)
        if p is None:
            ax = _axes_of(x, axes, noop, "Reduce" + kind)
            n = 1
            for a in ax:
                n *= x.shape[a]
            if len(cache) >= 64:
                cache.clear()
            p = cache[x.shape] = (ax, _F32.type(n) if n else None)
        ax, n = p
        if not ax:
            return op_fn(ctx, x, *rest, **attrs)
        r = np.add.reduce(x, axis=ax, keepdims=kd)
        if mean and n is not None:
            r = r / n
        return r if type(r) is np.ndarray else np.asarray(r)
    return fn


for _k in ("Mean", "Max", "Min", "Prod", "L1", "L2", "LogSum", "LogSumExp", "SumSquare"):
    _register(_k, 18)
_register("Sum", 13)


# -- ArgMax / ArgMin ------------------------------------------------------------------------
def _arg(x: np.ndarray, axis: int, keepdims: int, last: int, is_max: bool) -> np.ndarray:
    ax = _norm_axes([axis], x.ndim, "ArgMax" if is_max else "ArgMin")[0] if x.ndim else 0
    if x.ndim and x.shape[ax] == 0:
        raise ExecutionError(f"{'ArgMax' if is_max else 'ArgMin'}: cannot reduce an empty axis {ax}")
    xf = up(x)
    if last:
        flipped = np.flip(xf, axis=ax)
        r = (np.argmax if is_max else np.argmin)(flipped, axis=ax, keepdims=True)
        r = xf.shape[ax] - 1 - r
    else:
        r = (np.argmax if is_max else np.argmin)(xf, axis=ax, keepdims=True)
    r = np.asarray(r, dtype=np.int64)
    # numpy's arg-extremes stop at a NaN, so a row holds NaN iff its index points at one (a
    # check the size of the output). ORT skips NaN unless it is the first element.
    if xf.dtype.kind == "f" and x.ndim and np.isnan(np.take_along_axis(xf, r, ax)).any():
        from .specials import arg_with_nan
        r = arg_with_nan(xf, np.isnan(xf), ax, last, is_max)
    return r if keepdims else np.squeeze(r, axis=ax)


@op("ArgMax", since=1)
def argmax(ctx, data, *, axis=0, keepdims=1, select_last_index=0):
    return _arg(data, axis, keepdims, select_last_index, True)


@op("ArgMin", since=1)
def argmin(ctx, data, *, axis=0, keepdims=1, select_last_index=0):
    return _arg(data, axis, keepdims, select_last_index, False)


# -- CumSum ---------------------------------------------------------------------------------
@op("CumSum", since=11)
def cumsum(ctx, x, axis, *, exclusive=0, reverse=0):
    a = np.asarray(axis).reshape(-1)
    if a.size != 1:
        raise ExecutionError("CumSum: axis must be a scalar")
    ax = _norm_axes([int(a[0])], x.ndim, "CumSum")[0]
    xf = up(x)
    if reverse:
        xf = np.flip(xf, axis=ax)
    # Sequential accumulation in the array's dtype. np.cumsum is slow along a non-last axis,
    # where one vectorized add per position does the same sums in the same order.
    if ax == x.ndim - 1 or x.shape[ax] < 2:
        r = np.cumsum(xf, axis=ax, dtype=xf.dtype)
    else:
        r = np.moveaxis(np.array(xf, copy=True), ax, 0)
        for i in range(1, r.shape[0]):
            np.add(r[i], r[i - 1], out=r[i])
        r = np.moveaxis(r, 0, ax)
    if exclusive:
        r = np.roll(r, 1, axis=ax)
        idx = [slice(None)] * x.ndim
        idx[ax] = 0
        r[tuple(idx)] = 0
    if reverse:
        r = np.flip(r, axis=ax)
    return down(np.ascontiguousarray(r), x.dtype)


# -- Softmax / LogSoftmax / Hardmax ---------------------------------------------------------
def _softmax_core(ctx, xf: np.ndarray, axis: int, log: bool) -> np.ndarray:
    with quiet():
        m = np.max(xf, axis=axis, keepdims=True) if xf.size else np.zeros((), xf.dtype)
        d = ctx.round(np.subtract(xf, m))
        if log:
            e = ctx.round(np.exp(d))
            s = ctx.round(ctx.sum(e, axis, True))
            return np.subtract(d, ctx.round(np.log(s)), out=d if d is not xf else None)
        e = np.exp(d, out=d if d is not xf else None)
        e = ctx.round(e)
        s = ctx.round(ctx.sum(e, axis, True))
        return np.divide(e, s, out=e if e is not xf else None)


def _flat2d(x: np.ndarray, axis: int) -> np.ndarray:
    """Opset < 13 semantics: coerce to 2-D [prod(shape[:axis]), prod(shape[axis:])]."""
    ax = axis % x.ndim if x.ndim else 0
    lead = int(np.prod(x.shape[:ax], dtype=np.int64))
    return x.reshape(lead, -1) if x.size else x.reshape(lead, int(np.prod(x.shape[ax:], dtype=np.int64)))


def _check_axis(x, axis, what):
    if x.ndim and not -x.ndim <= axis < x.ndim:
        raise ExecutionError(f"{what}: axis {axis} is out of range for rank {x.ndim}")


def _softmax(ctx, x, axis, log, old):
    _check_axis(x, axis, "LogSoftmax" if log else "Softmax")
    xf = up(x)
    if old:
        y = _softmax_core(ctx, _flat2d(xf, axis), 1, log).reshape(x.shape)
    else:
        y = _softmax_core(ctx, xf, axis if x.ndim else None, log)
    return down(y, x.dtype)


@op("Softmax", since=1)
def softmax1(ctx, x, *, axis=1):
    return _softmax(ctx, x, axis, False, True)


@op("Softmax", since=13)
def softmax13(ctx, x, *, axis=-1):
    return _softmax(ctx, x, axis, False, False)


@op("LogSoftmax", since=1)
def log_softmax1(ctx, x, *, axis=1):
    return _softmax(ctx, x, axis, True, True)


@op("LogSoftmax", since=13)
def log_softmax13(ctx, x, *, axis=-1):
    return _softmax(ctx, x, axis, True, False)


def _hardmax(x, axis, old):
    _check_axis(x, axis, "Hardmax")
    v = _flat2d(x, axis) if old else x
    ax = 1 if old else axis % x.ndim
    out = np.zeros(v.shape, dtype=x.dtype)
    if v.size:
        idx = np.argmax(up(v), axis=ax)
        if x.dtype == np.float32 and np.isnan(np.take_along_axis(v, np.expand_dims(idx, ax), ax)).any():
            # np.argmax stops at a row's first NaN; ORT's row maximum decides (ops/specials.py)
            from .specials import hardmax_rows
            rows = hardmax_rows(np.moveaxis(v, ax, -1).reshape(-1, v.shape[ax]))
            return np.moveaxis(rows.reshape(np.moveaxis(v, ax, -1).shape), -1, ax).reshape(x.shape)
        np.put_along_axis(out, np.expand_dims(idx, ax), 1, axis=ax)
    return out.reshape(x.shape)


@op("Hardmax", since=1)
def hardmax1(ctx, x, *, axis=1):
    return _hardmax(x, axis, True)


@op("Hardmax", since=13)
def hardmax13(ctx, x, *, axis=-1):
    return _hardmax(x, axis, False)
