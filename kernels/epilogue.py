"""Elementwise tails of a convolution applied in place in one pass over its fresh output,
bit for bit what the unfused ONNX ops compute in float32 (one rounding per op, no FMA
contraction, numpy's clip semantics, MLAS's sigmoid):

    v = y * scale[c]   (optional: a per-channel or scalar Mul)
    v = v + shift[c]   (optional: a per-channel or scalar Add)
    act 0: v
    act 1: v * clip(v + k[0], k[1], k[2]) / k[3]   (HardSwish as PP-OCR exports it: Add, Clip, Mul, Div)
    act 2: v * sigmoid(v)                           (SiLU: Sigmoid, Mul), MLAS's sigmoid
    act 3: clip(v * k[0] + k[1], 0, 1)              (HardSigmoid(alpha, beta): SE-block gates)

The caller decides that fusing is legal and that the op it replaces would have used the same
form (e.g. the Sigmoid op uses MLAS's sigmoid only from elementwise._MLAS_MIN elements on)."""
from __future__ import annotations

import numpy as np
from numba import njit

from .conv import run_split
from .mlas import logistic_f32


_ZERO, _ONE_F = np.float32(0), np.float32(1)


@njit(cache=True, nogil=True, error_model="numpy")
def _tail_rows(y, scale, shift, k, act, C, lo, hi):
    """Rows [lo, hi) of y (rows = image * C + channel, columns = spatial positions). A missing
    Mul/Add comes as scale 1 / shift -0.0, both exact identities (x + -0.0 keeps -0.0), so
    each act is one branch-free loop that LLVM vectorizes."""
    ns, nb = scale.size, shift.size
    for r in range(lo, hi):
        c = r % C
        s, b = scale[c % ns], shift[c % nb]
        row = y[r]
        if act == 0:
            for j in range(row.size):
                row[j] = row[j] * s + b
        elif act == 1:
            k0, klo, khi, k3 = k[0], k[1], k[2], k[3]
            for j in range(row.size):
                v = row[j] * s + b
                t = v + k0
                # numpy's clip ufunc: max(t, lo) then min(., hi), NaN t kept (bounds are not NaN).
                t = klo if t <= klo else t
                t = khi if t >= khi else t
                row[j] = (v * t) / k3
        elif act == 2:
            for j in range(row.size):
                v = row[j] * s + b
                row[j] = v * logistic_f32(v)
        else:
            k0, k1 = k[0], k[1]
            for j in range(row.size):
                v = (row[j] * s + b) * k0 + k1
                v = _ZERO if v <= _ZERO else v
                row[j] = _ONE_F if v >= _ONE_F else v


_ONE, _NEG_ZERO = np.ones(1, np.float32), np.full(1, -0.0, np.float32)


def conv_tail(y: np.ndarray, scale: np.ndarray | None, shift: np.ndarray | None, act: int,
              k: np.ndarray | None = None) -> np.ndarray:
    """Apply the tail to float32 y (N, C, *spatial), C-contiguous, in place; returns y.
    scale/shift: float32 of size C or 1 (None: no Mul / no Add); k: act 1's four constants or act 3's (alpha, beta)
    (clip bounds not NaN)."""
    N, C = y.shape[:2]
    rows = y.reshape(N * C, -1)
    args = (rows, _ONE if scale is None else scale, _NEG_ZERO if shift is None else shift,
            _ONE if k is None else k, act, C)
    # ~1 ns an element with the sigmoid: threads from 256k elements, as mlas.logistic.
    run_split(_tail_rows, args, N * C, y.size, min_work=1 << 18)
    return y
