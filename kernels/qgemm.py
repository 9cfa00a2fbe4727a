"""Exact integer GEMM A @ (B - bzp) for a constant 8-bit B without a float32 copy of B: column
blocks of B are widened to float32 in a cache-sized scratch buffer and multiplied there by
OpenBLAS's sgemm (called through its address, as kernels/convtile.py), one nogil numba call
per range of blocks, so the blocks run on the kernel threads. The caller guarantees every
partial sum is below 2**24 in magnitude (then float32 sums of integers are exact in any order).

Why: a float32 copy of an 8-bit weight matrix is 4x its size (ddddocr_ocr_int8's 1024 x 8210
MatMulInteger: 34 MB, half the gap to ORT's peak memory), and with a few activation rows the
GEMM streams B from memory anyway: reading 1 byte an element instead of 4 pays for the
widening."""
from __future__ import annotations

import numpy as np
from numba import njit

from .convtile import _sgemm_at


@njit(cache=True, nogil=True)
def blocks_u8(fptr, af, b, bz, y, nb, lo, hi):
    """y[:, blocks lo..hi of nb columns] = af @ (b - bz) with b (K, N) 8-bit, bz float32 of
    size 1 or N, af (M, K) float32 (integers), y (M, N) float32."""
    M, K = af.shape
    N = b.shape[1]
    buf = np.empty(K * nb, np.float32)
    per_col = bz.size > 1
    z0 = bz[0]
    for t in range(lo, hi):
        n0 = t * nb
        L = min(N, n0 + nb) - n0
        for k in range(K):
            src = b[k, n0:n0 + L]
            dst = buf[k * L:(k + 1) * L]
            if per_col:
                z = bz[n0:n0 + L]
                for j in range(L):
                    dst[j] = np.float32(src[j]) - z[j]
            else:
                for j in range(L):
                    dst[j] = np.float32(src[j]) - z0
        _sgemm_at(fptr, M, L, K, af, 0, K, buf, 0, L, np.float32(0.0), y, n0, N)
