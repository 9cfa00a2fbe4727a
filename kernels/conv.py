"""Direct convolution kernels for the fp32 fast paths (where the plan's matmul/sum
are plain numpy, so only the fp32 result matters, not the accumulation format). Compiled lazily
on first call and cached on disk."""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True)
def depthwise2d(xp, w, bias, out, sh, sw, dh, dw):
    """Grouped conv with one input channel per group. xp: (N, C, Hp, Wp) padded input;
    w: (M, KH, KW) with M = C * multiplier; bias: (M,) (zeros when absent);
    out: (N, M, OH, OW). Each output accumulates bias first, then kernel taps in row order."""
    N, M, OH, OW = out.shape
    C = xp.shape[1]
    KH, KW = w.shape[1], w.shape[2]
    mult = M // C
    for nm in prange(N * M):
        n = nm // M
        m = nm - n * M
        c = m // mult
        o = out[n, m]
        x = xp[n, c]
        b = bias[m]
        for i in range(OH):
            for j in range(OW):
                o[i, j] = b
        for a in range(KH):
            for bb in range(KW):
                wv = w[m, a, bb]
                for i in range(OH):
                    row = i * sh + a * dh
                    col0 = bb * dw
                    for j in range(OW):
                        o[i, j] += wv * x[row, col0 + j * sw]


def depthwise2d_call(xp: np.ndarray, w: np.ndarray, bias: np.ndarray | None, out_hw, strides, dilations) -> np.ndarray:
    N, C = xp.shape[:2]
    M = w.shape[0]
    out = np.empty((N, M, out_hw[0], out_hw[1]), dtype=xp.dtype)
    b = np.zeros(M, xp.dtype) if bias is None else np.ascontiguousarray(bias, dtype=xp.dtype)
    depthwise2d(np.ascontiguousarray(xp), np.ascontiguousarray(w.reshape(M, w.shape[-2], w.shape[-1])), b, out,
                strides[0], strides[1], dilations[0], dilations[1])
    return out
