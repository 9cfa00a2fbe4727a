"""Rounding kernels: float32 (or float64) values to any sign/E<=8/M<=23 format, by integer
manipulation of the bit patterns (numba cannot compute in float16).

All arithmetic is done in int64 so that numba never promotes a mixed signed/unsigned
expression to float64. A target format is described by four integers:

    m        mantissa bits (1..23)
    emin     unbiased exponent of the smallest normal (>= -126)
    maxbits  float32 bit pattern of the largest finite value (float64 pattern for the f64 kernels)
    has_inf  1 when the format has infinities (IEEE style), 0 for "fn" formats whose overflow is NaN

Values are rounded with an unbounded exponent range first and then checked against `maxbits`,
which is exactly IEEE 754's definition of overflow (and matches ml_dtypes for e4m3fn).

Nothing here compiles at import; every kernel is compiled on first call and cached on disk.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

# Rounding modes.
RNE, RTZ, RUP, RDOWN, STOCH = 0, 1, 2, 3, 4
# Overflow behaviour: IEEE rules for the rounding mode, always to inf (NaN without inf), clamp.
OV_NATURAL, OV_INF, OV_SAT = 0, 1, 2

# Below this many elements the parallel kernels cost more in thread start-up than they save.
PARALLEL_MIN = 1 << 16

_QNAN32 = 0x7FC00000
_INF32 = 0x7F800000
_QNAN64 = 0x7FF8000000000000
_INF64 = 0x7FF0000000000000
_ABS64 = 0x7FFFFFFFFFFFFFFF
_MANT64 = (1 << 52) - 1
_SIGN64 = np.int64(-(1 << 63))

_G = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S1 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(1)


def seed_key(seed: int) -> np.uint64:
    """splitmix64 of the user's seed, so that nearby seeds give unrelated streams."""
    z = (seed + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return np.uint64(z ^ (z >> 31))


@njit(cache=True, inline="always")
def _hash63(key, i):
    """Counter-based random number for element i: 63 uniform bits (splitmix64 finaliser)."""
    z = key + np.uint64(i) * _G
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    z = z ^ (z >> _S31)
    return np.int64(z >> _S1)


@njit(cache=True, inline="always")
def _round_up(rem, t, s, neg, mode, rnd):
    """1 when the magnitude must be rounded up, given the discarded bits rem (< 2**s) and the
    kept bits t (multiple of 2**s)."""
    if rem == 0:
        return 0
    if mode == RNE:
        half = np.int64(1) << (s - 1)
        if rem > half or (rem == half and ((t >> s) & 1) == 1):
            return 1
        return 0
    if mode == RUP:
        return 1 - neg
    if mode == RDOWN:
        return neg
    if mode == STOCH:
        # P(up) = rem / 2**s exactly: rnd >> (63 - s) is uniform on [0, 2**s).
        if rem > (rnd >> (63 - s)):
            return 1
        return 0
    return 0


@njit(cache=True, inline="always")
def _overflow(neg, mode, ov, has_inf, maxbits, inf_bits):
    """Magnitude bits of an overflowed result; -1 means NaN (a format without infinities)."""
    if ov == OV_SAT:
        return maxbits
    if ov == OV_NATURAL and (mode == RTZ or (mode == RUP and neg == 1) or (mode == RDOWN and neg == 0)):
        return maxbits
    if has_inf:
        return inf_bits
    return -1


@njit(cache=True, inline="always")
def round_bits64(u, m, emin, maxbits, has_inf, mode, daz, ftz, ov, rnd):
    """Round the float64 whose bit pattern is u (int64) once, to the target format; returns the
    float64 bit pattern of the result (exactly representable in float32)."""
    neg = 1 if u < 0 else 0
    sign = _SIGN64 if neg == 1 else np.int64(0)
    a = u & _ABS64
    if a >= _INF64:
        if a > _INF64:
            return sign | _QNAN64
        if ov == OV_SAT:
            return sign | maxbits
        if has_inf:
            return sign | _INF64
        return sign | _QNAN64
    be_min = emin + 1023
    minnorm = np.int64(be_min) << 52
    if daz != 0 and a < minnorm:
        return sign
    be = a >> 52
    if be < 1:
        be = 1
    if be >= be_min:
        s = 52 - m
        sig = a
    else:
        sig = a & _MANT64
        if a >= (np.int64(1) << 52):
            sig |= np.int64(1) << 52
        s = 52 - m + be_min - be
        if s > 62:
            s = 62
    rem = sig & ((np.int64(1) << s) - 1)
    t = sig - rem
    r = t + (_round_up(rem, t, s, neg, mode, rnd) << s)
    if be < be_min:
        k = r >> s
        if k == 0:
            r = 0
        else:  # always a float64 normal: emin - m >= -149
            r = np.int64(np.float64(k).view(np.uint64)) + (np.int64(emin - m) << 52)
    if r > maxbits:
        r = _overflow(neg, mode, ov, has_inf, maxbits, _INF64)
        if r < 0:
            return sign | _QNAN64
    if ftz != 0 and r < minnorm:
        r = 0
    return sign | r


@njit(cache=True)
def round64_serial(src, dst, m, emin, maxbits, has_inf, mode, daz, ftz, ov, key):
    """src: 1-D int64 view of float64 values; dst: int64 array of float64 result patterns."""
    for i in range(src.size):
        rnd = _hash63(key, i) if mode == STOCH else np.int64(0)
        dst[i] = round_bits64(src[i], m, emin, maxbits, has_inf, mode, daz, ftz, ov, rnd)


# ---- float32 input, every mode: the fast path --------------------------------------------

@njit(cache=True, inline="always")
def _bias(mode, v, s, neg, rnd):
    """What to add to v before dropping its low s bits so that the truncation rounds per mode."""
    mask = (np.int64(1) << s) - 1
    if mode == RNE:  # half - 1 + the kept lsb: ties go to even
        return (mask >> 1) + (((v >> s) & 1) if s > 0 else 0)
    if mode == RUP:
        return mask * (1 - neg)
    if mode == RDOWN:
        return mask * neg
    if mode == STOCH:  # carries iff rem > t, t uniform on [0, 2**s): P = rem / 2**s, as in _round_up
        return mask - (rnd >> (63 - s))
    return np.int64(0)


@njit(cache=True, inline="always")
def _fast_bits32(x, i, m, s, be_min, minnorm, down_scale, maxbits, has_inf, mode, daz, ftz, ov, key):
    """Round the float32 x (element i) to the target; returns the result's float32 bits.

    Both the target-normal and the target-subnormal results are computed and one is selected,
    with no data-dependent branch, so that LLVM vectorises the loop."""
    u = np.int64(np.float32(x).view(np.uint32))
    a = u & 0x7FFFFFFF
    sign = u - a
    neg = u >> 31
    rnd = _hash63(key, i) if mode == STOCH else np.int64(0)
    be = a >> 23
    # Target-normal: the quantum is 2**s float32 ulps; carries run into the exponent field.
    rn = (a + _bias(mode, a, s, neg, rnd)) & ~((np.int64(1) << s) - 1)
    # Target-subnormal: round the 24-bit significand to a multiple of 2**(emin-m), k quanta,
    # then k * 2**(emin-m) is exact in float32 (k <= 2**m fits int32).
    sig = (a & 0x7FFFFF) | (np.int64(0x800000) if be > 0 else np.int64(0))
    s2 = s + be_min - (be if be > 1 else np.int64(1))
    s2 = min(max(s2, np.int64(0)), np.int64(62))
    k = (sig + _bias(mode, sig, s2, neg, rnd)) >> s2
    rs = np.int64(np.float32(np.float32(np.int32(k)) * down_scale).view(np.uint32))
    r = rn if be >= be_min else rs
    if r > maxbits:
        gives_max = ov == OV_SAT or (ov == OV_NATURAL and (mode == RTZ or (mode == RUP and neg == 1)
                                                          or (mode == RDOWN and neg == 0)))
        r = maxbits if gives_max else (_INF32 if has_inf else _QNAN32)
    if ftz and r < minnorm:
        r = 0
    if daz and a < minnorm:
        r = 0
    if a == _INF32:
        r = maxbits if ov == OV_SAT else (_INF32 if has_inf else _QNAN32)
    if a > _INF32:  # NaN: quiet, sign kept; fp32 itself keeps the payload
        r = (a | 0x400000) if m == 23 else _QNAN32
    return sign | r


@njit(cache=True)
def round32_serial(src, dst, m, s, be_min, minnorm, down_scale, maxbits, has_inf, mode, daz, ftz, ov, key):
    """src: 1-D float32; dst: 1-D uint32 (may view the same memory)."""
    for i in range(src.size):
        dst[i] = _fast_bits32(src[i], i, m, s, be_min, minnorm, down_scale, maxbits, has_inf,
                              mode, daz, ftz, ov, key)


@njit(cache=True, parallel=True)
def round32_parallel(src, dst, m, s, be_min, minnorm, down_scale, maxbits, has_inf, mode, daz, ftz, ov, key):
    for i in prange(src.size):
        dst[i] = _fast_bits32(src[i], i, m, s, be_min, minnorm, down_scale, maxbits, has_inf,
                              mode, daz, ftz, ov, key)
# ---- nearest-even fast path (keep subnormals, IEEE overflow): the interpreter's hot loop ----

@njit(cache=True, inline="always")
def _rne_bits32(x, s, half_m1, lsb1, be_min, up_scale, down_scale, maxbits, has_inf):
    """Branch-free nearest-even rounding of the float32 x; s = 23 - m, lsb1 = (s > 0). Both paths are computed
    and one is selected, so that LLVM vectorises the loop."""
    u = np.int64(np.float32(x).view(np.uint32))
    a = u & 0x7FFFFFFF
    sign = u - a
    # Target-normal path: add half-ulp minus one plus the kept lsb, then truncate; carries run
    # into the exponent and on to the infinity pattern.
    rn = (a + half_m1 + ((a >> s) & lsb1)) & ~((np.int64(1) << s) - 1)
    # Target-subnormal path: |x| * 2**(m-emin) < 2**m <= 2**23, so adding and removing 2**23
    # rounds it to an integer k, nearest-even, exactly; k * 2**(emin-m) is then exact too.
    f = np.abs(x) * up_scale
    k = (f + np.float32(8388608.0)) - np.float32(8388608.0)
    rs = np.int64(np.float32(k * down_scale).view(np.uint32))
    r = rn if (a >> 23) >= be_min else rs
    if r > maxbits:
        r = _INF32 if has_inf else _QNAN32
    if a > _INF32:
        r = _QNAN32
    return sign | r


@njit(cache=True)
def rne32_serial(src, dst, s, half_m1, lsb1, be_min, up_scale, down_scale, maxbits, has_inf):
    """src: 1-D float32, dst: 1-D uint32 (may view the same memory)."""
    for i in range(src.size):
        dst[i] = _rne_bits32(src[i], s, half_m1, lsb1, be_min, up_scale, down_scale, maxbits, has_inf)


@njit(cache=True, parallel=True)
def rne32_parallel(src, dst, s, half_m1, lsb1, be_min, up_scale, down_scale, maxbits, has_inf):
    for i in prange(src.size):
        dst[i] = _rne_bits32(src[i], s, half_m1, lsb1, be_min, up_scale, down_scale, maxbits, has_inf)
