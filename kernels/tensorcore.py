"""Bit-accurate block-FMA model of NVIDIA tensor cores (Fasi et al. 2021; Khattak & Mikaitis).

One block computes D = C + sum_{i<K} a_i*b_i:
  * the K products are exact;
  * every product and C is placed in a fixed-point window anchored at the largest exponent among
    them. A product's exponent is ea+eb (its significand lies in [1,4), two integer bits), C's is
    its own; zero terms take no part. The window keeps w = 23 + extra_bits fraction bits below
    that exponent and truncates (toward zero) everything beneath;
  * the truncated terms are added exactly, and the sum is normalized once and rounded toward
    zero to fp32, or to nearest-even to fp16.
Fitted against the GPU measurements in tests/data/tensorcore: the alignment exponent of a
product is ea+eb, not the exponent of the exact product (the latter misses hundreds of cases).
Subnormal inputs take the format's minimum exponent (what the hardware sees in the exponent
field).

Implementations of the same arithmetic, checked against each other and against the GPU data:
  * dot_scalar: the reference, integer significands and exponents, window sums in int64; it
    also handles inf/NaN. block_fma_batch runs it row-wise.
  * _gemm_kernel: the GEMM. fp32 output rounded toward zero (every preset's own output) with
    inputs in [2**-30, 2**31) (always for fp16/fp8) goes to the register-tiled kernel of
    kernels.tc_tile (int32 block sums in AVX2 registers, see there). Otherwise it is vectorized
    over output columns and parallel over rows; it holds the window's integers in float64,
    where they are exact (argument at the fast-path section), or, when the inputs' range
    allows, runs the products' passes in float32/int32 (_gemm_core32), with the same bits.
    Elements with non-finite values go to dot_scalar.

Formats are given by code: see FORMATS. Values handed to the kernels must be representable in
their format, except that a raw fp32 for tf32 is truncated to 10 fraction bits, as the
hardware does.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .tc_tile import tile_area as _tile_area, tile_gemm

# code -> (fraction bits, minimum normal exponent, largest finite, overflow gives NaN)
FORMATS = {
    "fp16": (10, -14, 65504.0, False),
    "bf16": (7, -126, float(np.float32(3.3895313892515355e38)), False),
    "tf32": (10, -126, float(np.finfo(np.float32).max), False),
    "fp8-e4m3": (3, -6, 448.0, True),
    "fp8-e5m2": (2, -14, 57344.0, False),
}

ZERO_EXP = -(1 << 20)  # exponent given to zeros: below every real one, so they never set the max
_F32_MAX = float(np.finfo(np.float32).max)


@njit(cache=True, inline="always")
def _pow2(n):
    # 2.0**n for -1022 <= n <= 1023, built from the bits (no libm call, vectorizes)
    return np.int64((n + 1023) << 52).view(np.float64)


@njit(cache=True, inline="always")
def _f64_exponent(v):
    return np.int32(((np.float64(v).view(np.int64) >> 52) & 0x7FF) - 1023)


@njit(cache=True, inline="always")
def _round_rne(v, mbits, emin):
    """Nearest-even rounding of float64 v to mbits fraction bits, exponent >= emin (subnormals
    kept), no overflow check. Exact: scaling by powers of two and rint are exact in float64."""
    e = _f64_exponent(v)
    if e < emin:
        e = emin
    q = e - mbits
    return np.rint(v * _pow2(-q)) * _pow2(q)


@njit(cache=True)
def round_to_format(x, mbits, emin, maxfinite, ovf_nan, truncate):
    """Round a float32 array to a format (nearest-even, or truncation toward zero for tf32).
    Overflow gives inf (NaN for formats without inf); NaN and inf pass through."""
    out = np.empty(x.shape, np.float32)
    xf = x.ravel()
    of = out.reshape(-1)
    for i in range(xf.size):
        v = xf[i]
        if not np.isfinite(v):
            if ovf_nan and not np.isnan(v):
                of[i] = np.float32(np.nan)
            else:
                of[i] = v
            continue
        if truncate:
            bits = np.float32(v).view(np.int32)
            of[i] = np.int32(bits & ~((1 << (23 - mbits)) - 1)).view(np.float32)
            continue
        r = _round_rne(np.float64(v), mbits, emin)
        if abs(r) > maxfinite:
            r = np.nan if ovf_nan else (np.inf if r > 0 else -np.inf)
        of[i] = np.float32(r)
    return out


@njit(cache=True)
def decompose(x, mbits, emin):
    """Split float32 values (finite, representable in the format) into signed integer
    significands m and exponents e with x = m * 2^(e - mbits), e >= emin. Zeros get ZERO_EXP;
    non-finite values get m = 0 (the callers route them to the special path)."""
    m = np.empty(x.shape, np.int32)
    e = np.empty(x.shape, np.int32)
    xf = x.ravel()
    mf = m.reshape(-1)
    ef = e.reshape(-1)
    for i in range(xf.size):
        bits = np.float32(xf[i]).view(np.int32)
        be = (bits >> 23) & 0xFF
        frac = bits & 0x7FFFFF
        if be == 0xFF or (be == 0 and frac == 0):
            mf[i] = 0
            ef[i] = ZERO_EXP
            continue
        if be == 0:
            ex = -126
        else:
            ex = be - 127
            frac |= 0x800000
        ee = ex if ex > emin else emin
        mag = frac >> (23 - mbits + ee - ex)  # exact for representable values, truncates tf32
        if mag == 0:
            mf[i] = 0
            ef[i] = ZERO_EXP
            continue
        mf[i] = -mag if bits < 0 else mag
        ef[i] = ee
    return m, e


@njit(cache=True, inline="always")
def _split_c(c, c_emin):
    """Accumulator C (finite float32) as (signed significand with 23 fraction bits, exponent)."""
    bits = np.float32(c).view(np.int32)
    be = (bits >> 23) & 0xFF
    frac = np.int64(bits & 0x7FFFFF)
    if be == 0:
        ex = np.int32(-126)
    else:
        ex = np.int32(be - 127)
        frac |= 0x800000
    if frac == 0:
        return np.int64(0), np.int32(ZERO_EXP)
    if ex < c_emin:  # fp16 accumulator: subnormal C sits at fp16's minimum exponent
        frac >>= c_emin - ex
        ex = np.int32(c_emin)
    if bits < 0:
        frac = -frac
    return frac, ex


@njit(cache=True, inline="always")
def _finish(s, emax, w, out16, rne):
    """Round the exact block sum s * 2^(emax - w) to the output format (returns float32)."""
    if s == 0:
        return np.float32(0.0)
    v = np.float64(s) * _pow2(emax - w)  # exact: |s| < 2^40, exponent within float64 range
    if out16:
        if rne:
            r = _round_rne(v, 10, -14)
        else:
            r = _trunc(v, 10, -14)
        if abs(r) > 65504.0:
            if rne:
                r = np.inf if r > 0 else -np.inf
            else:
                r = 65504.0 if r > 0 else -65504.0
        return np.float32(r)
    if rne:
        r = _round_rne(v, 23, -126)
        if abs(r) > _F32_MAX:
            r = np.inf if r > 0 else -np.inf
    else:
        r = _trunc(v, 23, -126)
        if abs(r) > _F32_MAX:  # toward zero, overflow stops at the largest finite (IEEE RZ)
            r = _F32_MAX if r > 0 else -_F32_MAX
    return np.float32(r)


@njit(cache=True, inline="always")
def _trunc(v, mbits, emin):
    e = _f64_exponent(v)
    if e < emin:
        e = emin
    q = e - mbits
    return np.trunc(v * _pow2(-q)) * _pow2(q)


@njit(cache=True)
def _block_special(a, b, c, k0, k1):
    """Result of a block with a non-finite input or C: NaN if any NaN, inf*0 or inf-inf,
    else the signed infinity. Returns (is_special, value)."""
    pinf = False
    ninf = False
    nan = np.isnan(c)
    if np.isinf(c):
        if c > 0:
            pinf = True
        else:
            ninf = True
    for k in range(k0, k1):
        x = a[k]
        y = b[k]
        if np.isnan(x) or np.isnan(y):
            nan = True
        elif np.isinf(x) or np.isinf(y):
            if x == 0 or y == 0:
                nan = True
            elif (x > 0) == (y > 0):
                pinf = True
            else:
                ninf = True
    if nan or (pinf and ninf):
        return True, np.float32(np.nan)
    if pinf:
        return True, np.float32(np.inf)
    if ninf:
        return True, np.float32(-np.inf)
    return False, np.float32(0.0)


@njit(cache=True)
def dot_scalar(a, b, c, blk, w, ma, emin_a, mb, emin_b, out16, rne):
    """One output element: chained blocks of blk products over float32 vectors a, b (values in
    their formats), starting from accumulator c (already in the output format)."""
    n = a.shape[0]
    L = w - ma - mb  # products carry ma+mb fraction bits, the window w
    lsh = L if L > 0 else 0
    rsh = -L if L < 0 else 0
    c_emin = -14 if out16 else -126
    acc = np.float32(c)
    am, ae = decompose(a, ma, emin_a)
    bm, be = decompose(b, mb, emin_b)
    for k0 in range(0, n, blk):
        k1 = min(k0 + blk, n)
        special, val = _block_special(a, b, acc, k0, k1)
        if special:
            acc = val
            continue
        cm, ce = _split_c(acc, c_emin)
        emax = ce
        for k in range(k0, k1):
            if am[k] != 0 and bm[k] != 0:
                x = ae[k] + be[k]
                if x > emax:
                    emax = x
        if cm == 0 and emax == ZERO_EXP:
            acc = np.float32(0.0)
            continue
        s = np.int64(0)
        if cm != 0:
            sh = emax - ce + 23 - w
            mag = abs(cm)
            if sh >= 0:
                mag = mag >> min(sh, 62)
            else:
                mag = mag << (-sh)
            s = -mag if cm < 0 else mag
        for k in range(k0, k1):
            p = np.int64(am[k]) * np.int64(bm[k])
            if p != 0:
                sh = emax - (ae[k] + be[k]) + rsh
                mag = (abs(p) << lsh) >> min(sh, 62)
                s += -mag if p < 0 else mag
        acc = _finish(s, emax, w, out16, rne)
    return acc


@njit(cache=True)
def _any_nonfinite_rows(x):
    nb, r, n = x.shape
    out = np.zeros((nb, r), np.bool_)
    for b in range(nb):
        for i in range(r):
            for k in range(n):
                if not np.isfinite(x[b, i, k]):
                    out[b, i] = True
                    break
    return out


@njit(cache=True)
def _any_nonfinite_cols(x):
    nb, n, c = x.shape
    out = np.zeros((nb, c), np.bool_)
    for b in range(nb):
        for k in range(n):
            for j in range(c):
                if not np.isfinite(x[b, k, j]):
                    out[b, j] = True
    return out


# ---- fast GEMM path ------------------------------------------------------------------------
# Same arithmetic as dot_scalar, laid out for SIMD: the integers of the fixed-point window are
# held in float64, where every step is exact:
#   * an input is its float64 value v and the scale 2^-e of its alignment exponent; a product's
#     scale 2^-(ea+eb) is a product of two powers of two (|ea+eb| <= 260, in range);
#   * the block maximum exponent is the minimum scale g; G = g * 2^w maps the window's last bit
#     to 1, so trunc(a*b*G) is the truncated aligned product (a*b has <= 22 significant bits, and
#     scaling by a power of two stays far from float64's subnormals);
#   * each term is < 2^(w+2) <= 2^29 and a block adds at most 65 of them: the sum is an
#     integer < 2^36, exact in float64 in any order.
_NO_EXP = 2.0 ** 900  # scale of zeros: larger than any real one, so they never set the maximum


@njit(cache=True, parallel=True)
def _prepare(x, mbits, emin):
    """(value, 2^-exponent) of each input, truncated to the format (a no-op for representable
    values, the hardware's tf32 truncation of raw fp32); zeros and non-finite: (0, _NO_EXP)."""
    v = np.empty(x.shape, np.float64)
    g = np.empty(x.shape, np.float64)
    xf = x.ravel()
    vf = v.reshape(-1)
    gf = g.reshape(-1)
    for i in prange(xf.size):
        bits = np.float32(xf[i]).view(np.int32)
        be = (bits >> 23) & 0xFF
        ex = be - 127 if be > 0 else -126
        ex = ex if ex > emin else emin
        val = np.trunc(np.float64(xf[i]) * _pow2(mbits - ex)) * _pow2(ex - mbits)
        if be == 0xFF or val == 0.0:
            vf[i] = 0.0
            gf[i] = _NO_EXP
        else:
            vf[i] = val
            gf[i] = _pow2(-ex)
    return v, g


@njit(cache=True, inline="always")
def _c_scale(c, c_emin):
    # 2^-(alignment exponent) of the accumulator C (a finite float32)
    bits = np.int64(np.float32(c).view(np.int32))
    ex = ((bits >> 23) & 0xFF) - 127
    ex = ex if ex > c_emin else c_emin  # fp32 subnormals sit at -126, fp16 ones at -14
    return _NO_EXP if (bits & 0x7FFFFFFF) == 0 else np.int64((1023 - ex) << 52).view(np.float64)


@njit(cache=True, inline="always")
def _inv_pow2(x):
    # 1/x for a normal power of two, from the bits (no division)
    return np.int64((np.int64(2046) << 52) - np.float64(x).view(np.int64)).view(np.float64)


@njit(cache=True, inline="always")
def _fin_rz(v, mbits, emin, big):
    """v (float64) toward zero to mbits fraction bits, exponent >= emin; clamps at +-big."""
    bits = np.float64(v).view(np.int64)
    e = ((bits >> 52) & 0x7FF) - 1023
    d = emin - e
    d = d if d > 0 else 0
    drop = 52 - mbits + d
    drop = 63 if drop > 52 else drop  # below the smallest subnormal: +-0
    r = np.int64(bits & ~((np.int64(1) << drop) - 1)).view(np.float64)
    r = r if r < big else big
    r = r if r > -big else -big
    return np.float32(r)


@njit(cache=True, inline="always")
def _fin_rne(v, mbits, emin, big):
    """v (float64) to nearest-even with mbits fraction bits, exponent >= emin; inf beyond big."""
    bits = np.float64(v).view(np.int64)
    e = ((bits >> 52) & 0x7FF) - 1023
    e = e if e > emin else emin
    q = e - mbits
    r = np.rint(v * np.int64((1023 - q) << 52).view(np.float64)) \
        * np.int64((1023 + q) << 52).view(np.float64)
    r = r * np.inf if abs(r) > big else r
    return np.float32(r)


@njit(cache=True, inline="always")
def _min32(x, y):
    return x if x < y else y


@njit(cache=True, inline="always")
def _min_scales(arg, bg, k0, k1, q):
    """q[j] <- min(q[j], arg[k] * bg[k, j] for k0 <= k < k1): the scale of the largest product
    exponent of each column. k unrolled by 8 and 4: one load/store of q per several products."""
    N = q.size
    k8 = k0 + (k1 - k0) // 8 * 8
    k4 = k8 + (k1 - k8) // 4 * 4
    for k in range(k0, k8, 8):
        x0 = arg[k]; x1 = arg[k + 1]; x2 = arg[k + 2]; x3 = arg[k + 3]
        x4 = arg[k + 4]; x5 = arg[k + 5]; x6 = arg[k + 6]; x7 = arg[k + 7]
        b0 = bg[k]; b1 = bg[k + 1]; b2 = bg[k + 2]; b3 = bg[k + 3]
        b4 = bg[k + 4]; b5 = bg[k + 5]; b6 = bg[k + 6]; b7 = bg[k + 7]
        for j in range(N):
            y0 = _min32(_min32(x0 * b0[j], x1 * b1[j]), _min32(x2 * b2[j], x3 * b3[j]))
            y4 = _min32(_min32(x4 * b4[j], x5 * b5[j]), _min32(x6 * b6[j], x7 * b7[j]))
            q[j] = _min32(q[j], _min32(y0, y4))
    for k in range(k8, k4, 4):
        x0 = arg[k]; x1 = arg[k + 1]; x2 = arg[k + 2]; x3 = arg[k + 3]
        b0 = bg[k]; b1 = bg[k + 1]; b2 = bg[k + 2]; b3 = bg[k + 3]
        for j in range(N):
            q[j] = _min32(q[j], _min32(_min32(x0 * b0[j], x1 * b1[j]), _min32(x2 * b2[j], x3 * b3[j])))
    for k in range(k4, k1):
        xa = arg[k]
        brg = bg[k]
        for j in range(N):
            q[j] = _min32(q[j], xa * brg[j])


@njit(cache=True, inline="always")
def _finish_row(s, t, g, acc, rne, mbits, c_emin, big):
    """acc[j] <- the block sum s[j] + t[j] (window units, G = g[j]) rounded to the output
    format; g[j] <- the scale of the new acc[j] (the next block's C). t: the float32 core's
    int32 sum of its last products (zeros for the float64 core)."""
    # the rounding mode is fixed per call: branch outside the loops so they vectorize
    if rne:
        for j in range(s.size):
            x = _fin_rne((s[j] + np.float64(t[j])) * _inv_pow2(g[j]), mbits, c_emin, big)
            acc[j] = x
            g[j] = _c_scale(x, c_emin)
    else:
        for j in range(s.size):
            x = _fin_rz((s[j] + np.float64(t[j])) * _inv_pow2(g[j]), mbits, c_emin, big)
            acc[j] = x
            g[j] = _c_scale(x, c_emin)


def _gemm_kernel(a: np.ndarray, b: np.ndarray, c: np.ndarray, blk: int, w: int, ma: int, emin_a: int,
                 mb: int, emin_b: int, out16: bool, rne: bool) -> np.ndarray:
    """a [nb, M, K], b [nb, K, N], c [nb, M, N] (float32, C-contiguous, writable; c already in
    the output format) -> D [nb, M, N] float32."""
    if not out16 and not rne:
        d = _tiled(a, b, c, blk, w, ma, emin_a, mb, emin_b)
        if d is not None:
            _fix_special(a, b, c, d, blk, w, ma, emin_a, mb, emin_b, out16, rne)
            return d
    av, ag, aok = _prepare32(a, ma, emin_a)
    bv, bg, bok = _prepare32(b, mb, emin_b)
    if aok and bok and w <= 26:
        return _gemm_core32(a, b, av, ag, bv, bg, c, blk, w, ma, emin_a, mb, emin_b, out16, rne)
    av, ag = _prepare(a, ma, emin_a)
    bv, bg = _prepare(b, mb, emin_b)
    return _gemm_core(a, b, av, ag, bv, bg, c, blk, w, ma, emin_a, mb, emin_b, out16, rne)


def _tiled(a: np.ndarray, b: np.ndarray, c: np.ndarray, blk: int, w: int, ma: int, emin_a: int,
           mb: int, emin_b: int) -> np.ndarray | None:
    """The register-tiled kernel (kernels.tc_tile: fp32 output, toward zero), on D or on
    D^T = B^T A^T, whichever pads less (a product and its alignment exponent are symmetric in
    a and b); None where its conditions fail. Non-finite inputs are left to _fix_special."""
    M, N = a.shape[1], b.shape[2]
    if _tile_area(N, M) < _tile_area(M, N):
        d = tile_gemm(b.transpose(0, 2, 1), a.transpose(0, 2, 1), c.transpose(0, 2, 1), blk, w,
                      mb, emin_b, ma, emin_a)
        return None if d is None else np.ascontiguousarray(d.transpose(0, 2, 1))
    d = tile_gemm(a, b, c, blk, w, ma, emin_a, mb, emin_b)
    return None if d is None else np.ascontiguousarray(d)


@njit(cache=True, parallel=True)
def _gemm_core(a, b, av, ag, bv, bg, c, blk, w, ma, emin_a, mb, emin_b, out16, rne):
    nb, M, K = a.shape
    N = b.shape[2]
    c_emin = -14 if out16 else -126
    mbits = 10 if out16 else 23
    big = 65504.0 if out16 else _F32_MAX
    tw = _pow2(w)
    out = np.empty((nb, M, N), np.float32)
    for r in prange(nb * M):
        bi = r // M
        i = r % M
        arv = av[bi, i]
        arg = ag[bi, i]
        g = np.empty(N, np.float64)  # per column: scale of the block's largest exponent
        s = np.empty(N, np.float64)  # per column: the exact window sum
        t0 = np.zeros(N, np.int32)
        acc = c[bi, i].copy()
        for j in range(N):
            g[j] = _c_scale(acc[j], c_emin)
        for k0 in range(0, K, blk):
            k1 = min(k0 + blk, K)
            _min_scales(arg, bg[bi], k0, k1, g)
            # k unrolled by 8 and 4: one load/store of s per column for several products
            k8 = k0 + (k1 - k0) // 8 * 8
            k4 = k8 + (k1 - k8) // 4 * 4
            for j in range(N):
                G = g[j] * tw
                g[j] = G
                s[j] = np.trunc(np.float64(acc[j]) * G)
            for k in range(k0, k8, 8):
                x0 = arv[k]; x1 = arv[k + 1]; x2 = arv[k + 2]; x3 = arv[k + 3]
                x4 = arv[k + 4]; x5 = arv[k + 5]; x6 = arv[k + 6]; x7 = arv[k + 7]
                b0 = bv[bi, k]; b1 = bv[bi, k + 1]; b2 = bv[bi, k + 2]; b3 = bv[bi, k + 3]
                b4 = bv[bi, k + 4]; b5 = bv[bi, k + 5]; b6 = bv[bi, k + 6]; b7 = bv[bi, k + 7]
                for j in range(N):
                    G = g[j]
                    s[j] += ((np.trunc(x0 * b0[j] * G) + np.trunc(x1 * b1[j] * G)) +
                             (np.trunc(x2 * b2[j] * G) + np.trunc(x3 * b3[j] * G))) + \
                            ((np.trunc(x4 * b4[j] * G) + np.trunc(x5 * b5[j] * G)) +
                             (np.trunc(x6 * b6[j] * G) + np.trunc(x7 * b7[j] * G)))
            for k in range(k8, k4, 4):
                x0 = arv[k]; x1 = arv[k + 1]; x2 = arv[k + 2]; x3 = arv[k + 3]
                b0 = bv[bi, k]; b1 = bv[bi, k + 1]; b2 = bv[bi, k + 2]; b3 = bv[bi, k + 3]
                for j in range(N):
                    G = g[j]
                    s[j] += (np.trunc(x0 * b0[j] * G) + np.trunc(x1 * b1[j] * G)) + \
                            (np.trunc(x2 * b2[j] * G) + np.trunc(x3 * b3[j] * G))
            for k in range(k4, k1):
                xa = arv[k]
                brv = bv[bi, k]
                for j in range(N):
                    s[j] += np.trunc(xa * brv[j] * g[j])
            _finish_row(s, t0, g, acc, rne, mbits, c_emin, big)
        out[bi, i] = acc
    _fix_special(a, b, c, out, blk, w, ma, emin_a, mb, emin_b, out16, rne)
    return out


@njit(cache=True, parallel=True)
def _fix_special(a, b, c, out, blk, w, ma, emin_a, mb, emin_b, out16, rne):
    """Recompute through dot_scalar the rare outputs with non-finite inputs or C, or an fp16
    accumulator that overflowed on the way (the fast cores leave them unspecified)."""
    nb, M, K = a.shape
    N = b.shape[2]
    rowbad = _any_nonfinite_rows(a)
    colbad = _any_nonfinite_cols(b)
    for r in prange(nb * M):
        bi = r // M
        i = r % M
        for j in range(N):
            if rowbad[bi, i] or colbad[bi, j] or not np.isfinite(c[bi, i, j]) \
                    or not np.isfinite(out[bi, i, j]):
                out[bi, i, j] = dot_scalar(a[bi, i, :], b[bi, :, j].copy(), c[bi, i, j],
                                           blk, w, ma, emin_a, mb, emin_b, out16, rne)


# ---- float32 variant ----------------------------------------------------------------------
# When every nonzero input lies in [2**-30, 2**31) (always for fp16 and fp8; for bf16/tf32 when
# the data allow) the products' passes fit float32 and int32, twice the SIMD width of float64:
#   * scales 2^-e are exact float32 powers of two, a product of two within [2^-62, 2^60];
#     zeros and non-finite inputs get inf, which never sets the minimum;
#   * a*b (<= 22 significant bits, |a*b| in [2^-60, 2^62]) is exact in float32, and so is
#     a*b*G for G = 2^(w - emax) in [2^-114, 2^87] whenever a*b*G >= 1 (G is clamped to 2^100
#     only when every product of the block is zero); below 1 it truncates to 0 either way;
#   * each truncated term is an integer < 2^(w+2) <= 2^28 (w <= 26: extra_bits <= 3, all the
#     presets), converted to int32 by truncation (cvttps2dq) and summed in int32 while the
#     sum cannot overflow (see kc), then added to the float64 sum.
# C's term, the block maximum with C and the rounding stay in float64 as in _gemm_core.
_G32_MAX = 2.0 ** 100


@njit(cache=True, parallel=True)
def _prepare32(x, mbits, emin):
    """float32 (value, 2^-exponent) as _prepare (zeros, non-finite: (0, inf)) and whether every
    nonzero finite value lies in [2**-30, 2**31)."""
    v = np.empty(x.shape, np.float32)
    g = np.empty(x.shape, np.float32)
    xf = x.ravel()
    vf = v.reshape(-1)
    gf = g.reshape(-1)
    bad = 0
    for i in prange(xf.size):
        bits = np.float32(xf[i]).view(np.int32)
        be = (bits >> 23) & 0xFF
        ex = be - 127 if be > 0 else -126
        ex = ex if ex > emin else emin
        val = np.trunc(np.float64(xf[i]) * _pow2(mbits - ex)) * _pow2(ex - mbits)
        if be == 0xFF or val == 0.0:
            vf[i] = 0.0
            gf[i] = np.inf
        else:
            vf[i] = val
            gf[i] = np.float32(_pow2(-ex))
            av = abs(val)
            bad += 1 if (av < 2.0 ** -30 or av >= 2.0 ** 31) else 0
    return v, g, bad == 0


@njit(cache=True)
def _gemm_core32(a, b, av, ag, bv, bg, c, blk, w, ma, emin_a, mb, emin_b, out16, rne):
    nb, M, K = a.shape
    N = b.shape[2]
    c_emin = -14 if out16 else -126
    mbits = 10 if out16 else 23
    big = 65504.0 if out16 else _F32_MAX
    tw = _pow2(w)
    # products summed in int32 between flushes into the float64 sum: a whole block where
    # blk terms of at most 2^(w+2) - 1 fit (every preset), else 8 (w <= 26)
    kc = blk if blk * ((1 << (w + 2)) - 1) <= (1 << 31) - 1 else 8
    out = np.empty((nb, M, N), np.float32)
    _core32_rows(av, ag, bv, bg, c, out, blk, kc, tw, mbits, c_emin, big, rne)
    _fix_special(a, b, c, out, blk, w, ma, emin_a, mb, emin_b, out16, rne)
    return out


@njit(cache=True, parallel=True)
def _core32_rows(av, ag, bv, bg, c, out, blk, kc, tw, mbits, c_emin, big, rne):
    """The rows of _gemm_core32, in parallel."""
    nb, M, K = av.shape
    N = bv.shape[2]
    for r in prange(nb * M):
        bi = r // M
        i = r % M
        arv = av[bi, i]
        arg = ag[bi, i]
        g = np.empty(N, np.float64)    # per column: C's scale, then G = 2^w / 2^emax
        q = np.empty(N, np.float32)    # per column: min product scale, then G clamped
        s = np.empty(N, np.float64)    # per column: the exact window sum
        t = np.empty(N, np.int32)      # per column: sum of the current chunk of products
        acc = c[bi, i].copy()
        for j in range(N):
            g[j] = _c_scale(acc[j], c_emin)
        for k0 in range(0, K, blk):
            k1 = min(k0 + blk, K)
            q[:] = np.inf
            _min_scales(arg, bg[bi], k0, k1, q)
            for j in range(N):
                G = _min32(g[j], np.float64(q[j])) * tw
                g[j] = G
                q[j] = np.float32(_min32(G, _G32_MAX))
                s[j] = np.trunc(np.float64(acc[j]) * G)
            for c0 in range(k0, k1, kc):
                c1 = min(c0 + kc, k1)
                c8 = c0 + (c1 - c0) // 8 * 8
                t[:] = 0
                for k in range(c0, c8, 8):
                    x0 = arv[k]; x1 = arv[k + 1]; x2 = arv[k + 2]; x3 = arv[k + 3]
                    x4 = arv[k + 4]; x5 = arv[k + 5]; x6 = arv[k + 6]; x7 = arv[k + 7]
                    b0 = bv[bi, k]; b1 = bv[bi, k + 1]; b2 = bv[bi, k + 2]; b3 = bv[bi, k + 3]
                    b4 = bv[bi, k + 4]; b5 = bv[bi, k + 5]; b6 = bv[bi, k + 6]; b7 = bv[bi, k + 7]
                    for j in range(N):
                        G = q[j]
                        t[j] += ((np.int32(x0 * b0[j] * G) + np.int32(x1 * b1[j] * G)) +
                                 (np.int32(x2 * b2[j] * G) + np.int32(x3 * b3[j] * G))) + \
                                ((np.int32(x4 * b4[j] * G) + np.int32(x5 * b5[j] * G)) +
                                 (np.int32(x6 * b6[j] * G) + np.int32(x7 * b7[j] * G)))
                c4 = c8 + (c1 - c8) // 4 * 4
                for k in range(c8, c4, 4):
                    x0 = arv[k]; x1 = arv[k + 1]; x2 = arv[k + 2]; x3 = arv[k + 3]
                    b0 = bv[bi, k]; b1 = bv[bi, k + 1]; b2 = bv[bi, k + 2]; b3 = bv[bi, k + 3]
                    for j in range(N):
                        G = q[j]
                        t[j] += (np.int32(x0 * b0[j] * G) + np.int32(x1 * b1[j] * G)) + \
                                (np.int32(x2 * b2[j] * G) + np.int32(x3 * b3[j] * G))
                for k in range(c4, c1):
                    xa = arv[k]
                    brv = bv[bi, k]
                    for j in range(N):
                        t[j] += np.int32(xa * brv[j] * q[j])
                if c1 < k1:  # the last chunk's t goes to the finish directly
                    for j in range(N):
                        s[j] += np.float64(t[j])
            _finish_row(s, t, g, acc, rne, mbits, c_emin, big)
        out[bi, i] = acc


@njit(cache=True, parallel=True)
def block_fma_batch(a, b, c, blk, w, ma, emin_a, mb, emin_b, out16, rne):
    """Row-wise chained dot products through the int64 reference path: a, b [n, K], c [n]
    (already in the output format). Used for single blocks, where clarity beats speed."""
    n = a.shape[0]
    out = np.empty(n, np.float32)
    for r in prange(n):
        out[r] = dot_scalar(a[r], b[r], c[r], blk, w, ma, emin_a, mb, emin_b, out16, rne)
    return out


def tc_gemm(a: np.ndarray, b: np.ndarray, c: np.ndarray | None = None, *, k: int,
            extra_bits: int, rounding: str = "toward-zero", out_format: str = "fp32",
            in_a: str = "fp16", in_b: str | None = None) -> np.ndarray:
    """D = A @ B + C with chained tensor-core blocks of k products, batched over a leading dim.

    a: float32 [M, K] or [nb, M, K], b: [K, N] or [nb, K, N] (values representable in in_a /
    in_b; tf32 is truncated), c: broadcastable to [.., M, N] or None (zero). C is first rounded
    to the output format (nearest-even; the fp16 accumulator holds fp16). rounding of each
    block's result: "toward-zero" or "nearest-even". Returns float32."""
    from halfsim.errors import HalfsimError
    in_b = in_a if in_b is None else in_b
    for f in (in_a, in_b):
        if f not in FORMATS:
            raise HalfsimError(f"tc_gemm: unknown input format {f!r} (known: {', '.join(FORMATS)})")
    if rounding not in ("toward-zero", "nearest-even") or out_format not in ("fp32", "fp16"):
        raise HalfsimError(f"tc_gemm: rounding {rounding!r} / out_format {out_format!r} not supported")
    ma, emin_a = FORMATS[in_a][:2]
    mb, emin_b = FORMATS[in_b][:2]
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    two_d = a.ndim == 2
    if two_d:
        a, b = a[None], b[None]
    if a.ndim != 3 or b.ndim != 3 or a.shape[0] != b.shape[0] or a.shape[2] != b.shape[1]:
        raise HalfsimError(f"tc_gemm: shapes {a.shape} and {b.shape} do not multiply")
    nb, M, K = a.shape
    N = b.shape[2]
    out16 = out_format == "fp16"
    if c is None:
        c3 = np.zeros((nb, M, N), np.float32)
    else:
        c3 = np.require(np.broadcast_to(np.asarray(c, np.float32), (nb, M, N)), np.float32, ["C", "W"])
        if out16:
            c3 = round_to_format(c3, 10, -14, 65504.0, False, False)
    # writable C-contiguous arrays: the same numba signature as halfsim.tensorcore.gemm's calls
    d = _gemm_kernel(np.require(a, np.float32, ["C", "W"]), np.require(b, np.float32, ["C", "W"]), c3, int(k),
                     23 + int(extra_bits), ma, emin_a, mb, emin_b, out16, rounding == "nearest-even")
    return d[0] if two_d else d
