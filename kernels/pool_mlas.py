"""ONNX Runtime's float32 max pooling (MLAS, x86), special values included.

For ordinary numbers every max pooling agrees. With NaN, -inf or signed zeros in a window the
answer depends on how the kernel folds the window, because the two maxima it uses treat an
unordered pair differently:
- SSE `maxps(r, v)` (MLAS's vector maximum) is `r > v ? r : v`: a NaN on either side yields v;
- `std::max(r, v)` (the scalar folds) is `r < v ? v : r`: a NaN on either side yields r;
and every fold starts from, and pads with, the lowest finite float, not -inf.
MLAS picks one of three kernels per call (global, vectorized for 2-D/3-D with a last stride
of at most 2 and windows of at most 32, generic otherwise); this module replays the same choice
and the same fold order, so NaN and -inf inputs come out as they do in ORT on x86. The last
axis of the vectorized kernels is folded in two passes: the other window axes first, per input
column (4 columns a lane at a time, the leftover columns with std::max), then across the window
width along a row buffer padded with the lowest float.

ORT's other path (an Indices output or dilations) is a strict `v > r` fold from the lowest
float, which drops NaN and -inf; halfsim/ops/pool.py does that one in numpy."""
from __future__ import annotations

import numba
import numpy as np

LOWEST = np.float32(np.finfo(np.float32).min)


@numba.njit(inline="always")
def _maxps(r, v):
    return r if r > v else v


@numba.njit(inline="always")
def _stdmax(r, v):
    return v if r < v else r


@numba.njit(inline="always")
def _rows(p, k, s, pad, n):
    """MLAS's window rows along a non-last axis, with its unsigned arithmetic: a start outside
    [0, n) becomes 0, an end outside [0, n] becomes n."""
    start = p * s - pad
    end = start + k
    if start < 0 or start >= n:
        start = 0
    if end < 0 or end > n:
        end = n
    return start, end


@numba.njit(cache=True, nogil=True)
def _generic(x, y, kd, kh, kw, sd, sh, sw, pd, ph, pw):
    """MlasPool{1,2,3}DKernel: std::max from the lowest float over the in-range taps."""
    nc, D, H, W = x.shape
    _, OD, OH, OW = y.shape
    for c in range(nc):
        for od in range(OD):
            d0 = max(od * sd - pd, 0)
            d1 = min(od * sd - pd + kd, D)
            for oh in range(OH):
                h0 = max(oh * sh - ph, 0)
                h1 = min(oh * sh - ph + kh, H)
                for ow in range(OW):
                    w0 = max(ow * sw - pw, 0)
                    w1 = min(ow * sw - pw + kw, W)
                    m = LOWEST
                    for d in range(d0, d1):
                        for h in range(h0, h1):
                            for w in range(w0, w1):
                                m = _stdmax(m, x[c, d, h, w])
                    y[c, od, oh, ow] = m


@numba.njit(cache=True, nogil=True)
def _vector(x, y, kd, kh, kw, sd, sh, sw, pd, ph, pw, pw_end, from_first_row):
    """MlasPool2DVectorKernel (from_first_row, depth 1) and MlasPool3DVectorKernel."""
    nc, D, H, W = x.shape
    _, OD, OH, OW = y.shape
    buf = np.empty(pw + W + pw_end + 3 + kw + 4, dtype=np.float32)
    buf[:] = LOWEST
    full = W - W % 4
    for c in range(nc):
        for od in range(OD):
            d0, d1 = _rows(od, kd, sd, pd, D)
            for oh in range(OH):
                h0, h1 = _rows(oh, kh, sh, ph, H)
                # Pass 1: fold the depth and height taps of every input column into buf.
                for w in range(W):
                    lane = w < full
                    if from_first_row:
                        r = x[c, d0, h0, w]
                        first = True
                    else:
                        r = LOWEST
                        first = False
                    for d in range(d0, d1):
                        for h in range(h0, h1):
                            if first:
                                first = False
                                continue
                            v = x[c, d, h, w]
                            r = _maxps(r, v) if lane else _stdmax(r, v)
                    buf[pw + w] = r
                # Pass 2: fold kw buffer cells per output, 4 outputs (stride 1) or 2 (stride 2)
                # per 4-lane step, the lane window starting at buffer cell start + lane.
                ow = 0
                start = 0
                while ow < OW:
                    for lane in range(4):
                        if sw == 1:
                            o = ow + lane
                        elif lane % 2 == 0:
                            o = ow + lane // 2
                        else:
                            continue
                        if o >= OW:
                            continue
                        r = buf[start + lane]
                        for j in range(1, kw):
                            r = _maxps(r, buf[start + lane + j])
                        y[c, od, oh, o] = r
                    ow += 4 if sw == 1 else 2
                    start += 4


@numba.njit(cache=True, nogil=True)
def _global(x, y):
    """MlasPoolGlobalKernel: 4 lanes of maxps, a maxps tree over the lanes, std::max tail."""
    nc, n = x.shape
    full = n - n % 4
    for c in range(nc):
        r0 = r1 = r2 = r3 = LOWEST
        for i in range(0, full, 4):
            r0 = _maxps(r0, x[c, i])
            r1 = _maxps(r1, x[c, i + 1])
            r2 = _maxps(r2, x[c, i + 2])
            r3 = _maxps(r3, x[c, i + 3])
        m = _maxps(_maxps(r0, r2), _maxps(r1, r3))
        for i in range(full, n):
            m = _stdmax(m, x[c, i])
        y[c] = m


def mlas_max_pool(x: np.ndarray, kernel, out, strides, pads_begin, pads_end) -> np.ndarray:
    """MaxPool of float32 x (N, C, *spatial; 1 to 3 spatial axes, no dilation) as MlasPool
    computes it, for output spatial shape `out`."""
    nd = x.ndim - 2
    N, C = x.shape[:2]
    sp = list(x.shape[2:])
    x = np.ascontiguousarray(x, dtype=np.float32)
    if (list(kernel) == sp and all(s == 1 for s in strides)
            and not any(pads_begin) and not any(pads_end)):
        y = np.empty(N * C, dtype=np.float32)
        _global(x.reshape(N * C, -1), y)
        return y.reshape((N, C) + (1,) * nd)
    pad3 = lambda v, fill: [fill] * (3 - nd) + [int(t) for t in v]  # noqa: E731
    k, s, pb = pad3(kernel, 1), pad3(strides, 1), pad3(pads_begin, 0)
    o = pad3(out, 1)
    x4 = x.reshape((N * C,) + tuple(pad3(sp, 1)))
    y = np.empty((N * C,) + tuple(o), dtype=np.float32)
    room = 2048 - 3 - int(pads_begin[-1]) - int(pads_end[-1])
    if nd >= 2 and strides[-1] <= 2 and max(kernel) <= 32 and room >= sp[-1]:
        _vector(x4, y, *k, *s, *pb, int(pads_end[-1]), nd == 2)
    else:
        _generic(x4, y, *k, *s, *pb)
    return y.reshape((N, C) + tuple(out))
