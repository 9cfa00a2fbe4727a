"""Small 1-D convolutions of streaming models (silero's STFT and encoder convs on 4-sample
frames, DTLN's pointwise convs on one frame) for the interpreter's fp32 schedules.

    from halfsim.kernels.conv_small import specialize_conv1d
    fn = specialize_conv1d(w, b, attrs, base)   # None when the weights do not fit

The general Conv path (ops/conv.py) spends most of a tiny conv's ~20-40 us in numpy calls
around its one GEMM: geometry checks, a padded copy, a strided window view, a 4-D batched
matmul through the split matmul, broadcasting the bias. Here, per input shape, the im2col
gather is one precomputed index array (padding taps read a zero appended to the flattened
input), and the product is the same 2-D GEMM W(M, C*k) @ cols(C*k, O) with the bias added in
place, so the outputs are bit-equal to the general path's (tests). Pointwise convs of one
position keep that path's (1, C) @ W^T form, for the same reason. Pure numpy: streaming
models never start numba (its LLVM would triple their memory)."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

# Multiply-adds below which the general path is one serial im2col GEMM (its parallel tiles
# start at ops/conv._PAR_WORK = 2**21): only there are the two paths the same arithmetic.
_MAX_WORK = 1 << 21
_MAX_COLS = 1 << 16  # im2col elements (256 KiB) up to which the gather index is kept per shape
_SHAPES = 16  # input shapes remembered per conv (then it starts again)


def specialize_conv1d(w: Any, b: Any, attrs: dict, base: Callable) -> Callable | None:
    """A Conv step for constant float32 weights (M, C, k) of a 1-D, group-1 conv: batch-1
    float32 inputs of small work take the gather + GEMM route, everything else (and every
    error, raised by `base` on the first call with a shape) goes to `base`."""
    if not isinstance(w, np.ndarray) or w.dtype != np.float32 or w.ndim != 3 or int(attrs.get("group", 1)) != 1:
        return None
    if b is not None and (not isinstance(b, np.ndarray) or b.dtype != np.float32 or b.shape != (w.shape[0],)):
        return None
    M, C, k = w.shape
    wm = np.ascontiguousarray(w.reshape(M, C * k))
    wmt = wm.T  # the pointwise form multiplies by the transposed view, as ops/conv does
    bias = None if b is None else b.reshape(M, 1)
    bias_row = None if b is None else b.reshape(1, M)
    plans: dict = {}
    zero = np.zeros(1, np.float32)

    def plan(x, args, kw):
        # The general op on the first input of this shape: it checks everything and gives the
        # geometry's ground truth (output length); errors are its own.
        y = base(*args, **kw)
        if len(plans) >= _SHAPES:
            plans.clear()
        N, C_, L = x.shape
        O = y.shape[2]
        p = None
        if N == 1 and C_ == C and M * C * k * O < _MAX_WORK and C * k * O <= _MAX_COLS and O > 0 and L > 0:
            p = _gather_plan(L, O, attrs, k, C)
        plans[x.shape] = p
        return y

    def fn(ctx, x, w_, b_=None, **kw):
        # Other weights (a fused BatchNormalization's folded ones) or inputs: the general op.
        if w_ is not w or b_ is not b or type(x) is not np.ndarray or x.dtype != np.float32 or x.ndim != 3:
            return base(ctx, x, w_, b_, **kw)
        p = plans.get(x.shape, False)
        if p is False:
            return plan(x, (ctx, x, w_, b_), kw)
        if p is None:
            return base(ctx, x, w_, b_, **kw)
        idx, O, pointwise, padded = p
        if pointwise:  # k == 1, one output position: (1, C) @ W^T
            y = np.matmul(x.reshape(1, C), wmt)
            if bias_row is not None:
                y += bias_row
            return y.reshape(1, M, 1)
        flat = x.reshape(-1)  # a copy only for a non-contiguous input
        if padded:
            flat = np.concatenate((flat, zero))
        y = np.matmul(wm, flat.take(idx))
        if bias is not None:
            y += bias
        return y.reshape(1, M, O)
    return fn


def _gather_plan(L: int, O: int, attrs: dict, k: int, C: int):
    """(index (C*k, O) into the flattened input + one zero slot, O, pointwise, needs the zero
    slot) for input length L, or None for geometries left to the general path."""
    auto = attrs.get("auto_pad", "NOTSET")
    pads = [0, 0] if auto == "VALID" else [int(p) for p in (attrs.get("pads") or [0, 0])]
    if auto not in ("NOTSET", "VALID") or len(pads) != 2 or min(pads) < 0:
        return None  # SAME_* and cropping pads: left to the general path
    s = int((attrs.get("strides") or [1])[0])
    d = int((attrs.get("dilations") or [1])[0])
    pb = pads[0]
    if k == 1 and O == 1 and L == 1 and not any(pads):
        return None, 1, True, False
    pos = np.arange(O)[None, None, :] * s + np.arange(k)[None, :, None] * d - pb
    chan = np.arange(C)[:, None, None] * L
    inside = (pos >= 0) & (pos < L)
    idx = np.where(inside, chan + pos, C * L).reshape(C * k, O).astype(np.intp)
    return idx, O, False, not bool(inside.all())
