"""ONNX Runtime's float ReduceMax / ReduceMin (CPU, x86), NaN included.

Without NaN every fold order gives the same maximum; with NaN the one that survives depends on
how ORT folds. Every step ORT takes, scalar or 4-lane SSE (Eigen's pmax/pmin, std::max, and its
own `if (v > acc)` loops), keeps its accumulator unless the new value is strictly better, so a
NaN only survives where it *starts* a fold: the first element of a sequential fold, the first
packet of a lane, or the accumulator side of a lane merge. What differs between ORT's paths is
therefore only where the folds start:

- all axes (R): Eigen `maxCoeff` over the whole buffer: lanes of 4 (2 for double) from the first
  16-byte aligned element (the buffer is aligned: element 0), a second packet accumulator when
  more than one packet fits, lanes merged as ((l0, l2), (l1, l3)), then the unaligned head and the
  tail folded in one at a time; fewer elements than a packet: a plain sequential fold.
- trailing axes (KR): the same fold per output row, whose start address sets the head length.
- middle axes (KRK, at least 2 outer blocks): Eigen `rowwise().maxCoeff()`: the output block is
  written from its first 16-byte aligned cell in packets of 4 consecutive cells, each folding the
  reduced columns as c0, then ((c1, c2), (c3, c4)), ..., then one at a time; the head and tail
  cells fold their column sequentially.
- leading and trailing axes (RKR, at least 2 kept values): the first element, then per leading
  index the trailing block's `maxCoeff` (as R, at its own address) if strictly better.
- everything else (leading axes only (RK), more than 3 merged groups, the thresholds below not
  met): a sequential fold over the reduced elements in row-major order.

The path thresholds scale with ORT's thread count (`dop`); halfsim's tests run ORT on one thread."""
from __future__ import annotations

import numba
import numpy as np

FOLD, LINEAR, KRK, RKR = 0, 1, 2, 3


@numba.njit(inline="always")
def _pick(acc, v, is_max):
    # v replaces acc only when strictly better: an unordered pair keeps acc.
    if is_max:
        return v if v > acc else acc
    return v if v < acc else acc


