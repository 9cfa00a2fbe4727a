"""Sequence ops. A sequence is a Python list of arrays; ops never mutate their input list.
Ops return sequences inside a tuple because the interpreter reads a bare list as several
outputs. Registered as data movement: they move values and never compute new ones."""
from __future__ import annotations

import numpy as np
import onnx

from ..errors import ExecutionError
from .registry import op


def _position(pos, n: int, *, insert: bool, what: str) -> int:
    p = int(np.asarray(pos).reshape(-1)[0])
    hi = n if insert else n - 1
    if not -n <= p <= hi:
        raise ExecutionError(f"{what}: position {p} out of range for a sequence of length {n}")
    return p + n if p < 0 else p


def _seq(s, what: str) -> list:
    if not isinstance(s, list):
        raise ExecutionError(f"{what}: input is not a sequence")
    return s


@op("SequenceEmpty", since=11, data_movement=True)
def sequence_empty(ctx, *, dtype=onnx.TensorProto.FLOAT):
    return ([],)


@op("SequenceConstruct", since=11, data_movement=True)
def sequence_construct(ctx, *inputs):
    if len({x.dtype for x in inputs}) > 1:
        raise ExecutionError("SequenceConstruct inputs must share one element type")
    return (list(inputs),)


@op("SequenceInsert", since=11, data_movement=True)
def sequence_insert(ctx, seq, tensor, position=None):
    s = list(_seq(seq, "SequenceInsert"))
    if s and s[0].dtype != tensor.dtype:
        raise ExecutionError(f"SequenceInsert: tensor of type {tensor.dtype} into a sequence of {s[0].dtype}")
    p = len(s) if position is None else _position(position, len(s), insert=True, what="SequenceInsert")
    s.insert(p, tensor)
    return (s,)


@op("SequenceAt", since=11, data_movement=True)
def sequence_at(ctx, seq, position):
    s = _seq(seq, "SequenceAt")
    return s[_position(position, len(s), insert=False, what="SequenceAt")]


@op("SequenceErase", since=11, data_movement=True)
def sequence_erase(ctx, seq, position=None):
    s = list(_seq(seq, "SequenceErase"))
    if not s:
        raise ExecutionError("SequenceErase on an empty sequence")
    p = len(s) - 1 if position is None else _position(position, len(s), insert=False, what="SequenceErase")
    del s[p]
    return (s,)


@op("SequenceLength", since=11, data_movement=True)
def sequence_length(ctx, seq):
    return np.array(len(_seq(seq, "SequenceLength")), dtype=np.int64)


@op("ConcatFromSequence", since=11, data_movement=True)
def concat_from_sequence(ctx, seq, *, axis, new_axis=0):
    s = _seq(seq, "ConcatFromSequence")
    if not s:
        raise ExecutionError("ConcatFromSequence on an empty sequence")
    r = s[0].ndim + (1 if new_axis else 0)
    if not -r <= axis < r:
        raise ExecutionError(f"ConcatFromSequence: axis {axis} out of range for rank {r}")
    try:
        return np.stack(s, axis=axis) if new_axis else np.concatenate(s, axis=axis)
    except ValueError as e:
        raise ExecutionError(f"ConcatFromSequence: {e}") from None


@op("SplitToSequence", since=11, data_movement=True)
def split_to_sequence(ctx, x, split=None, *, axis=0, keepdims=1):
    if not -x.ndim <= axis < x.ndim:
        raise ExecutionError(f"SplitToSequence: axis {axis} out of range for rank {x.ndim}")
    axis %= x.ndim
    n = x.shape[axis]
    if split is None:
        parts = [np.take(x, [i], axis=axis) for i in range(n)]
        return ([p if keepdims else np.squeeze(p, axis) for p in parts],)
    sp = np.asarray(split).astype(np.int64)
    if sp.ndim == 0:
        size = int(sp)
        if size <= 0:
            raise ExecutionError(f"SplitToSequence: split size must be positive, got {size}")
        sizes = [size] * (n // size) + ([n % size] if n % size else [])
    else:
        sizes = [int(v) for v in sp.reshape(-1)]
        if any(v < 0 for v in sizes) or sum(sizes) != n:
            raise ExecutionError(f"SplitToSequence: split {sizes} does not sum to dimension {n}")
    bounds = np.cumsum(sizes)[:-1]
    parts = list(np.split(x, bounds, axis=axis))
    # The spec ignores keepdims once split is given, but ORT (and torch.unbind exports, which
    # emit a scalar split of 1 with keepdims=0) squeeze size-1 chunks of a scalar split.
    if sp.ndim == 0 and not keepdims and all(v == 1 for v in sizes):
        parts = [np.squeeze(p, axis) for p in parts]
    return (parts,)


@op("SequenceMap", since=17, data_movement=True)
def sequence_map(ctx, seq, *additional, body):
    s = _seq(seq, "SequenceMap")
    for a in additional:
        if isinstance(a, list) and len(a) != len(s):
            raise ExecutionError("SequenceMap: sequence inputs differ in length")
    names = [vi.name for vi in body.inputs]
    results: list[list] = [[] for _ in body.outputs]
    for i, x in enumerate(s):
        vals = [x] + [a[i] if isinstance(a, list) else a for a in additional]
        outs = ctx.run_graph(body, dict(zip(names, vals)))
        for k, o in enumerate(outs):
            results[k].append(o)
    return tuple(results)
