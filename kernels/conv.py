"""Direct convolution and pooling kernels for the fp32 fast paths (where the plan's matmul/sum
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


@njit(cache=True, parallel=True)
def maxpool2d_idx(xp, out, idx, kh, kw, sh, sw, dh, dw, ph, pw, H, W, col_major):
    """2-D max pooling with ONNX MaxPool indices. xp: (N, C, Hp, Wp) padded with -inf;
    (ph, pw): the leading pads; H, W: the unpadded size. Index of the first maximum in
    window scan order, flattened over (N, C, H, W) (or (N, C, W, H) with col_major)."""
    N, C, OH, OW = out.shape
    for nc in prange(N * C):
        n = nc // C
        c = nc - n * C
        base = nc * H * W
        x = xp[n, c]
        for i in range(OH):
            for j in range(OW):
                best = x[i * sh, j * sw]
                bi = i * sh
                bj = j * sw
                first = True
                for a in range(kh):
                    r = i * sh + a * dh
                    for b in range(kw):
                        q = j * sw + b * dw
                        v = x[r, q]
                        hr = r - ph
                        wq = q - pw
                        if hr < 0 or hr >= H or wq < 0 or wq >= W:
                            continue
                        if first or v > best:
                            best = v
                            bi = hr
                            bj = wq
                            first = False
                out[n, c, i, j] = best
                if col_major:
                    idx[n, c, i, j] = base + bj * H + bi
                else:
                    idx[n, c, i, j] = base + bi * W + bj


def depthwise2d_call(xp: np.ndarray, w: np.ndarray, bias: np.ndarray | None, out_hw, strides, dilations) -> np.ndarray:
    N, C = xp.shape[:2]
    M = w.shape[0]
    out = np.empty((N, M, out_hw[0], out_hw[1]), dtype=xp.dtype)
    b = np.zeros(M, xp.dtype) if bias is None else np.ascontiguousarray(bias, dtype=xp.dtype)
    depthwise2d(np.ascontiguousarray(xp), np.ascontiguousarray(w.reshape(M, w.shape[-2], w.shape[-1])), b, out,
                strides[0], strides[1], dilations[0], dilations[1])
    return out