@numba.njit(inline="always")
def _linear(f, s, n, head, is_max, P, r0, r1):
    """Eigen's vectorized redux of f[s:s+n]; `head` elements precede the first aligned one."""
    if n <= head:
        size = 0
    else:
        size = ((n - head) // P) * P
    if size == 0:
        acc = f[s]
        for i in range(1, n):
            acc = _pick(acc, f[s + i], is_max)
        return acc
    size2 = ((n - head) // (2 * P)) * (2 * P)
    b = s + head
    for k in range(P):
        r0[k] = f[b + k]
    if size > P:
        for k in range(P):
            r1[k] = f[b + P + k]
        for i in range(b + 2 * P, b + size2, 2 * P):
            for k in range(P):
                r0[k] = _pick(r0[k], f[i + k], is_max)
                r1[k] = _pick(r1[k], f[i + P + k], is_max)
        for k in range(P):
            r0[k] = _pick(r0[k], r1[k], is_max)
        if size > size2:
            for k in range(P):
                r0[k] = _pick(r0[k], f[b + size2 + k], is_max)
    if P == 4:
        acc = _pick(_pick(r0[0], r0[2], is_max), _pick(r0[1], r0[3], is_max), is_max)
    else:
        acc = _pick(r0[0], r0[1], is_max)
    for i in range(head):
        acc = _pick(acc, f[s + i], is_max)
    for i in range(head + size, n):
        acc = _pick(acc, f[s + i], is_max)
    return acc


@numba.njit(cache=True, nogil=True)
def _reduce(x, mode, is_max, P, out):
    """x: a contiguous (A, B, C) view; `out` flat. FOLD and LINEAR reduce B*C per A (C == 1
    for LINEAR's rows), KRK reduces B per (A, C), RKR reduces A and C per B."""
    A, B, C = x.shape
    f = x.reshape(-1)
    r0 = np.empty(P, x.dtype)
    r1 = np.empty(P, x.dtype)
    if mode == FOLD:
        n = B * C
        for a in range(A):
            acc = f[a * n]
            for i in range(1, n):
                acc = _pick(acc, f[a * n + i], is_max)
            out[a] = acc
    elif mode == LINEAR:
        n = B * C
        for a in range(A):
            out[a] = _linear(f, a * n, n, (-(a * n)) % P, is_max, P, r0, r1)
    elif mode == KRK:
        size4 = (B - 1) & ~3
        for a in range(A):
            base = a * B * C
            head = min((-(a * C)) % P, C)
            body = head + ((C - head) // P) * P
            for c in range(C):
                col = base + c
                if head <= c < body:  # one lane of a packet: the packetwise column fold
                    acc = f[col]
                    i = 1
                    while i < size4:
                        q = _pick(_pick(f[col + i * C], f[col + (i + 1) * C], is_max),
                                  _pick(f[col + (i + 2) * C], f[col + (i + 3) * C], is_max), is_max)
                        acc = _pick(acc, q, is_max)
                        i += 4
                    while i < B:
                        acc = _pick(acc, f[col + i * C], is_max)
                        i += 1
                else:
                    acc = f[col]
                    for i in range(1, B):
                        acc = _pick(acc, f[col + i * C], is_max)
                out[a * C + c] = acc
    else:  # RKR
        for b in range(B):
            acc = f[b * C]
            for a in range(A):
                s = a * B * C + b * C
                acc = _pick(acc, _linear(f, s, C, (-s) % P, is_max, P, r0, r1), is_max)
            out[b] = acc


def _merged(shape: tuple, axes: tuple) -> tuple[list, list]:
    """ORT's OptimizeShapeForFastReduce: runs of reduced / kept axes merged (sizes, flags)."""
    sizes, flags = [], []
    for i, d in enumerate(shape):
        r = i in axes
        if flags and flags[-1] == r:
            sizes[-1] *= d
        else:
            sizes.append(d)
            flags.append(r)
    return sizes, flags


def ort_max_min(x: np.ndarray, axes: tuple, keepdims: bool, is_max: bool, dop: int = 1) -> np.ndarray:
    """ReduceMax (is_max) or ReduceMin of a non-empty float32/float64 x over the sorted, non-empty
    `axes`, with the value ORT's CPU kernel picks when NaN is involved."""
    x = np.ascontiguousarray(x)
    P = 16 // x.itemsize
    sizes, flags = _merged(x.shape, axes)
    kind = "".join("R" if r else "K" for r in flags)
    if kind in ("R", "KR"):
        mode, v = LINEAR, x.reshape(x.size // sizes[-1], sizes[-1], 1)
    elif kind == "KRK" and sizes[0] >= max(2, dop):
        mode, v = KRK, x.reshape(sizes)
    elif kind == "RKR" and sizes[1] >= max(2, dop):
        mode, v = RKR, x.reshape(sizes)
    else:
        # Sequential row-major fold over the reduced axes (RK's own loop is the same fold).
        kept = [i for i in range(x.ndim) if i not in axes]
        t = np.ascontiguousarray(x.transpose(kept + list(axes)))
        n_out = int(np.prod([x.shape[i] for i in kept], dtype=np.int64))
        mode, v = FOLD, t.reshape(n_out, -1, 1)
    out_shape = [1 if i in axes else d for i, d in enumerate(x.shape)] if keepdims else \
        [d for i, d in enumerate(x.shape) if i not in axes]
    out = np.empty(int(np.prod(out_shape, dtype=np.int64)), x.dtype)
    _reduce(v, mode, is_max, P, out)
    return out.reshape(out_shape)


@numba.njit(inline="always")
def _maxps(a, b, is_max):
    # SSE/AVX maxps(a, b) / minps(a, b): a when strictly better, else b (an unordered pair: b).
    if is_max:
        return a if a > b else b
    return a if a < b else b


@numba.njit(cache=True, nogil=True)
def _mlas_extreme(x, is_max):
    """MlasReduceMinimumMaximumF32KernelAvx's maximum (or minimum) of the flat float32 x."""
    n = x.size
    acc = np.float32(np.finfo(np.float32).min if is_max else np.finfo(np.float32).max)
    i = 0
    if n >= 8:
        lanes = np.full(32, acc, np.float32)
        if n >= 32:
            while n - i >= 32:
                for k in range(32):
                    lanes[k] = _maxps(lanes[k], x[i + k], is_max)
                i += 32
            for k in range(8):
                lanes[k] = _maxps(_maxps(lanes[k], lanes[8 + k], is_max),
                                  _maxps(lanes[16 + k], lanes[24 + k], is_max), is_max)
        while n - i >= 8:
            for k in range(8):
                lanes[k] = _maxps(lanes[k], x[i + k], is_max)
            i += 8
        for k in range(4):  # the two 128-bit halves, then lanes (0, 2) and (1, 3), then the pair
            lanes[k] = _maxps(lanes[k], lanes[4 + k], is_max)
        acc = _maxps(_maxps(lanes[0], lanes[2], is_max), _maxps(lanes[1], lanes[3], is_max), is_max)
    while i < n:  # std::max / std::min: the accumulator stays unless the value is strictly better
        acc = _pick(acc, x[i], is_max)
        i += 1
    return acc


def mlas_min_max(x: np.ndarray) -> tuple[np.float32, np.float32]:
    """(min, max) of float32 x as ORT's MlasFindMinMaxElement returns them on x86 with AVX
    (DynamicQuantizeLinear's range, one thread): a NaN survives only as the last value of its
    vector lane; in the scalar tail, and below 8 elements, NaN is skipped."""
    f = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    return _mlas_extreme(f, False), _mlas_extreme(f, True)
