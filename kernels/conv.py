"""Direct depthwise convolution, im2col and max-pooling kernels for the fp32 fast paths.
Compiled lazily on first call and cached on disk.

Single-threaded on purpose: with numba's OpenMP layer, idle threads spin, and on a busy
2-core machine (OpenBLAS threads, other processes) a parallel region measured 20-50x slower
than the serial loop. nogil lets a caller split work across Python threads instead."""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def depthwise2d(xp, w, bias, out, sh, sw, dh, dw):
    """Grouped conv with one input channel per group. xp: (N, C, Hp, Wp) padded input;
    w: (M, KH, KW) with M = C * multiplier; bias: (M,) (zeros when absent);
    out: (N, M, OH, OW). Each output row is accumulated in a small buffer (bias first, then
    the taps in row-major order) so that it stays in L1; unit stride gets a contiguous loop."""
    N, M, OH, OW = out.shape
    C = xp.shape[1]
    KH, KW = w.shape[1], w.shape[2]
    mult = M // C
    for nm in range(N * M):
        n = nm // M
        m = nm - n * M
        c = m // mult
        acc = np.empty(OW, dtype=out.dtype)
        span = (OW - 1) * sw + 1
        for i in range(OH):
            acc[:] = bias[m]
            for a in range(KH):
                xr = xp[n, c, i * sh + a * dh]
                for bb in range(KW):
                    wv = w[m, a, bb]
                    # A slice view indexed by the loop counter lets LLVM vectorize (no
                    # negative-index wraparound checks).
                    if sw == 1:
                        xu = xr[bb * dw: bb * dw + OW]  # contiguous type: vectorizes
                        for j in range(OW):
                            acc[j] += wv * xu[j]
                    else:
                        xs = xr[bb * dw: bb * dw + span: sw]
                        for j in range(OW):
                            acc[j] += wv * xs[j]
            out[n, m, i, :] = acc


@njit(cache=True, nogil=True, fastmath=True)
def maxpool2d(xp, out, kh, kw, sh, sw, dh, dw):
    """2-D max pooling of padded xp (pads hold the dtype's lowest value) into out (N, C, OH, OW).
    Separable: the max over the kernel rows first (contiguous), then over the columns."""
    N, C, OH, OW = out.shape
    Wp = xp.shape[3]
    for nc in range(N * C):
        n = nc // C
        c = nc - n * C
        rowmax = np.empty(Wp, dtype=out.dtype)
        for i in range(OH):
            rowmax[:] = xp[n, c, i * sh]
            for a in range(1, kh):
                ra = xp[n, c, i * sh + a * dh]
                for q in range(Wp):
                    rowmax[q] = max(rowmax[q], ra[q])
            o = out[n, c, i]
            o[:] = rowmax[0: (OW - 1) * sw + 1: sw]
            for bb in range(1, kw):
                rs = rowmax[bb * dw: bb * dw + (OW - 1) * sw + 1: sw]
                for j in range(OW):
                    o[j] = max(o[j], rs[j])


@njit(cache=True, nogil=True)
def im2col2d(x, cols, kh, kw, sh, sw, dh, dw, ph, pw):
    """cols[n, c, a, b, i, j] = x[n, c, i*sh + a*dh - ph, j*sw + b*dw - pw], 0 outside x.
    Padding is handled here, so the padded input is never built."""
    N, C, H, W = x.shape
    OH, OW = cols.shape[4], cols.shape[5]
    for nc in range(N * C):
        n = nc // C
        c = nc - n * C
        for a in range(kh):
            for b in range(kw):
                # Output columns whose input column is inside [0, W).
                off = b * dw - pw
                j0 = 0
                while j0 < OW and j0 * sw + off < 0:
                    j0 += 1
                j1 = OW
                while j1 > j0 and (j1 - 1) * sw + off >= W:
                    j1 -= 1
                nj = j1 - j0
                s0 = j0 * sw + off
                for i in range(OH):
                    r = i * sh + a * dh - ph
                    dst = cols[n, c, a, b, i]
                    if r < 0 or r >= H or nj <= 0:
                        for j in range(OW):
                            dst[j] = 0
                        continue
                    for j in range(j0):
                        dst[j] = 0
                    for j in range(j1, OW):
                        dst[j] = 0
                    # Views indexed by a loop counter: no wraparound checks, so it vectorizes.
                    dv = dst[j0:j1]
                    if sw == 1:
                        sv = x[n, c, r, s0: s0 + nj]
                        for k in range(nj):
                            dv[k] = sv[k]
                    else:
                        ss = x[n, c, r, s0: s0 + (nj - 1) * sw + 1: sw]
                        for k in range(nj):
                            dv[k] = ss[k]


def depthwise2d_call(xp: np.ndarray, w: np.ndarray, bias: np.ndarray | None, out_hw, strides, dilations) -> np.ndarray:
    N, C = xp.shape[:2]
    M = w.shape[0]
    out = np.empty((N, M, out_hw[0], out_hw[1]), dtype=xp.dtype)
    b = np.zeros(M, xp.dtype) if bias is None else np.ascontiguousarray(bias, dtype=xp.dtype)
    depthwise2d(np.ascontiguousarray(xp), np.ascontiguousarray(w.reshape(M, w.shape[-2], w.shape[-1])), b, out,
                strides[0], strides[1], dilations[0], dilations[1])
    return out


def maxpool2d_call(xp: np.ndarray, kernel, out_hw, strides, dilations) -> np.ndarray:
    out = np.empty(xp.shape[:2] + tuple(out_hw), dtype=xp.dtype)
    maxpool2d(np.ascontiguousarray(xp), out, kernel[0], kernel[1], strides[0], strides[1], dilations[0], dilations[1])
    return out


def im2col2d_call(x: np.ndarray, kernel, out_hw, strides, dilations, pads_begin) -> np.ndarray:
    """(N, C, KH, KW, OH, OW) columns of unpadded x."""
    cols = np.empty(x.shape[:2] + tuple(kernel) + tuple(out_hw), dtype=x.dtype)
    im2col2d(np.ascontiguousarray(x), cols, kernel[0], kernel[1], strides[0], strides[1], dilations[0], dilations[1],
             pads_begin[0], pads_begin[1])
    return cols
