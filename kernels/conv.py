"""Direct depthwise convolution and max-pooling kernels for the fp32 fast paths.
Compiled lazily on first call and cached on disk.

Not numba-parallel on purpose: with numba's OpenMP layer idle threads spin, and on a busy
2-core machine (OpenBLAS threads, other processes) a parallel region measured 20-50x slower
than the serial loop. The kernels are nogil and take a [lo, hi) plane range instead;
run_split shares the planes between the caller and helper threads by work stealing."""
from __future__ import annotations

import itertools
import os

import numpy as np
from numba import njit

_pool = None


def threads() -> int:
    """Threads for splitting kernels: HALFSIM_THREADS, else OMP/OPENBLAS_NUM_THREADS, else cores."""
    for var in ("HALFSIM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        v = os.environ.get(var, "")
        if v.isdigit() and int(v) > 0:
            return int(v)
    return max(1, min(os.cpu_count() or 1, 8))


def run_split(kernel, args: tuple, total: int, work: int, min_work: int = 1 << 17) -> None:
    """Run kernel(*args, lo, hi) over [0, total) in chunks on Python threads (kernels are
    nogil). Work stealing: the calling thread takes chunks too, so a helper thread that is
    not scheduled (busy machine) costs nothing; small jobs (work < min_work) stay serial."""
    global _pool
    nt = min(threads(), total)
    if nt <= 1 or work < min_work:
        kernel(*args, 0, total)
        return
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor
        _pool = ThreadPoolExecutor(max_workers=max(1, threads() - 1), thread_name_prefix="halfsim-kernel")
    n_chunks = min(total, 4 * nt)
    bounds = [total * i // n_chunks for i in range(n_chunks + 1)]
    ticket = itertools.count()

    def worker():
        while True:
            i = next(ticket)  # atomic under the GIL
            if i >= n_chunks:
                return
            kernel(*args, bounds[i], bounds[i + 1])

    futures = [_pool.submit(worker) for _ in range(nt - 1)]
    worker()
    for f in futures:
        f.result()


@njit(cache=True, nogil=True)
def _col_range(OW, sw, off, W):
    """Output columns j in [j0, j1) whose input column j*sw + off lies inside [0, W)."""
    j0 = 0
    while j0 < OW and j0 * sw + off < 0:
        j0 += 1
    j1 = OW
    while j1 > j0 and (j1 - 1) * sw + off >= W:
        j1 -= 1
    return j0, j1


_FLAT_ELEMS = 4096  # accumulator of a block of full-width rows: 16 KB of float32, stays in L1


@njit(cache=True, nogil=True)
def _dw_plane_flat(xp, wm, bias, o, dh, dw, flat, r0, r1):
    """Stride-1 depthwise taps over blocks of whole padded-width rows: output (i, j) sits at
    flat[i * Wp + j], the tap (a, b) reads xp flat at the same index + a*dh*Wp + b*dw, so each
    tap is one long contiguous multiply-add (the Wp - OW columns past each row's end are
    computed and dropped). Same summation order as the row kernel: bias, then taps. A kernel
    row skips the output rows for which it reads zero padding (padded rows outside [r0, r1)):
    PP-OCR's 5x5 convs on 2- and 3-row planes spend 40-60% of their taps there."""
    OH, OW = o.shape
    KH, KW = wm.shape
    Wp = xp.shape[1]
    xf = xp.reshape(-1)
    rows = flat.shape[0] // Wp
    for i0 in range(0, OH, rows):
        nr = min(rows, OH - i0)
        flat[:(nr - 1) * Wp + OW] = bias
        for a in range(KH):
            # Output rows of the block whose padded input row i + a*dh is a real one.
            ilo, ihi = max(i0, r0 - a * dh), min(i0 + nr, r1 - a * dh)
            if ilo >= ihi:
                continue
            La = (ihi - ilo - 1) * Wp + OW
            acc = flat[(ilo - i0) * Wp: (ilo - i0) * Wp + La]
            off = (ilo + a * dh) * Wp
            # A kernel row at a time for the common widths: acc is loaded and stored once per
            # row instead of once per tap (the taps are still added one by one, in order).
            if KW == 3:
                w0, w1, w2 = wm[a, 0], wm[a, 1], wm[a, 2]
                x0, x1, x2 = xf[off: off + La], xf[off + dw: off + dw + La], xf[off + 2 * dw: off + 2 * dw + La]
                for j in range(La):
                    acc[j] = acc[j] + w0 * x0[j] + w1 * x1[j] + w2 * x2[j]
            elif KW == 5:
                w0, w1, w2, w3, w4 = wm[a, 0], wm[a, 1], wm[a, 2], wm[a, 3], wm[a, 4]
                x0, x1, x2 = xf[off: off + La], xf[off + dw: off + dw + La], xf[off + 2 * dw: off + 2 * dw + La]
                x3, x4 = xf[off + 3 * dw: off + 3 * dw + La], xf[off + 4 * dw: off + 4 * dw + La]
                for j in range(La):
                    acc[j] = acc[j] + w0 * x0[j] + w1 * x1[j] + w2 * x2[j] + w3 * x3[j] + w4 * x4[j]
            else:
                for bb in range(KW):
                    wv = wm[a, bb]
                    xs = xf[off + bb * dw: off + bb * dw + La]
                    for j in range(La):
                        acc[j] += wv * xs[j]
        for r in range(nr):
            o[i0 + r, :] = flat[r * Wp: r * Wp + OW]


@njit(cache=True, nogil=True)
def depthwise2d(x, w, bias, out, sh, sw, dh, dw, ph, pw, lo, hi):
    """Grouped conv with one input channel per group, planes [lo, hi) of N*M. x: (N, C, H, W)
    unpadded (zero padding (ph, pw) is implicit); w: (M, KH, KW) with M = C * multiplier;
    bias: (M,) (zeros when absent); out: (N, M, OH, OW). Each output row is accumulated in a
    small buffer (bias first, then the taps in row-major order) so that it stays in L1."""
    N, M, OH, OW = out.shape
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    KH, KW = w.shape[1], w.shape[2]
    mult = M // C
    # One padded plane, reused: cheap to fill (cache-resident) and keeps the inner loop
    # free of bounds logic so it vectorizes.
    Hp = (OH - 1) * sh + (KH - 1) * dh + 1
    Wp = (OW - 1) * sw + (KW - 1) * dw + 1
    xp = np.zeros((Hp, Wp), dtype=x.dtype)
    r0, r1 = max(0, -ph), min(H, Hp - ph)
    q0, q1 = max(0, -pw), min(W, Wp - pw)
    acc = np.empty(OW, dtype=out.dtype)
    flat = np.empty(min(OH, max(1, _FLAT_ELEMS // Wp)) * Wp, dtype=out.dtype)
    span = (OW - 1) * sw + 1
    last_plane = -1
    for nm in range(lo, hi):
        n = nm // M
        m = nm - n * M
        c = m // mult
        # The padded copy is reused across the multiplier's outputs of one (image, channel).
        if n * C + c != last_plane:
            for r in range(r0, r1):
                dst = xp[r + ph, q0 + pw: q1 + pw]
                src = x[n, c, r, q0:q1]
                for q in range(q1 - q0):
                    dst[q] = src[q]
            last_plane = n * C + c
        if sh == 1 and sw == 1:
            _dw_plane_flat(xp, w[m], bias[m], out[n, m], dh, dw, flat, r0 + ph, r1 + ph)
            continue
        for i in range(OH):
            acc[:] = bias[m]
            for a in range(KH):
                xr = xp[i * sh + a * dh]
                for bb in range(KW):
                    wv = w[m, a, bb]
                    # Slice views indexed by the loop counter: no negative-index
                    # wraparound checks, so the unit-stride loop vectorizes.
                    if sw == 1:
                        xu = xr[bb * dw: bb * dw + OW]
                        for j in range(OW):
                            acc[j] += wv * xu[j]
                    else:
                        xs = xr[bb * dw: bb * dw + span: sw]
                        for j in range(OW):
                            acc[j] += wv * xs[j]
            out[n, m, i, :] = acc


@njit(cache=True, nogil=True)
def depthwise2d_cl(x, w, bias, out, sh, sw, dh, dw, ph, pw, lo, hi):
    """depthwise2d for small planes with many channels (multiplier 1), images [lo, hi): each
    image is turned channels-last in a scratch buffer so that the inner loop runs over the
    channels (long and contiguous: PP-OCR's 5x5 convs on 2x96 planes leave the plane kernel
    rows of 2-3 useful outputs and a per-plane overhead larger than the work). Same order per
    output: bias, then the taps row-major; taps reading padding are skipped."""
    N, C, H, W = x.shape
    OH, OW = out.shape[2], out.shape[3]
    KH, KW = w.shape[1], w.shape[2]
    wt = np.empty((KH, KW, C), dtype=x.dtype)
    for c in range(C):
        for a in range(KH):
            for b in range(KW):
                wt[a, b, c] = w[c, a, b]
    xt = np.empty((H, W, C), dtype=x.dtype)
    yt = np.empty((OH, OW, C), dtype=out.dtype)
    for n in range(lo, hi):
        for h in range(H):
            for q in range(W):
                xr = xt[h, q]
                for c in range(C):
                    xr[c] = x[n, c, h, q]
        for i in range(OH):
            for j in range(OW):
                acc = yt[i, j]
                for c in range(C):
                    acc[c] = bias[c]
                for a in range(KH):
                    r = i * sh + a * dh - ph
                    if r < 0 or r >= H:
                        continue
                    for b in range(KW):
                        q = j * sw + b * dw - pw
                        if q < 0 or q >= W:
                            continue
                        xv, wv = xt[r, q], wt[a, b]
                        for c in range(C):
                            acc[c] += wv[c] * xv[c]
        for c in range(C):
            for i in range(OH):
                o = out[n, c, i]
                for j in range(OW):
                    o[j] = yt[i, j, c]


@njit(cache=True, nogil=True, fastmath=True)
def maxpool2d(x, out, kh, kw, sh, sw, dh, dw, ph, pw, lowest, lo, hi):
    """2-D max pooling of planes [lo, hi) of N*C; x: (N, C, H, W) unpadded, padding (ph, pw)
    implicit (as `lowest`); out: (N, C, OH, OW). Separable: each output row first takes the
    max over its kernel rows (contiguous, vectorized), the row is then split into `sw`
    phases so that every column tap reads a contiguous slice (vectorized again)."""
    N, C, OH, OW = out.shape
    H, W = x.shape[2], x.shape[3]
    Wp = (OW - 1) * sw + (kw - 1) * dw + 1
    L = (Wp + sw - 1) // sw
    rowmax = np.empty(Wp, dtype=out.dtype)
    phases = np.empty((sw, L), dtype=out.dtype)
    q1 = min(W, Wp - pw)
    for nc in range(lo, hi):
        n = nc // C
        c = nc - n * C
        for i in range(OH):
            rowmax[:] = lowest
            dst = rowmax[pw: pw + q1]
            for a in range(kh):
                r = i * sh + a * dh - ph
                if r < 0 or r >= H:
                    continue
                src = x[n, c, r, 0:q1]
                for q in range(q1):
                    dst[q] = max(dst[q], src[q])
            for p in range(sw):
                php = phases[p]
                sp = rowmax[p::sw]
                for q in range(sp.shape[0]):
                    php[q] = sp[q]
            o = out[n, c, i]
            v0 = phases[0][0:OW]
            for j in range(OW):
                o[j] = v0[j]
            for bb in range(1, kw):
                t = bb * dw
                v = phases[t % sw][t // sw: t // sw + OW]
                for j in range(OW):
                    o[j] = max(o[j], v[j])


_CL_MAX_PLANE = 64  # output positions per plane up to which depthwise convs run channels-last


def depthwise2d_call(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, out_hw, strides, dilations,
                     pads_begin) -> np.ndarray:
    N, C = x.shape[:2]
    M = w.shape[0]
    out = np.empty((N, M, out_hw[0], out_hw[1]), dtype=x.dtype)
    b = np.zeros(M, x.dtype) if bias is None else np.ascontiguousarray(bias, dtype=x.dtype)
    args = (np.ascontiguousarray(x), np.ascontiguousarray(w.reshape(M, w.shape[-2], w.shape[-1])), b, out,
            strides[0], strides[1], dilations[0], dilations[1], pads_begin[0], pads_begin[1])
    work = out.size * w.shape[-1] * w.shape[-2]
    if M == C and M >= 64 and out_hw[0] * out_hw[1] <= _CL_MAX_PLANE:
        # Small planes, many channels (deep PP-OCR stages: 384x4x13, 192x4x13 strided, 960x1x20):
        # channels-last inner loop, 2.5-4x faster there; measured slower from 200-element planes.
        run_split(depthwise2d_cl, args, N, work, min_work=1 << 21)
        return out
    # Waking a helper thread costs tens of microseconds (more on a busy machine): measured
    # to pay off from about 2M multiply-adds (~0.3 ms serial) on.
    run_split(depthwise2d, args, N * M, work, min_work=1 << 21)
    return out


def maxpool2d_call(x: np.ndarray, kernel, out_hw, strides, dilations, pads_begin) -> np.ndarray:
    out = np.empty(x.shape[:2] + tuple(out_hw), dtype=x.dtype)
    lowest = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    args = (np.ascontiguousarray(x), out, kernel[0], kernel[1], strides[0], strides[1], dilations[0], dilations[1],
            pads_begin[0], pads_begin[1], x.dtype.type(lowest))
    run_split(maxpool2d, args, x.shape[0] * x.shape[1], x.size)
    return out
