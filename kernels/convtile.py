"""Whole-tile conv drivers for plain fp32 2-D convs: one nogil numba call per range of tiles
does the im2col copy (or the shifted-image GEMMs), calls OpenBLAS's sgemm through its address
(kernels/cblas.sgemm_address) and adds the bias, so a tile never re-enters Python and two
tiles really run at once on the kernel threads (run_split). The ctypes route releases and
re-takes the GIL around every sgemm and numpy call of a tile: with several calls per tile and
the other thread wanting the GIL between its own calls, the second thread gained nothing.

Each output is the same sgemm dot product(s) plus the bias as in the numpy/ctypes paths of
halfsim/ops/conv.py (bias added after the product, one rounding; no bias: the product as is)."""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

_ROW_MAJOR, _NO_TRANS = 101, 111


@intrinsic
def _sgemm_at(typingctx, fptr, M, N, K, a, aoff, lda, b, boff, ldb, beta, c, coff, ldc):
    """C[coff:] = A[aoff:] @ B[boff:] + beta * C[coff:] (row-major, untransposed, alpha 1) by
    calling the ILP64 cblas_sgemm at address fptr; a, b, c are float32 arrays, offsets in
    elements."""
    arrs = (a, b, c)
    if not all(isinstance(t, types.Array) and t.dtype == types.float32 for t in arrs):
        return None
    i64 = types.int64
    sig = types.void(i64, i64, i64, i64, a, i64, i64, b, i64, i64, types.float32, c, i64, i64)

    def codegen(context, builder, signature, args):
        li32, li64, lf32 = ir.IntType(32), ir.IntType(64), ir.FloatType()
        lp = lf32.as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [li32, li32, li32, li64, li64, li64, lf32, lp, li64, lp, li64, lf32,
                                               lp, li64])
        fn = builder.inttoptr(args[0], fnty.as_pointer())

        def ptr(k, off):
            data = context.make_array(signature.args[k])(context, builder, args[k]).data
            return builder.gep(data, [args[off]])
        const = lambda t, v: ir.Constant(t, v)  # noqa: E731
        builder.call(fn, [const(li32, _ROW_MAJOR), const(li32, _NO_TRANS), const(li32, _NO_TRANS),
                          args[1], args[2], args[3], const(lf32, 1.0), ptr(4, 5), args[6], ptr(7, 8), args[9],
                          args[10], ptr(11, 12), args[13]])
        return context.get_dummy_value()
    return sig, codegen


@njit(cache=True, nogil=True, inline="always")
def _tile(t, per_image, rows, OH):
    """Tile t's image and output rows [i0, i1): `per_image` tiles of `rows` rows per image."""
    i0 = (t % per_image) * rows
    return t // per_image, i0, min(OH, i0 + rows)


@njit(cache=True, nogil=True)
def shifted_tiles(fptr, xp, wt, offs, bias, y, C, plane, Wp, rows, per_image, lo, hi):
    """Tiles [lo, hi) of the shifted-GEMM conv (halfsim/ops/conv._conv_shifted): xp the padded
    images flat (N * C * plane), wt (taps, M, C) contiguous, offs[q] tap q's flat offset in a
    plane, y (N, M, OH, OW). Tile t: image t // per_image, `rows` output rows from
    rows * (t % per_image); its taps accumulate into a scratch block (beta = 1), then the
    block's valid columns (+ bias) go to y."""
    M, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    nt = offs.size
    buf = np.empty(M * rows * Wp, np.float32)
    for t in range(lo, hi):
        n, i0, i1 = _tile(t, per_image, rows, OH)
        L = (i1 - i0) * Wp
        for q in range(nt):
            _sgemm_at(fptr, M, L, C, wt, q * M * C, C, xp, n * C * plane + offs[q] + i0 * Wp, plane,
                      np.float32(1.0 if q else 0.0), buf, 0, L)
        for m in range(M):
            for i in range(i1 - i0):
                src = buf[m * L + i * Wp: m * L + i * Wp + OW]
                dst = y[n, m, i0 + i]
                if bias.size:
                    bm = bias[m]
                    for j in range(OW):
                        dst[j] = src[j] + bm
                else:
                    dst[:] = src


@njit(cache=True, nogil=True)
def _copy_window(xf, base, col, r0, n, sw, Wrow, OW):
    """col[r0 + i * OW + j] = xf[base + i * Wrow + j * sw] for i < n, j < OW. Through slices:
    indexing with a computed (possibly negative, to numba) index costs a wraparound branch per
    element and no vectorization, 3-4x slower."""
    for i in range(n):
        s0 = base + i * Wrow
        src = xf[s0:s0 + OW * sw:sw]
        dst = col[r0 + i * OW:r0 + (i + 1) * OW]
        for j in range(OW):
            dst[j] = src[j]


@njit(cache=True, nogil=True)
def im2col_tiles(fptr, xf, w, bias, y, C, Hp, Wp, group, KH, KW, sh, sw, dh, dw, OW, rows, per_image, lo, hi):
    """Tiles [lo, hi) of an im2col conv: xf the padded images (N, C, Hp, Wp) flat, w (M, K)
    contiguous with K = C/group * KH * KW, y (N, M, OH * OW). Tile t: image t // per_image,
    output rows from rows * (t % per_image); per group, its window block is copied into a
    (K, L) scratch matrix, multiplied straight into y's columns (ldc = OH * OW), bias added."""
    M, P = y.shape[1], y.shape[2]
    OH = P // OW
    Cg, Mg = C // group, M // group
    K = Cg * KH * KW
    col = np.empty(K * rows * OW, np.float32)
    for t in range(lo, hi):
        n, i0, i1 = _tile(t, per_image, rows, OH)
        L = (i1 - i0) * OW
        for g in range(group):
            r = 0
            for c in range(Cg):
                plane = (n * C + g * Cg + c) * Hp * Wp
                for a in range(KH):
                    for b in range(KW):
                        _copy_window(xf, plane + (i0 * sh + a * dh) * Wp + b * dw, col, r * L, i1 - i0, sw, sh * Wp, OW)
                        r += 1
            _sgemm_at(fptr, Mg, L, K, w, g * Mg * K, K, col, 0, L, np.float32(0.0), y,
                      (n * M + g * Mg) * P + i0 * OW, P)
            if bias.size:
                for m in range(g * Mg, (g + 1) * Mg):
                    bm = bias[m]
                    row = y[n, m, i0 * OW:i1 * OW]
                    for p in range(L):
                        row[p] += bm


@njit(cache=True, nogil=True)
def pointwise_tiles(fptr, xf, w, bias, y, C, cols, per_image, lo, hi):
    """Tiles [lo, hi) of a 1x1 stride-1 conv: xf the images (N, C, P) flat, w (M, C), y (N, M,
    P). Tile t: image t // per_image, columns from cols * (t % per_image); the input block is
    read in place (ldb = P) and the product written straight into y (ldc = P), bias added."""
    M, P = y.shape[1], y.shape[2]
    for t in range(lo, hi):
        n = t // per_image
        p0 = (t % per_image) * cols
        L = min(P, p0 + cols) - p0
        _sgemm_at(fptr, M, L, C, w, 0, C, xf, n * C * P + p0, P, np.float32(0.0), y, n * M * P + p0, P)
        if bias.size:
            for m in range(M):
                bm = bias[m]
                row = y[n, m, p0:p0 + L]
                for p in range(L):
                    row[p] += bm
