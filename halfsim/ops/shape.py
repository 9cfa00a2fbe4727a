"""Shape manipulation and tensor creation ops.

Aliasing convention: ops never modify their inputs in place, so an op may return a view of an
input (Reshape, Squeeze, Identity ...). Ops whose numpy result would be non-contiguous or
read-only (Transpose, Expand, stepped Slice) return a fresh contiguous array so that kernels
downstream see ordinary C-ordered arrays.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import ExecutionError
from .registry import op

INT64 = np.int64


def _ints(a) -> list[int]:
    """A 1-D int tensor (or list) as Python ints (exact, no int64 overflow in later arithmetic)."""
    if type(a) is list:  # attributes arrive as lists of ints already
        return [int(v) for v in a]
    # tolist() yields Python ints in one C call (iterating numpy scalars cost ~1 us each).
    a = np.asarray(a).reshape(-1)
    return a.tolist() if a.dtype.kind in "iu" else [int(v) for v in a.tolist()]


def _axis(a: int, rank: int, what: str = "axis") -> int:
    if not -rank <= a < max(rank, 1) or (rank == 0 and a not in (0, -1)):
        raise ExecutionError(f"{what} {a} is out of range for rank {rank}")
    return a + rank if a < 0 else a


def _axes(axes, rank: int) -> list[int]:
    out = [_axis(int(a), rank) for a in axes]
    if len(set(out)) != len(out):
        raise ExecutionError(f"repeated axes {list(axes)}")
    return out


# --- creation -------------------------------------------------------------------------------

def _str_array(v) -> np.ndarray:
    return np.array(v, dtype=object)


@op("Constant", since=1)
def constant(ctx, *, value=None, sparse_value=None, value_float=None, value_floats=None,
             value_int=None, value_ints=None, value_string=None, value_strings=None):
    if value is not None:
        return np.array(value)
    if sparse_value is not None:
        return np.array(sparse_value)
    if value_float is not None:
        return np.array(value_float, dtype=np.float32)
    if value_floats is not None:
        return np.array(value_floats, dtype=np.float32)
    if value_int is not None:
        return np.array(value_int, dtype=INT64)
    if value_ints is not None:
        return np.array(value_ints, dtype=INT64)
    if value_string is not None:
        return _str_array(value_string)
    if value_strings is not None:
        return _str_array(list(value_strings))
    raise ExecutionError("Constant has no value attribute")


@op("ConstantOfShape", since=9)
def constant_of_shape(ctx, shape, *, value=None):
    dims = _ints(shape)
    if any(d < 0 for d in dims):
        raise ExecutionError(f"ConstantOfShape: negative dimension in {dims}")
    v = np.zeros(1, np.float32) if value is None else np.asarray(value).reshape(-1)
    return np.full(dims, v[0], dtype=v.dtype)


@op("EyeLike", since=9)
def eye_like(ctx, x, *, dtype=None, k=0):
    if x.ndim != 2:
        raise ExecutionError(f"EyeLike needs a 2-D input, got shape {list(x.shape)}")
    from ..graph import np_dtype
    dt = x.dtype if dtype is None else np_dtype(dtype)
    return np.eye(x.shape[0], x.shape[1], k=k, dtype=dt)


@op("Range", since=11)
def range_(ctx, start, limit, delta):
    s, l, d = start.reshape(()), limit.reshape(()), delta.reshape(())
    dt = start.dtype
    if d == 0:
        raise ExecutionError("Range: delta is zero")
    if dt.kind in "iu":
        n = max(-(-(int(l) - int(s)) // int(d)), 0)
        return (int(s) + np.arange(n, dtype=np.int64) * int(d)).astype(dt)
    n = max(int(math.ceil((float(l) - float(s)) / float(d))), 0)
    # As ORT: start + i * delta evaluated in the tensor's own type.
    return (s + np.arange(n).astype(dt) * d).astype(dt)


@op("OneHot", since=9)
def one_hot(ctx, indices, depth, values, *, axis=-1):
    d = int(np.asarray(depth).reshape(-1)[0])
    if d <= 0:
        raise ExecutionError(f"OneHot: depth must be positive, got {d}")
    vals = np.asarray(values).reshape(-1)
    if vals.size != 2:
        raise ExecutionError("OneHot: values must have two elements [off, on]")
    rank = indices.ndim + 1
    ax = _axis(axis, rank)
    idx = indices.astype(np.int64) if indices.dtype.kind in "iub" else np.trunc(indices).astype(np.int64)
    idx = np.where(idx < 0, idx + d, idx)
    hot = np.expand_dims(idx, ax) == np.arange(d).reshape([-1 if i == ax else 1 for i in range(rank)])
    return np.where(hot, vals[1], vals[0]).astype(vals.dtype)


# --- shape queries --------------------------------------------------------------------------

@op("Identity", since=1, data_movement=True)
def identity(ctx, x):
    return x


@op("Shape", since=1)
def shape(ctx, x, *, start=0, end=None):
    dims = np.array(x.shape, dtype=INT64)
    return dims[start:end].copy()


@op("Size", since=1)
def size(ctx, x):
    return np.array(x.size, dtype=INT64)


# --- reshaping ------------------------------------------------------------------------------

def _reshape_dims(xshape: tuple, shape, allowzero: int) -> list[int]:
    dims = _ints(shape)
    if not allowzero:
        for i, d in enumerate(dims):
            if d == 0:
                if i >= len(xshape):
                    raise ExecutionError(f"Reshape: 0 at position {i} but input has rank {len(xshape)}")
                dims[i] = xshape[i]
    if dims.count(-1) > 1 or any(d < -1 for d in dims):
        raise ExecutionError(f"Reshape: invalid shape {_ints(shape)}")
    size = math.prod(xshape)
    if -1 in dims:
        known = math.prod(d for d in dims if d != -1)
        if known == 0 or size % known:
            raise ExecutionError(f"Reshape: cannot reshape {list(xshape)} to {_ints(shape)}")
        dims[dims.index(-1)] = size // known
    if math.prod(dims) != size:
        raise ExecutionError(f"Reshape: cannot reshape {list(xshape)} to {_ints(shape)}")
    return dims


def _reshape(x: np.ndarray, shape, allowzero: int) -> np.ndarray:
    return x.reshape(_reshape_dims(x.shape, shape, allowzero))


@op("Reshape", since=5, data_movement=True)
def reshape(ctx, x, shape):
    return _reshape(x, shape, 0)


@op("Reshape", since=14, data_movement=True)
def reshape14(ctx, x, shape, *, allowzero=0):
    return _reshape(x, shape, allowzero)


@op("Flatten", since=1, data_movement=True)
def flatten(ctx, x, *, axis=1):
    ax = axis + x.ndim if axis < 0 else axis
    if not 0 <= ax <= x.ndim:
        raise ExecutionError(f"Flatten: axis {axis} out of range for rank {x.ndim}")
    return x.reshape(math.prod(x.shape[:ax]), math.prod(x.shape[ax:]))


def _squeeze_dims(xshape: tuple, axes) -> list[int]:
    if axes is None:
        return [d for d in xshape if d != 1]
    ax = _axes(_ints(axes), len(xshape))
    for a in ax:
        if xshape[a] != 1:
            raise ExecutionError(f"Squeeze: dimension {a} of shape {list(xshape)} is not 1")
    return [d for i, d in enumerate(xshape) if i not in ax]


def _squeeze(x, axes):
    return x.reshape(_squeeze_dims(x.shape, axes))


@op("Squeeze", since=1, data_movement=True)
def squeeze(ctx, x, *, axes=None):
    return _squeeze(x, axes)


@op("Squeeze", since=13, data_movement=True)
def squeeze13(ctx, x, axes=None):
    return _squeeze(x, axes)


def _unsqueeze_dims(xshape: tuple, axes) -> list[int]:
    rank = len(xshape) + len(_ints(axes))
    ax = sorted(_axes(_ints(axes), rank))
    dims = list(xshape)
    for a in ax:
        dims.insert(a, 1)
    return dims


def _unsqueeze(x, axes):
    return x.reshape(_unsqueeze_dims(x.shape, axes))


@op("Unsqueeze", since=1, data_movement=True)
def unsqueeze(ctx, x, *, axes):
    return _unsqueeze(x, axes)


@op("Unsqueeze", since=13, data_movement=True)
def unsqueeze13(ctx, x, axes):
    return _unsqueeze(x, axes)


@op("Transpose", since=1, data_movement=True)
def transpose(ctx, x, *, perm=None):
    if perm is not None and sorted(perm) != list(range(x.ndim)):
        raise ExecutionError(f"Transpose: perm {perm} is not a permutation of rank {x.ndim}")
    return np.ascontiguousarray(np.transpose(x, perm))


@op("Concat", since=4, data_movement=True)
def concat(ctx, *inputs, axis):
    if not inputs:
        raise ExecutionError("Concat has no inputs")
    ax = _axis(axis, inputs[0].ndim)
    return np.concatenate(inputs, axis=ax)


def _split_sizes(dim: int, split, n_out: int, num_outputs=None) -> list[int]:
    if split is not None and len(_ints(split)):
        sizes = _ints(split)
        if sum(sizes) != dim or any(s < 0 for s in sizes):
            raise ExecutionError(f"Split: sizes {sizes} do not add up to dimension {dim}")
        return sizes
    if num_outputs is not None:
        chunk = -(-dim // num_outputs)
        sizes = [min(chunk, max(dim - i * chunk, 0)) for i in range(num_outputs)]
        return sizes
    if dim % n_out:
        raise ExecutionError(f"Split: dimension {dim} is not divisible into {n_out} outputs")
    return [dim // n_out] * n_out


def _split_index(xshape: tuple, axis, split, n_out: int, num_outputs=None) -> list[tuple]:
    ax = _axis(axis, len(xshape))
    sizes = _split_sizes(xshape[ax], split, n_out, num_outputs)
    idx = [slice(None)] * len(xshape)
    out, a = [], 0
    for n in sizes:
        idx[ax] = slice(a, a + n)
        out.append(tuple(idx))
        a += n
    return out


def _split_apply(x, index: list[tuple]) -> tuple:
    return tuple(np.ascontiguousarray(x[i]) for i in index)


def _split(ctx, x, axis, split, num_outputs=None):
    return _split_apply(x, _split_index(x.shape, axis, split, len(ctx.node.outputs), num_outputs))


@op("Split", since=2, data_movement=True)
def split2(ctx, x, *, axis=0, split=None):
    return _split(ctx, x, axis, split)


@op("Split", since=13, data_movement=True)
def split13(ctx, x, split=None, *, axis=0):
    return _split(ctx, x, axis, split)


@op("Split", since=18, data_movement=True)
def split18(ctx, x, split=None, *, axis=0, num_outputs=None):
    return _split(ctx, x, axis, split, num_outputs)


def _slice_index(xshape: tuple, starts, ends, axes, steps) -> tuple[tuple, bool]:
    """The numpy index of an ONNX Slice on shape xshape, and whether every step is 1."""
    starts, ends = _ints(starts), _ints(ends)
    axes = list(range(len(starts))) if axes is None else _ints(axes)
    steps = [1] * len(starts) if steps is None else _ints(steps)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ExecutionError("Slice: starts, ends, axes and steps differ in length")
    idx = [slice(None)] * len(xshape)
    for s, e, a, st in zip(starts, ends, _axes(axes, len(xshape)), steps):
        dim = xshape[a]
        if st == 0:
            raise ExecutionError("Slice: step is zero")
        s = s + dim if s < 0 else s
        e = e + dim if e < 0 else e
        if st > 0:
            s, e = min(max(s, 0), dim), min(max(e, 0), dim)
        else:
            s, e = min(max(s, 0), dim - 1), min(max(e, -1), dim - 1)
        idx[a] = slice(s, None if e < 0 else e, st)
    return tuple(idx), all(st == 1 for st in steps)


def _slice_apply(x, idx_unit):
    r = x[idx_unit[0]]
    return r if idx_unit[1] and r.flags.c_contiguous else np.ascontiguousarray(r)


def _slice(x, starts, ends, axes, steps):
    return _slice_apply(x, _slice_index(x.shape, starts, ends, axes, steps))


@op("Slice", since=1, data_movement=True)
def slice1(ctx, x, *, starts, ends, axes=None):
    return _slice(x, starts, ends, axes, None)


@op("Slice", since=10, data_movement=True)
def slice10(ctx, x, starts, ends, axes=None, steps=None):
    return _slice(x, starts, ends, axes, steps)


@op("Expand", since=8, data_movement=True)
def expand(ctx, x, shape):
    try:
        out = np.broadcast_shapes(x.shape, tuple(_ints(shape)))
    except ValueError:
        raise ExecutionError(f"Expand: shape {list(x.shape)} cannot broadcast to {_ints(shape)}") from None
    return np.array(np.broadcast_to(x, out))


@op("Tile", since=6, data_movement=True)
def tile(ctx, x, repeats):
    reps = _ints(repeats)
    if len(reps) != x.ndim or any(r < 0 for r in reps):
        raise ExecutionError(f"Tile: repeats {reps} do not fit rank {x.ndim}")
    return np.tile(x, reps)


# --- padding --------------------------------------------------------------------------------

def _pad(x: np.ndarray, pads: list[int], mode: str, value, axes=None) -> np.ndarray:
    return _pad_apply(x, _pad_plan(x.shape, pads, mode, value, axes))


def _pad_plan(shape: tuple, pads: list[int], mode: str, value, axes=None) -> tuple:
    """What Pad does to an input of `shape` (all checks here): (crop index, "copy") or
    (crop, "const", output shape, fill value, destination index) or (crop, "take", [(axis,
    source index per output position)]) for reflect/edge/wrap (one gather per padded axis;
    np.pad's generic machinery cost ~50 us a call)."""
    rank = len(shape)
    axes = list(range(rank)) if axes is None else _axes(_ints(axes), rank)
    if len(pads) != 2 * len(axes):
        raise ExecutionError(f"Pad: {len(pads)} pads for {len(axes)} axes")
    before, after = [0] * rank, [0] * rank
    for i, a in enumerate(axes):
        before[a], after[a] = pads[i], pads[i + len(axes)]
    # Negative pads crop first.
    crop = tuple(slice(-b if b < 0 else 0, shape[i] + a if a < 0 else None)
                 for i, (b, a) in enumerate(zip(before, after)))
    cshape = tuple(len(range(*c.indices(d))) for c, d in zip(crop, shape))
    widths = [(max(b, 0), max(a, 0)) for b, a in zip(before, after)]
    if mode == "constant":
        if not any(b or a for b, a in widths):
            return crop, "copy"
        v = None if value is None or np.asarray(value).size == 0 else np.asarray(value).reshape(-1)[0]
        return (crop, "const", [d + b + a for d, (b, a) in zip(cshape, widths)], v,
                tuple(slice(b, b + d) for d, (b, _) in zip(cshape, widths)))
    if mode in ("reflect", "edge", "wrap"):
        gathers = []
        for ax, (d, (b, a)) in enumerate(zip(cshape, widths)):
            if (b or a) and d == 0:
                raise ExecutionError(f"Pad: cannot {mode}-pad an empty dimension")
            if mode == "reflect" and (b or a) and (b >= d or a >= d):
                raise ExecutionError(f"Pad: reflect pads {b},{a} must be smaller than dimension {d}")
            if b or a:
                pos = np.arange(-b, d + a)
                if mode == "reflect":  # ... 2 1 | 0 1 2 .. d-1 | d-2 ...
                    pos = np.abs(pos)
                    pos = np.where(pos >= d, 2 * (d - 1) - pos, pos)
                elif mode == "edge":
                    pos = np.clip(pos, 0, d - 1)
                else:
                    pos = np.mod(pos, d)
                gathers.append((ax, pos.astype(np.intp)))
        return (crop, "take", gathers) if gathers else (crop, "copy")
    raise ExecutionError(f"Pad: unsupported mode {mode!r}")


def _pad_apply(x: np.ndarray, plan: tuple) -> np.ndarray:
    """Pad by a _pad_plan; never a view of the input."""
    x = x[plan[0]]
    kind = plan[1]
    if kind == "copy":
        return np.array(x)
    if kind == "const":
        v = np.zeros((), x.dtype) if plan[3] is None else plan[3]
        out = np.full(plan[2], v, dtype=x.dtype)
        out[plan[4]] = x
        return out
    for ax, idx in plan[2]:
        x = x.take(idx, axis=ax)
    return x


@op("Pad", since=2, data_movement=True)
def pad2(ctx, x, *, pads, mode="constant", value=0.0):
    return _pad(x, list(pads), mode, np.array(value, dtype=x.dtype) if x.dtype.kind != "O" else value)


@op("Pad", since=11, data_movement=True)
def pad11(ctx, x, pads, constant_value=None, *, mode="constant"):
    return _pad(x, _ints(pads), mode, constant_value)


@op("Pad", since=18, data_movement=True)
def pad18(ctx, x, pads, constant_value=None, axes=None, *, mode="constant"):
    return _pad(x, _ints(pads), mode, constant_value, axes)


@op("CenterCropPad", since=18, data_movement=True)
def center_crop_pad(ctx, x, shape, *, axes=None):
    target = _ints(shape)
    axes = list(range(x.ndim)) if axes is None else _axes(axes, x.ndim)
    if len(target) != len(axes):
        raise ExecutionError("CenterCropPad: shape and axes differ in length")
    out_shape = list(x.shape)
    src = [slice(None)] * x.ndim
    dst = [slice(None)] * x.ndim
    for a, t in zip(axes, target):
        d = x.shape[a]
        out_shape[a] = t
        if t <= d:  # crop: the extra element goes to the end
            s = (d - t) // 2
            src[a] = slice(s, s + t)
        else:  # pad: the extra element goes to the end
            s = (t - d) // 2
            dst[a] = slice(s, s + d)
    out = np.zeros(out_shape, dtype=x.dtype)
    out[tuple(dst)] = x[tuple(src)]
    return out


# --- block rearrangement --------------------------------------------------------------------

@op("DepthToSpace", since=1, data_movement=True)
def depth_to_space(ctx, x, *, blocksize, mode="DCR"):
    if x.ndim != 4:
        raise ExecutionError(f"DepthToSpace needs a 4-D input, got shape {list(x.shape)}")
    n, c, h, w = x.shape
    b = blocksize
    if c % (b * b):
        raise ExecutionError(f"DepthToSpace: channels {c} not divisible by blocksize^2 {b * b}")
    if mode == "DCR":
        y = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    elif mode == "CRD":
        y = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    else:
        raise ExecutionError(f"DepthToSpace: unknown mode {mode!r}")
    return np.ascontiguousarray(y).reshape(n, c // (b * b), h * b, w * b)


@op("SpaceToDepth", since=1, data_movement=True)
def space_to_depth(ctx, x, *, blocksize):
    if x.ndim != 4:
        raise ExecutionError(f"SpaceToDepth needs a 4-D input, got shape {list(x.shape)}")
    n, c, h, w = x.shape
    b = blocksize
    if h % b or w % b:
        raise ExecutionError(f"SpaceToDepth: spatial dims {h}x{w} not divisible by blocksize {b}")
    y = x.reshape(n, c, h // b, b, w // b, b).transpose(0, 3, 5, 1, 2, 4)
    return np.ascontiguousarray(y).reshape(n, c * b * b, h // b, w // b)


# --- selection ------------------------------------------------------------------------------

@op("Trilu", since=14, data_movement=True)
def trilu(ctx, x, k=None, *, upper=1):
    kk = 0 if k is None else int(np.asarray(k).reshape(-1)[0])
    if x.ndim < 2:
        raise ExecutionError("Trilu needs rank >= 2")
    return np.triu(x, kk) if upper else np.tril(x, kk)


@op("ReverseSequence", since=10, data_movement=True)
def reverse_sequence(ctx, x, sequence_lens, *, batch_axis=1, time_axis=0):
    if {batch_axis, time_axis} not in ({0, 1},):
        raise ExecutionError("ReverseSequence: batch_axis and time_axis must be 0 and 1")
    lens = _ints(sequence_lens)
    T = x.shape[time_axis]
    if len(lens) != x.shape[batch_axis] or any(l < 0 or l > T for l in lens):
        raise ExecutionError(f"ReverseSequence: invalid sequence_lens {lens}")
    out = np.array(x)
    for b, l in enumerate(lens):
        if time_axis == 0:
            out[:l, b] = x[:l, b][::-1]
        else:
            out[b, :l] = x[b, :l][::-1]
    return out


@op("Compress", since=9, data_movement=True)
def compress(ctx, x, condition, *, axis=None):
    cond = np.asarray(condition).reshape(-1).astype(bool)
    if axis is None:
        flat = x.reshape(-1)
        return flat[:cond.size][cond[:flat.size]].copy()
    ax = _axis(axis, x.ndim)
    return np.compress(cond[:x.shape[ax]], x, axis=ax)


# --- fp32 schedules: shape ops with constant parameters ---------------------------------------
# The interpreter's fp32 schedule calls `fn.specialize(node, constant inputs)` once per model.
# When every parameter of a Slice/Reshape/Squeeze/Unsqueeze is constant, the index or target
# shape depends on the input's shape alone: computed once per input shape (errors included,
# raised by the same code as the general op), then each call is one numpy indexing or reshape.

_MEMO_MAX = 64  # distinct input shapes kept per node (streaming models see one or a few)


def _by_shape(make, apply):
    cache: dict = {}

    def fn(ctx, x, *rest, **attrs):
        p = cache.get(x.shape)
        if p is None:
            if len(cache) >= _MEMO_MAX:
                cache.clear()
            p = cache[x.shape] = make(x.shape)
        return apply(x, p)
    return fn


def _params(node, consts: dict, n: int) -> list | None:
    """Inputs 1..n as constants (None where absent); None when one is computed at run time."""
    out = []
    for i in range(1, n + 1):
        t = node.inputs[i] if i < len(node.inputs) else ""
        if t and i not in consts:
            return None
        out.append(consts.get(i) if t else None)
    return out


def _reshape_fn(x, dims):
    return x.reshape(dims)


def _specialize_slice(node, consts):
    if "starts" in node.attrs:  # opset 1: attributes
        p = [node.attrs["starts"], node.attrs["ends"], node.attrs.get("axes"), None]
    else:
        p = _params(node, consts, 4)
    return None if p is None else _by_shape(lambda shp: _slice_index(shp, *p), _slice_apply)


def _specialize_reshape(node, consts):
    p = _params(node, consts, 1)
    if p is None or p[0] is None:
        return None
    return _by_shape(lambda shp: _reshape_dims(shp, p[0], node.attrs.get("allowzero", 0)), _reshape_fn)


def _axes_param(node, consts):
    """[axes] of Squeeze/Unsqueeze (attribute before opset 13, else input 1), None at run time."""
    return [node.attrs["axes"]] if "axes" in node.attrs else _params(node, consts, 1)


def _specialize_squeeze(node, consts):
    p = _axes_param(node, consts)
    return None if p is None else _by_shape(lambda shp: _squeeze_dims(shp, p[0]), _reshape_fn)


def _specialize_unsqueeze(node, consts):
    p = _axes_param(node, consts)
    return None if p is None or p[0] is None else _by_shape(lambda shp: _unsqueeze_dims(shp, p[0]), _reshape_fn)


def _specialize_split(node, consts):
    split = node.attrs.get("split") if "split" in node.attrs else None
    if split is None:
        p = _params(node, consts, 1)
        if p is None:
            return None
        split = p[0]
    axis, n_out, num = node.attrs.get("axis", 0), len(node.outputs), node.attrs.get("num_outputs")
    return _by_shape(lambda shp: _split_index(shp, axis, split, n_out, num), _split_apply)


def _specialize_pad(node, consts):
    """Constant pads (value, axes): the checks and gather indices worked out per input shape."""
    if "pads" in node.attrs:  # opset 2: attributes, the value cast to the input's dtype
        pads, value, axes, cast = list(node.attrs["pads"]), node.attrs.get("value", 0.0), None, True
    else:
        p = _params(node, consts, 3)
        if p is None or p[0] is None:
            return None
        pads, value, axes, cast = _ints(p[0]), p[1], p[2], False
    mode = node.attrs.get("mode", "constant")
    cache: dict = {}

    def fn(ctx, x, *rest, **attrs):
        key = (x.shape, x.dtype)
        plan = cache.get(key)
        if plan is None:
            v = np.array(value, dtype=x.dtype) if cast and x.dtype.kind != "O" else value
            plan = _pad_plan(x.shape, pads, mode, v, axes)
            if len(cache) >= _MEMO_MAX:
                cache.clear()
            cache[key] = plan
        return _pad_apply(x, plan)
    return fn


def _specialize_transpose(node, consts):
    """The permutation checked once per rank and kept as a tuple; each call one transpose."""
    perm = node.attrs.get("perm")
    fixed = None if perm is None else tuple(int(p) for p in perm)
    ranks: set = set()

    def fn(ctx, x, **attrs):
        if x.ndim not in ranks:
            if perm is not None and sorted(perm) != list(range(x.ndim)):
                raise ExecutionError(f"Transpose: perm {perm} is not a permutation of rank {x.ndim}")
            ranks.add(x.ndim)
        return np.ascontiguousarray(np.transpose(x, fixed))
    return fn


def _specialize_concat(node, consts):
    """The axis normalized once per rank."""
    axis = node.attrs.get("axis")
    if axis is None:
        return None
    axes: dict = {}

    def fn(ctx, *inputs, **attrs):
        if not inputs:
            raise ExecutionError("Concat has no inputs")
        ax = axes.get(inputs[0].ndim)
        if ax is None:
            ax = axes[inputs[0].ndim] = _axis(axis, inputs[0].ndim)
        return np.concatenate(inputs, axis=ax)
    return fn


for _f, _s in ((split2, _specialize_split), (split13, _specialize_split), (split18, _specialize_split),
               (slice1, _specialize_slice), (slice10, _specialize_slice), (reshape, _specialize_reshape),
               (reshape14, _specialize_reshape), (squeeze, _specialize_squeeze), (squeeze13, _specialize_squeeze),
               (unsqueeze, _specialize_unsqueeze), (unsqueeze13, _specialize_unsqueeze), (pad2, _specialize_pad),
               (pad11, _specialize_pad), (pad18, _specialize_pad), (transpose, _specialize_transpose),
               (concat, _specialize_concat)):
    _f.specialize = _s
