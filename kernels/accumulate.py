"""Inner products and reductions whose running sum is kept in a narrow accumulate format.

The accumulate format is IEEE-like with `ebits` exponent bits (2..8) and `mbits` mantissa bits
(1..23): subnormals kept, overflow to inf, NaN propagates, nearest-even after every step.
Inputs are float32 arrays; outputs are float32 arrays holding values of the format.

Orders (`order=`):
  sequential  acc = rnd(acc + rnd(a_k*b_k)) for k = 0, 1, ...; with fma=True
              acc = rnd(acc + a_k*b_k), one rounding of the exact value.
  pairwise    leaves are the products (rounded to the format unless fma=True, in which case the
              first additions round the exact sum of two exact products); each level adds
              neighbours (0+1, 2+3, ...) with one rounding, an odd last element moves up a level
              unchanged.
  blocked     products of `block` consecutive k are summed exactly and rounded once, then the
              block results are accumulated sequentially with rounding (fma does not apply).
sum_acc uses the same orders with the input values in place of products (not rounded first);
its sequential sum starts from the first value, as numpy's reduce does (-0 + -0 = -0).

How exactness is obtained (no float16 arithmetic exists in numba):
* A product of two float32 values is exact in float64 (48 significant bits, exponent range
  well inside float64's).
* A two-term sum x = acc + p is added in float64 (s = fl(x)) and its exact error e is
  recovered with TwoSum. If e != 0 and s has an even last bit, s is moved one float64 ulp
  toward x: this is round-to-odd, and rounding a round-to-odd intermediate of at least
  M+3 bits (53 here, M <= 23) to M+1 bits nearest-even equals rounding x directly. So each
  step is one correct rounding however far apart the exponents of acc and p are.
* A block's exact sum is kept as a non-overlapping expansion (Shewchuk's grow-expansion, as
  Python's math.fsum does) and turned into a round-to-odd float64 the same way.

Fast path (sequential matmul, the hot case): rows of `a` for which a cheap pre-pass proves
(1) every product is exact in float32 (significands fit 24 bits, nothing under 2**-149),
(2) no partial sum can reach the overflow threshold nor 2**(104+M) (bound below), and
(3) no NaN/inf occurs, are computed in float32 with the j (column) loop vectorised:
  no fma, M <= 10: fl32(acc + rnd(p)) is a sum of two format values; float32 has
      24 >= 2(M+1)+2 bits, so its rounding followed by rnd is innocuous (Figueroa 1995);
  otherwise (M <= 21): round-to-odd through float32 TwoSum, as above (24 >= M+3);
  M = 23: float32 arithmetic is the format.
rnd() there is branch-free: with e = max(exponent(x), emin) and c = 1.5 * 2**(e+23-M),
(x + c) - c rounds x to a multiple of 2**(e-M) nearest-even in hardware (see _rnd32); for the
fp16 format (e5m10) it is the F16C conversion pair where the CPU has it (kernels.halfcvt), the
same correct rounding; fp16 with fma there gets its round-to-odd from rounding toward zero
(s | inexact, see _make_tile), which needs no TwoSum. Full 4 x 16 tiles of the output keep their accumulators in AVX2
registers for the whole k loop (_make_tile, LLVM IR), edges through zero-padded tiles.
Other rows, and columns of b holding inf or NaN, use the general float64 path. A batch of
products (broadcast matmul, grouped convolutions) is one call of each kernel, and outputs
narrower than a tile are computed as (b^T a^T)^T: products commute exactly, so every output is
the same sum in the same order.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .halfcvt import HW_F16C, f32_to_f16_f32
from .rounding import round_bits64

SEQUENTIAL, PAIRWISE, BLOCKED = 0, 1, 2
_ORDERS = {"sequential": SEQUENTIAL, "pairwise": PAIRWISE, "blocked": BLOCKED}
_SIGN64 = np.int64(-(1 << 63))
_INF64 = 0x7FF0000000000000
_EXP_LIMIT = 48  # partial expansions of float32-derived float64 values stay far below this
_PARALLEL_SUM_MIN = 1 << 18  # elements from which a per-step-rounded reduction is worth threads
_PACK_MIN_K = 128  # from this K, b is copied into contiguous column panels first (below, its rows
# of one tile's columns lie a row apart, which costs little; above, the copy pays for itself)
_PARALLEL_MM_MIN = 1 << 19  # multiply-adds (B*M*N*K) from which a matmul_acc is worth threads


# ---------------------------------------------------------------- format parameters

class _Fmt:
    """Derived constants of an eXmY accumulate format."""

    def __init__(self, ebits: int, mbits: int) -> None:
        if not (isinstance(ebits, (int, np.integer)) and isinstance(mbits, (int, np.integer))):
            raise TypeError("ebits and mbits must be integers")
        if not 2 <= ebits <= 8 or not 1 <= mbits <= 23:
            raise ValueError(f"accumulate format e{ebits}m{mbits}: need 2 <= ebits <= 8, 1 <= mbits <= 23")
        self.e, self.m = int(ebits), int(mbits)
        self.emax = (1 << (self.e - 1)) - 1
        self.emin = 1 - self.emax
        self.maxfinite = (2.0 - 2.0 ** -self.m) * 2.0 ** self.emax
        self.maxbits64 = int(np.float64(self.maxfinite).view(np.int64))
        # fast-path rounding constants: c = max(2**e, 2**emin) * 1.5 * 2**(23-M)
        self.two_emin32 = np.float32(2.0 ** self.emin)
        self.magic32 = np.float32(1.5 * 2.0 ** (23 - self.m))
        self.qmin = 2.0 ** (self.emin - self.m)  # smallest subnormal


# ---------------------------------------------------------------- scalar device functions

@njit(cache=True, inline="always")
def round_to(x, m, emin, maxbits):
    """Round the float64 x once (nearest-even, subnormals kept, overflow to inf) to the format
    with m mantissa bits, smallest normal exponent emin and largest finite float64 pattern
    maxbits; returns a float64. (float32 arguments are widened exactly.)"""
    u = np.float64(x).view(np.int64)
    r = round_bits64(u, m, emin, maxbits, 1, 0, 0, 0, 0, np.int64(0))
    return np.int64(r).view(np.float64)


@njit(cache=True, inline="always")
def _odd_fix(s, e):
    """Round-to-odd from the float64 s = fl(x) and the exact error e = x - s."""
    if e != 0.0 and math.isfinite(s):
        sb = np.float64(s).view(np.int64)
        if (sb & 1) == 0:
            eb = np.float64(e).view(np.int64)
            sb = sb + (1 if (sb ^ eb) >= 0 else -1)  # same sign: magnitude up, else down
            return np.int64(sb).view(np.float64)
    return s


@njit(cache=True, inline="always")
def _add_round(x, y, m, emin, maxbits):
    """rnd(x + y) with a single rounding of the exact sum (x, y float64, any magnitudes)."""
    s = x + y
    bb = s - x
    e = (x - (s - bb)) + (y - bb)
    return round_to(_odd_fix(s, e), m, emin, maxbits)


@njit(cache=True, inline="always")
def _expansion_add(parts, n, x):
    """Add x exactly into the non-overlapping expansion parts[:n] (increasing magnitude);
    returns the new length. Shewchuk's grow-expansion with zero elimination."""
    i = 0
    for t in range(n):
        y = parts[t]
        if abs(x) < abs(y):
            x, y = y, x
        hi = x + y
        lo = y - (hi - x)
        if lo != 0.0:
            parts[i] = lo
            i += 1
        x = hi
    parts[i] = x
    return i + 1


@njit(cache=True, inline="always")
def _expansion_round(parts, n, m, emin, maxbits):
    """Correctly rounded value of sum(parts[:n]) in the format."""
    if n == 0:
        return 0.0
    hi = parts[n - 1]
    lo = 0.0
    k = n - 1
    while k > 0:
        x = hi
        y = parts[k - 1]
        k -= 1
        hi = x + y
        lo = y - (hi - x)
        if lo != 0.0:
            break
    # exact = hi + lo + (smaller parts, together below one unit of lo's last place), so the
    # sign of lo is the sign of exact - hi, and hi brackets exact with a neighbour.
    return round_to(_odd_fix(hi, lo), m, emin, maxbits)


@njit(cache=True, inline="always")
def _rnd32(x, two_emin, magic):
    """Branch-free nearest-even rounding of a float32 in the fast path's range (finite, below
    the overflow threshold and below 2**(104+M)); two_emin = 2**emin, magic = 1.5 * 2**(23-M).
    With e = max(exponent(x), emin) and c = 1.5 * 2**(e+23-M), x + c lies in
    [2**(e+23-M), 2**(e+24-M)) for either sign of x (M <= 21), where the float32 spacing is the
    format's quantum 2**(e-M): the hardware addition rounds x nearest-even and (x+c)-c is
    exact. A zero result is +0 (see _rnd32z)."""
    pe = np.int32(np.int64(np.float32(x).view(np.int32)) & 0x7F800000).view(np.float32)  # 2**e(x)
    c = max(pe, two_emin) * magic
    return (x + c) - c


@njit(cache=True, inline="always")
def _rnd32z(x, two_emin, magic):
    """_rnd32 keeping the sign of a zero result (a nonzero result already has x's sign)."""
    r = _rnd32(x, two_emin, magic)
    rb = np.int64(np.float32(r).view(np.int32)) | (np.int64(np.float32(x).view(np.int32)) & 0x80000000)
    return np.int32(rb).view(np.float32)


@njit(cache=True, inline="always")
def _add_odd32(acc, p):
    """float32 round-to-odd of acc + p (TwoSum; exact while nothing overflows)."""
    s = acc + p
    bb = s - acc
    e = (acc - (s - bb)) + (p - bb)
    sb = np.int64(np.float32(s).view(np.int32))
    eb = np.int64(np.float32(e).view(np.int32))
    adj = ((sb ^ eb) >> 63) | 1
    if e != np.float32(0.0) and (sb & 1) == 0:
        sb = sb + adj
    return np.int32(sb).view(np.float32)


# ---------------------------------------------------------------- pre-pass

@njit(cache=True, inline="always")
def _exp32(i):
    """Exponent of the int32 i (0 < i < 2**24) as float32 gives it: floor(log2(i)); -127 for 0."""
    return (np.float32(i).view(np.int32) >> 23) - np.int32(127)


@njit(cache=True, parallel=True)
def _row_stats(x, maxabs, maxspan, minlsb, finite):
    """Per row of the 2-D float32 x, over its finite nonzero elements: max |x|, the widest
    significand (bits from the leading to the lowest set one), the exponent of the smallest
    lsb (lowest set bit of a significand), and whether all elements are finite. Integer-only
    and branch-free in the element loop so that it vectorises (it runs over every input of
    each GEMM; a float64 division here cost ~3 ns an element)."""
    R, C = x.shape
    one, big = np.int32(1), np.int32(1 << 20)
    for r in prange(R):
        row = x[r].view(np.int32)
        ma = np.int32(0)
        ms = np.int32(0)
        ml = big
        bad = np.int32(0)
        for c in range(C):
            u = row[c] & np.int32(0x7FFFFFFF)
            be = u >> 23
            bad += np.int32(be == 0xFF)
            use = (u != 0) & (be != 0xFF)
            sig = (u & np.int32(0x7FFFFF)) | (np.int32(0x800000) if be > 0 else np.int32(0))
            el = _exp32(sig & -sig)
            ma = max(ma, u if use else np.int32(0))  # |x| ordered as its bit pattern
            ms = max(ms, np.int32(_exp32(sig) - el + one) if use else np.int32(0))
            ml = min(ml, np.int32(max(be, one) - np.int32(150) + el) if use else big)
        maxabs[r] = np.float64(np.int32(ma).view(np.float32))
        maxspan[r] = ms
        minlsb[r] = ml
        finite[r] = bad == 0


@njit(cache=True, parallel=True)
def _row_stats16(x, maxabs, maxspan, minlsb, finite, not16):
    """_row_stats where every finite element is an fp16 value (what fp16 presets feed every
    GEMM): max |x| and finiteness as there, span 11 and lowest bit 2**-24 as bounds (true of
    any fp16 value; the fast path only needs them as bounds), and per row the count of finite
    elements that are not fp16 values (not16), for which the caller runs _row_stats instead.
    One conversion pair and a few integer operations an element, 8 lanes wide: ~7x cheaper."""
    R, C = x.shape
    for r in prange(R):
        row = x[r]
        bits = row.view(np.int32)
        ma = np.int32(0)
        bad = np.int32(0)
        n16 = np.int32(0)
        for c in range(C):
            u = bits[c] & np.int32(0x7FFFFFFF)
            fin = u < np.int32(0x7F800000)
            bad += np.int32(not fin)
            ma = max(ma, u if fin else np.int32(0))
            n16 += np.int32(fin & (f32_to_f16_f32(row[c]) != row[c]))  # (no branch: vectorises)
        maxabs[r] = np.float64(np.int32(ma).view(np.float32))
        maxspan[r] = 11
        minlsb[r] = -24
        finite[r] = bad == 0
        not16[r] = n16


# ---------------------------------------------------------------- matmul kernels

# ---- register-tiled fast path ------------------------------------------------------------
# numba has no SIMD types and LLVM does not keep a tile of accumulators in registers across
# the k loop on its own (the accumulators live in memory it cannot prove private), so the inner
# kernel is written in LLVM IR: a _TR x (8*_TV) tile of accumulators held in <8 x float>
# vectors for the whole k loop.
_TR, _TV, _TL = 4, 2, 8  # tile rows, vectors per row, lanes per vector (AVX2)
_TW = _TV * _TL  # tile columns
_ARR2 = types.Array(types.float32, 2, "C")


class _Kit:
    """IR pieces shared by the tile and row kernels: the step acc <- rnd(acc + a*b) of a mode
    on <_TL x float> vectors (see _make_tile), and for the rz form the MXCSR save/set/restore."""

    def __init__(self, builder, mode: int, hw16: bool, rz: bool, te_, mg_) -> None:
        L = _TL
        self.b, self.mode, self.hw16, self.rz = builder, mode, hw16, rz
        self.i32 = i32 = ir.IntType(32)
        self.fv, self.iv, self.hv = ir.VectorType(ir.FloatType(), L), ir.VectorType(i32, L), ir.VectorType(ir.HalfType(), L)
        self.zero = ir.Constant(self.fv, [0.0] * L)
        self.te, self.mg = self.splat(te_), self.splat(mg_)
        if rz:  # fp16, fma: the whole kernel rounds toward zero (MXCSR), conversions to nearest
            i8p = ir.IntType(8).as_pointer()
            fnty = ir.FunctionType(ir.VoidType(), [i8p])
            self.ldm = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.sse.ldmxcsr")
            stm = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.sse.stmxcsr")
            self.cvtps2ph = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VectorType(ir.IntType(16), L), [self.fv, i32]),
                "llvm.x86.vcvtps2ph.256")
            self.fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(self.fv, [self.fv] * 3),
                                                      "llvm.fma.v8f32")
            self.csr = cgutils.alloca_once(builder, i32)
            self.i8p = i8p
            builder.call(stm, [builder.bitcast(self.csr, i8p)])
            self.saved = builder.load(self.csr)
            builder.store(builder.or_(self.saved, ir.Constant(i32, 0x6000)), self.csr)  # RC = toward zero
            builder.call(self.ldm, [builder.bitcast(self.csr, i8p)])

    def restore(self) -> None:
        if self.rz:
            self.b.store(self.saved, self.csr)
            self.b.call(self.ldm, [self.b.bitcast(self.csr, self.i8p)])

    def ci(self, x):
        return ir.Constant(self.iv, [x] * _TL)

    def splat(self, x):
        b = self.b
        v = b.insert_element(ir.Constant(self.fv, ir.Undefined), x, ir.Constant(self.i32, 0))
        return b.shuffle_vector(v, ir.Constant(self.fv, ir.Undefined), ir.Constant(self.iv, [0] * _TL))

    def rnd(self, x, keep_sign):  # _rnd32 / _rnd32z, or the conversion pair
        b = self.b
        if self.hw16:
            return b.fpext(b.fptrunc(x, self.hv), self.fv)
        xb = b.bitcast(x, self.iv)
        pe = b.bitcast(b.and_(xb, self.ci(0x7F800000)), self.fv)
        c = b.fmul(b.select(b.fcmp_ordered(">", pe, self.te), pe, self.te), self.mg)
        r = b.fsub(b.fadd(x, c), c)
        if keep_sign:
            r = b.bitcast(b.or_(b.bitcast(r, self.iv), b.and_(xb, self.ci(-0x80000000))), self.fv)
        return r

    def add_odd(self, x, y):  # _add_odd32
        b = self.b
        s = b.fadd(x, y)
        bb = b.fsub(s, x)
        e = b.fadd(b.fsub(x, b.fsub(s, bb)), b.fsub(y, bb))
        sb, eb = b.bitcast(s, self.iv), b.bitcast(e, self.iv)
        adj = b.or_(b.ashr(b.xor(sb, eb), self.ci(31)), self.ci(1))
        odd = b.and_(b.fcmp_unordered("!=", e, self.zero), b.icmp_signed("==", b.and_(sb, self.ci(1)), self.ci(0)))
        return b.bitcast(b.select(odd, b.add(sb, adj), sb), self.fv)

    def fma_odd_rn16(self, av, bv, p, acc):
        """rnd16(acc + p), p = av*bv exact, under rounding toward zero: s = RZ(acc + p)
        by one FMA; s minus the larger-magnitude operand is exact (Fast2Sum's first
        step, which holds for RZ too), so s is exact iff s - acc == p and s - p == acc
        (the difference with the smaller operand subtracted may round, but only
        when s is inexact). s | inexact is then acc + p rounded to odd in float32
        (24 >= 11 + 2 bits), and its nearest-even conversion to fp16 (immediate 0:
        not MXCSR's mode) is rnd16(acc + p). A zero sum is +0 under RZ as under
        nearest; a tiny one keeps its sign through s. 11 operations, 2 of them
        conversions, for 8 lanes; the TwoSum form took 18."""
        b = self.b
        s = b.call(self.fma, [av, bv, acc])
        t1 = b.fsub(s, acc)
        t2 = b.call(self.fma, [b.fneg(av), bv, s])  # RZ(s - p)
        inexact = b.or_(b.fcmp_unordered("!=", t1, p), b.fcmp_unordered("!=", t2, acc))
        odd = b.bitcast(b.or_(b.bitcast(s, self.iv), b.zext(inexact, self.iv)), self.fv)
        h = b.call(self.cvtps2ph, [odd, ir.Constant(self.i32, 0)])
        return b.fpext(b.bitcast(h, self.hv), self.fv)

    def step(self, av, bv, acc):
        """The accumulator after one more product av*bv (vectors)."""
        b, mode = self.b, self.mode
        p = b.fmul(av, bv)
        if self.rz:
            return self.fma_odd_rn16(av, bv, p, acc)
        if mode == 0:
            return self.rnd(b.fadd(acc, self.rnd(p, False)), False)
        if mode == 1:
            return self.rnd(self.add_odd(acc, self.rnd(p, False)), False)
        if mode == 2:
            return self.rnd(self.add_odd(acc, p), True)
        return b.fadd(acc, p)

    def vptr(self, ary, off):
        return self.b.bitcast(self.b.gep(ary.data, [off]), self.fv.as_pointer())


def _arrays(context, builder, args):
    """The 2-D float32 array arguments of an intrinsic, and their row lengths."""
    arrs = [context.make_array(_ARR2)(context, builder, x) for x in args]
    return arrs, [cgutils.unpack_tuple(builder, x.shape)[1] for x in arrs]


def _make_tile(mode: int, hw16: bool, rz: bool = False):
    """Intrinsic tile(a, bp, out, i0, oi, j0, two_emin, magic): out[oi:oi+_TR, j0:j0+_TW] = the
    sequential float32 fast path of rows i0:i0+_TR of a and the columns of bp, the (K, _TW)
    C-contiguous panel of b's columns (packed: one stream of loads, where b's own rows lie a
    whole row apart: ~3x the cost a multiply-add at K=1280), from row k0 and column bj. Modes as _mm_fast: 0 acc =
    rnd(acc + rnd(p)); 1 the same through round-to-odd; 2 acc = rnd(odd(acc + p)) keeping a
    zero's sign; 3 plain float32. Without fma the signs of zeros need no care: acc starts at +0
    and a sum of two format values is 0 or at least the smallest subnormal, so acc is never -0
    and a -0 product adds like +0; with fma, acc + p can round to -0. hw16: the format is fp16
    and rounding is the F16C conversion pair (same bits as _rnd32/_rnd32z in the fast path's
    range: both round correctly). rz (mode 2, fp16, F16C): the tile runs with MXCSR rounding
    toward zero and rounds to odd without TwoSum (_Kit.fma_odd_rn16); MXCSR is restored at the
    end (it is per thread, and nothing in the tile can raise)."""

    @intrinsic
    def tile(typingctx, a, b, out, i0, oi, j0, k0, bj, two_emin, magic):
        sig = types.void(_ARR2, _ARR2, _ARR2, types.intp, types.intp, types.intp, types.intp, types.intp,
                         types.float32, types.float32)

        def codegen(context, builder, signature, args):
            a_, b_, o_, i0_, oi_, j0_, k0_, bj_, te_, mg_ = args
            (A, B, O), (K, BN, N) = _arrays(context, builder, (a_, b_, o_))
            kit = _Kit(builder, mode, hw16, rz, te_, mg_)

            def idx(x):
                return ir.Constant(K.type, x)

            accs = [[cgutils.alloca_once_value(builder, kit.zero) for _ in range(_TV)] for _ in range(_TR)]
            with cgutils.for_range(builder, K) as loop:  # allocas become registers (mem2reg)
                k = loop.index
                brow = builder.add(builder.mul(builder.add(k, k0_), BN), bj_)  # b[k0 + k, bj:]
                bv = [builder.load(kit.vptr(B, builder.add(brow, idx(_TL * v))), align=4) for v in range(_TV)]
                for r in range(_TR):
                    ai = builder.add(builder.mul(builder.add(i0_, idx(r)), K), k)
                    av = kit.splat(builder.load(builder.gep(A.data, [ai])))
                    for v in range(_TV):
                        builder.store(kit.step(av, bv[v], builder.load(accs[r][v])), accs[r][v])
            for r in range(_TR):
                orow = builder.add(builder.mul(builder.add(oi_, idx(r)), N), j0_)
                for v in range(_TV):
                    builder.store(builder.load(accs[r][v]), kit.vptr(O, builder.add(orow, idx(_TL * v))), align=4)
            kit.restore()
            return context.get_dummy_value()

        return sig, codegen

    return tile


def _make_row(mode: int, hw16: bool, rz: bool = False):
    """Intrinsic row(a, ai, b, k0, out, oi, nvec, two_emin, magic): out[oi, :_TL*nvec] = the
    sequential sums of a[ai, k] * b[k0 + k, j] over k (modes as _make_tile), the accumulators
    kept in out's row itself: k outside, j inside, so b's rows stream through once in order.
    For one-row products (depthwise convolutions, matrix-vector products), where each element
    of b is used once: the register tile's k-inside loop read ~100 rows of b at a time, more
    streams than the prefetchers follow (~4x slower), and padded a single row to _TR."""

    @intrinsic
    def row(typingctx, a, ai, b, k0, out, oi, nvec, two_emin, magic):
        sig = types.void(_ARR2, types.intp, _ARR2, types.intp, _ARR2, types.intp, types.intp,
                         types.float32, types.float32)

        def codegen(context, builder, signature, args):
            a_, ai_, b_, k0_, o_, oi_, nv_, te_, mg_ = args
            (A, B, O), (K, BN, ON) = _arrays(context, builder, (a_, b_, o_))
            kit = _Kit(builder, mode, hw16, rz, te_, mg_)
            vl = ir.Constant(K.type, _TL)
            orow = builder.mul(oi_, ON)
            with cgutils.for_range(builder, nv_) as lv:
                builder.store(kit.zero, kit.vptr(O, builder.add(orow, builder.mul(lv.index, vl))), align=4)
            with cgutils.for_range(builder, K) as lk:
                av = kit.splat(builder.load(builder.gep(A.data, [builder.add(builder.mul(ai_, K), lk.index)])))
                brow = builder.mul(builder.add(k0_, lk.index), BN)
                with cgutils.for_range(builder, nv_) as lv:
                    off = builder.mul(lv.index, vl)
                    op = kit.vptr(O, builder.add(orow, off))
                    bv = builder.load(kit.vptr(B, builder.add(brow, off)), align=4)
                    builder.store(kit.step(av, bv, builder.load(op, align=4)), op, align=4)
            kit.restore()
            return context.get_dummy_value()

        return sig, codegen

    return row


_TILE0, _TILE1, _TILE2, _TILE3 = (_make_tile(m, False) for m in range(4))
# fp16 format, modes 0 and 2: with F16C (an x86 feature, so MXCSR is there too) the conversion
# pair and, for mode 2, the rounding-toward-zero form; else the portable arithmetic
_TILE16_0 = _make_tile(0, HW_F16C)
_TILE16_2 = _make_tile(2, True, rz=True) if HW_F16C else _make_tile(2, False)


_ROW0, _ROW1, _ROW2, _ROW3 = (_make_row(m, False) for m in range(4))
_ROW16_0 = _make_row(0, HW_F16C)
_ROW16_2 = _make_row(2, True, rz=True) if HW_F16C else _make_row(2, False)


@njit(cache=True, inline="always")
def _tile(a, b, out, i0, oi, j0, k0, bj, two_emin, magic, mode):
    # modes 4, 5: fp16 format with modes 0, 2 through the conversion pair where the CPU has one
    if mode == 0:
        _TILE0(a, b, out, i0, oi, j0, k0, bj, two_emin, magic)
    elif mode == 1:
        _TILE1(a, b, out, i0, oi, j0, k0, bj, two_emin, magic)
    elif mode == 2:
        _TILE2(a, b, out, i0, oi, j0, k0, bj, two_emin, magic)
    elif mode == 3:
        _TILE3(a, b, out, i0, oi, j0, k0, bj, two_emin, magic)
    elif mode == 4:
        _TILE16_0(a, b, out, i0, oi, j0, k0, bj, two_emin, magic)
    else:
        _TILE16_2(a, b, out, i0, oi, j0, k0, bj, two_emin, magic)


@njit(cache=True, inline="always")
def _row(a, ai, b, k0, out, oi, nvec, two_emin, magic, mode):
    if mode == 0:
        _ROW0(a, ai, b, k0, out, oi, nvec, two_emin, magic)
    elif mode == 1:
        _ROW1(a, ai, b, k0, out, oi, nvec, two_emin, magic)
    elif mode == 2:
        _ROW2(a, ai, b, k0, out, oi, nvec, two_emin, magic)
    elif mode == 3:
        _ROW3(a, ai, b, k0, out, oi, nvec, two_emin, magic)
    elif mode == 4:
        _ROW16_0(a, ai, b, k0, out, oi, nvec, two_emin, magic)
    else:
        _ROW16_2(a, ai, b, k0, out, oi, nvec, two_emin, magic)


@njit(cache=True, inline="always")
def _all_bad(colbad, j0, w):
    """Whether columns j0:j0+w of one product all hold inf/NaN (_mm_general computes those)."""
    for j in range(j0, j0 + w):
        if not colbad[j]:
            return False
    return True


@njit(cache=True, inline="always")
def _row_item(a2, b2, o2, c, two_emin, magic, mode):
    """Product c of a batch of 1-row products: a2 (B, K), b2 (B*K, N) (b's batch items one
    under another), o2 (B, N); the last N % _TL columns through a zero-padded copy."""
    K = a2.shape[1]
    N = o2.shape[1]
    j0 = N // _TL * _TL
    src, k0, dst, oi, nv = b2, c * K, o2, c, N // _TL
    for part in range(2):  # one call site for both parts: each inlines every mode's kernel
        if part == 1:
            if j0 == N:
                break
            src = np.zeros((K, _TL), np.float32)
            src[:, :N - j0] = b2[c * K:(c + 1) * K, j0:]
            k0, dst, oi, nv = 0, np.empty((1, _TL), np.float32), 0, 1
        _row(a2, c, src, k0, dst, oi, nv, two_emin, magic, mode)
    if j0 < N:
        o2[c, j0:] = dst[0, :N - j0]


@njit(cache=True, parallel=True)
def _mm_fast(a, b, out, rowok, colbad, two_emin, magic, mode):
    """Sequential order in float32 for the rows with rowok set (see module docstring), over a
    batch: a (B, M, K), b (B, K, N), out (B, M, N), rowok (B, M); column tiles whose columns
    all have colbad (B, N) set are skipped (_mm_general computes them, and NaN operands make
    the tile's arithmetic several times slower: rapidocr_det's NaN-fed layers under fp16).
    mode 0: no fma, M <= 10; 1: no fma, round-to-odd; 2: fma, round-to-odd; 3: M == 23;
    4, 5: modes 0, 2 for fp16. 1-row products go through the row kernel (_make_row), the rest
    through the register-tiled kernel: b's last partial panel and a's last partial row tile are
    zero-padded (zero products leave the other rows and columns as they are) and written
    through a scratch tile; a tile with a rowok-false row computes it anyway (_mm_general
    overwrites it). Parallel over products or (batch, row tile) items: balanced when another
    process shares a core, and a batch of small products (grouped convolutions) is one call
    instead of one per group."""
    nb, M, K = a.shape
    N = b.shape[2]
    if M == 1:  # 1-row products (depthwise convolutions, matrix-vector products): row kernel
        a2, b2, o2 = a.reshape(nb, K), b.reshape(nb * K, N), out.reshape(nb, N)
        for c in prange(nb):
            if rowok[c, 0] and not _all_bad(colbad[c], 0, N):
                _row_item(a2, b2, o2, c, two_emin, magic, mode)
        return
    items = -(-M // _TR)
    packed = K > _PACK_MIN_K
    bp = _pack_panels(b) if packed else np.empty((nb, 0, 0, _TW), np.float32)
    for w in prange(nb * items):
        bt = w // items
        t = w - bt * items
        if packed:
            _fast_item(a[bt], bp[bt].reshape(-1, _TW), K, out[bt], rowok[bt], colbad[bt], t, two_emin, magic, mode)
        else:
            _fast_item(a[bt], b[bt], 0, out[bt], rowok[bt], colbad[bt], t, two_emin, magic, mode)


@njit(cache=True)
def _pack_panels(b):
    """b (B, K, N) as contiguous _TW-column panels (B, ceil(N / _TW), K, _TW), the last one
    padded with zeros."""
    nb, K, N = b.shape
    nt = -(-N // _TW)
    bp = np.empty((nb, nt, K, _TW), np.float32)
    for bt in range(nb):
        for jt in range(nt):
            w = min(_TW, N - jt * _TW)
            for k in range(K):
                for c in range(w):
                    bp[bt, jt, k, c] = b[bt, k, jt * _TW + c]
                for c in range(w, _TW):
                    bp[bt, jt, k, c] = 0.0
    return bp


@njit(cache=True, inline="always")
def _fast_item(a, b2, kp, out, rowok, colbad, t, two_emin, magic, mode):
    """Row tile t of one 2-D product into out. b2: b's packed panels one after another
    (kp = K: panel jt is rows jt*K.. of b2), or b itself (kp = 0: column tile jt starts at
    column jt*_TW of b2's rows, and the last partial one is zero-padded here)."""
    M, K = a.shape
    N = out.shape[1]
    i0 = t * _TR
    rows = min(_TR, M - i0)
    ok = False
    for r in range(rows):
        ok |= rowok[i0 + r]
    if not ok:
        return
    src, si = a, i0
    if rows < _TR:  # a's last rows, zero-padded to a full tile
        src = np.zeros((_TR, K), np.float32)
        src[:rows] = a[i0:]
        si = 0
    scratch = np.empty((_TR, _TW), np.float32)
    for jt in range(-(-N // _TW)):
        j0 = jt * _TW
        w = min(_TW, N - j0)
        if _all_bad(colbad, j0, w):
            continue
        pb, k0, bj = b2, jt * kp, j0
        if kp:
            bj = 0
        elif w < _TW:
            pb = np.zeros((K, _TW), np.float32)
            pb[:, :w] = b2[:, j0:]
            bj = 0
        full = rows == _TR and w == _TW
        # one call site (it inlines every mode's tile): into out, or into the scratch tile
        _tile(src, pb, out if full else scratch, si, i0 if full else 0, j0 if full else 0, k0, bj,
              two_emin, magic, mode)
        if not full:
            out[i0:i0 + rows, j0:j0 + w] = scratch[:rows, :w]


@njit(cache=True, inline="always")
def _pairwise_buf(buf, n, m, emin, maxbits):
    """Reduce buf[:n] in place level by level (0+1, 2+3, ..., odd last one carried)."""
    if n == 0:
        return 0.0
    while n > 1:
        h = n // 2
        for t in range(h):
            buf[t] = _add_round(buf[2 * t], buf[2 * t + 1], m, emin, maxbits)
        if n % 2 == 1:
            buf[h] = buf[n - 1]
        n = h + n % 2
    return buf[0]


@njit(cache=True, inline="always")
def _block_sum(parts, vals, lo, hi, m, emin, maxbits):
    """Correctly rounded exact sum of vals[lo:hi] (plain float64 sum when non-finite)."""
    n = 0
    plain = 0.0
    for t in range(lo, hi):
        plain += np.float64(vals[t])
    if not math.isfinite(plain):
        return round_to(plain, m, emin, maxbits)
    for t in range(lo, hi):
        v = np.float64(vals[t])
        if v != 0.0:
            n = _expansion_add(parts, n, v)
    return _expansion_round(parts, n, m, emin, maxbits)


@njit(cache=True, inline="always")
def _mul64(x, y):
    """The exact float64 product of two float32 values; a NaN x is the product whatever y is
    (the multiplication propagates one NaN operand, which of two the compiler's operand order
    would decide)."""
    x64 = np.float64(x)
    if x64 != x64:
        return x64
    return x64 * np.float64(y)


@njit(cache=True, inline="always")
def _seq_step(acc, v, fma, m, emin, maxbits):
    """One step of the sequential order: rnd(acc + v), v rounded first unless fma.
    A NaN accumulator is final: callers stop at it, so its sign (round_to makes every NaN the
    quiet NaN of its sign) is the result's, whatever NaN terms follow. That is what adding
    them gave (the float64 addition returned its first NaN operand, acc), now stated rather
    than left to the compiler's operand order, and it makes a NaN row cost one step."""
    if not fma:
        v = round_to(v, m, emin, maxbits)
    return _add_round(acc, v, m, emin, maxbits)


@njit(cache=True, inline="always")
def _reduce_vec(vals, n, buf, parts, order, block, fma, m, emin, maxbits, from_first):
    """Accumulate vals[:n] (exact float64 terms) in the given order; buf, parts: scratch.
    from_first: the sequential sum starts from the first term rather than from +0 (the same
    value except for the sign of a zero result: numpy's reduce gives -0 + -0 = -0)."""
    if order == SEQUENTIAL:
        acc = 0.0
        t0 = 0
        if from_first and n > 0:
            acc = round_to(np.float64(vals[0]), m, emin, maxbits)
            t0 = 1
        for t in range(t0, n):
            if acc != acc:
                break  # see _seq_step
            acc = _seq_step(acc, np.float64(vals[t]), fma, m, emin, maxbits)
        return acc
    if order == PAIRWISE:
        for t in range(n):
            v = np.float64(vals[t])
            if not fma:
                v = round_to(v, m, emin, maxbits)
            buf[t] = v
        if n == 1:
            return round_to(buf[0], m, emin, maxbits)
        return _pairwise_buf(buf, n, m, emin, maxbits)
    acc = 0.0
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        acc = _add_round(acc, _block_sum(parts, vals, lo, hi, m, emin, maxbits), m, emin, maxbits)
    return acc


@njit(cache=True, parallel=True)
def _mm_general(a, b, out, rowdone, colbad, order, block, fma, m, emin, maxbits):
    """Any order, any values, float64 with exact products, over a batch (shapes as _mm_fast).
    Rows with rowdone set are done except for their columns with colbad set (B, N): columns
    of b holding inf or NaN, which the fast path cannot take."""
    nb, M, K = a.shape
    N = b.shape[2]
    # first k holding inf/NaN per row of a and per column of b (K: none): with fma every
    # product before min(ka, kb) is finite, so until there the accumulator is finite or +-inf,
    # and if that product is NaN it decides the sum (acc + NaN is that NaN; _seq_step) without
    # accumulating the steps before it: a layer fed NaN from some channel on costs O(1) an output
    ka = np.full((nb, M), K, np.int64)
    kb = np.full((nb, N), K, np.int64)
    if order == SEQUENTIAL and fma:
        for w in prange(nb * M):
            bt = w // M
            i = w - bt * M
            for k in range(K):
                if not math.isfinite(a[bt, i, k]):
                    ka[bt, i] = k
                    break
        for bt in range(nb):
            for k in range(K - 1, -1, -1):
                for j in range(N):
                    if not math.isfinite(b[bt, k, j]):
                        kb[bt, j] = k
    for w in prange(nb * M):
        bt = w // M
        i = w - bt * M
        done = rowdone[bt, i]
        bad = colbad[bt]
        if done and not bad.any():
            continue
        vals = np.empty(max(K, 1), np.float64)
        buf = np.empty(max(K, 1), np.float64)
        parts = np.empty(_EXP_LIMIT, np.float64)
        for j in range(N):
            if done and not bad[j]:
                continue
            if order == SEQUENTIAL:  # products on the fly: a NaN ends the sum (_seq_step)
                k0 = min(ka[bt, i], kb[bt, j])
                if k0 < K:
                    p0 = _mul64(a[bt, i, k0], b[bt, k0, j])
                    if p0 != p0:
                        out[bt, i, j] = np.float32(round_to(p0, m, emin, maxbits))
                        continue
                acc = 0.0
                for k in range(K):
                    if acc != acc:
                        break
                    acc = _seq_step(acc, _mul64(a[bt, i, k], b[bt, k, j]), fma, m, emin, maxbits)
                out[bt, i, j] = np.float32(acc)
                continue
            for k in range(K):
                vals[k] = _mul64(a[bt, i, k], b[bt, k, j])
            out[bt, i, j] = np.float32(_reduce_vec(vals, K, buf, parts, order, block, fma, m, emin, maxbits, False))


@njit(cache=True, parallel=True)
def _sum_rows(x, out, order, block, m, emin, maxbits):
    """Reduce each row of the 2-D float32 x (values enter unrounded: fma-like)."""
    R, n = x.shape
    for r in prange(R):
        buf = np.empty(n if order == PAIRWISE else 1, np.float64)
        parts = np.empty(_EXP_LIMIT, np.float64)
        out[r] = np.float32(_reduce_vec(x[r], n, buf, parts, order, block, True, m, emin, maxbits, True))


# ---------------------------------------------------------------- public API

def _check_order(order: str, block: int) -> int:
    if order not in _ORDERS:
        raise ValueError(f"unknown order {order!r}; expected one of {sorted(_ORDERS)}")
    if _ORDERS[order] == BLOCKED and (not isinstance(block, (int, np.integer)) or block < 1):
        raise ValueError(f"block must be a positive integer, got {block!r}")
    return _ORDERS[order]


def _as_f32(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.float32:
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise TypeError(f"expected a float32 array, got {x.dtype}")
        x = x.astype(np.float32)
    return x


def _fast_split(a: np.ndarray, b: np.ndarray, fmt: _Fmt) -> tuple[np.ndarray, np.ndarray]:
    """For a (B, M, K) @ b (B, K, N): the rows of each a for which the float32 fast path is
    proven exact (module docstring) on every column of b that holds no inf or NaN, and those
    columns that do (B, N; rows on the fast path take them through the general path). A layer
    fed NaN or inf in a few positions thus keeps the fast path for its other columns."""
    nb, M, K = a.shape
    N = b.shape[2]
    amax, aspan, alsb = np.empty(nb * M), np.empty(nb * M, np.int32), np.empty(nb * M, np.int32)
    afin = np.empty(nb * M, np.bool_)
    bmax, bspan, blsb = np.empty(nb * K), np.empty(nb * K, np.int32), np.empty(nb * K, np.int32)
    bfin = np.empty(nb * K, np.bool_)
    a2, b2 = a.reshape(nb * M, K), b.reshape(nb * K, N)  # b per row (finite entries), then per batch
    stats = ((a2, amax, aspan, alsb, afin), (b2, bmax, bspan, blsb, bfin))
    # fp16 operands (the common case) through the cheap pass; if either is not all fp16, both
    # through the exact one, so that the decisions are always those of _row_stats
    n16a, n16b = np.empty(nb * M, np.int32), np.empty(nb * K, np.int32)
    _row_stats16(*stats[0], n16a)
    _row_stats16(*stats[1], n16b)
    if n16a.any() or n16b.any():
        for st in stats:
            _row_stats(*st)
    amax, aspan, alsb, afin = (v.reshape(nb, M) for v in (amax, aspan, alsb, afin))
    bmax, bspan, blsb = (v.reshape(nb, K) for v in (bmax, bspan, blsb))
    colbad = np.zeros((nb, N), np.bool_) if bfin.all() else ~np.isfinite(b).all(axis=1)
    # sum_k |a_ik b_kj| <= sum_k |a_ik| max_j |b_kj|: one float64 matvec, far tighter than
    # K * max|a_i| * max|b| on real layers (whose b rows differ in scale), and exact enough
    # (float64 relative error ~K * 2^-53, covered by the growth margin below).
    with np.errstate(over="ignore", invalid="ignore"):
        abs_dot = np.matmul(np.abs(a).astype(np.float64), bmax[:, :, None])[:, :, 0]
    bmax, bspan, blsb = bmax.max(axis=1)[:, None], bspan.max(axis=1)[:, None], blsb.min(axis=1)[:, None]
    u = 2.0 ** -(fmt.m + 1)
    # |acc_k| <= (1+u)^(2k) (sum|p| + k*qmin): each rounding scales by (1+u) and adds at most qmin/2.
    growth = math.exp(2.0 * K * u * 1.0001) * (1.0 + 1e-12)
    bound = (abs_dot + K * fmt.qmin) * growth
    limit = min(fmt.maxfinite, 2.0 ** (104 + fmt.m))
    with np.errstate(over="ignore", invalid="ignore"):
        ok = afin & (bound < limit)
        ok &= aspan + bspan <= 24  # significands of at most 24 bits together: products exact
        ok &= (alsb + blsb >= -149) | (amax == 0.0) | (bmax == 0.0)  # no product bit below 2**-149
    return ok, colbad


def _fast_rows(a: np.ndarray, b: np.ndarray, fmt: _Fmt) -> np.ndarray:
    """_fast_split's rows for one 2-D product (tests and callers with one matrix)."""
    return _fast_split(np.ascontiguousarray(a)[None], np.ascontiguousarray(b)[None], fmt)[0][0]


@contextmanager
def _one_thread_if(small: bool):
    """Parallel kernels called inside run on the calling thread alone when the work is small.
    Waking the kernels' threads cost up to ~16 ms a call on a loaded 2-core machine, against
    0.1 ms of work for a LayerNorm's rows or a depthwise convolution's groups (measured);
    numba's thread count is per calling thread."""
    if not small:
        yield
        return
    nt = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(nt)


def _matmul3d(a: np.ndarray, b: np.ndarray, fmt: _Fmt, order: int, block: int, fma: bool) -> np.ndarray:
    """The batch of products a (B, M, K) @ b (B, K, N), both C-contiguous float32."""
    nb, M, K = a.shape
    N = b.shape[2]
    if N < _TW and M > N:
        # Narrow outputs (matrix-vector products) as (b^T a^T)^T: the same sums of the same
        # products in the same order (products commute exactly), with the long side across
        # the vectorised columns instead of one edge row per output row.
        t = _matmul3d(np.ascontiguousarray(b.transpose(0, 2, 1)), np.ascontiguousarray(a.transpose(0, 2, 1)),
                      fmt, order, block, fma)
        return np.ascontiguousarray(t.transpose(0, 2, 1))
    out = np.zeros((nb, M, N), np.float32)
    if nb == 0 or M == 0 or N == 0 or K == 0:
        return out
    with _one_thread_if(nb * M * N * K < _PARALLEL_MM_MIN):
        done = np.zeros((nb, M), np.bool_)
        colbad = np.zeros((nb, N), np.bool_)
        if order == SEQUENTIAL and fmt.m != 22:
            done, colbad = _fast_split(a, b, fmt)
            if fmt.m == 23:
                mode = 3
            elif fma:
                mode = 2
            else:
                mode = 0 if fmt.m <= 10 else 1
            if (fmt.e, fmt.m) == (5, 10) and mode in (0, 2):
                mode = 4 if mode == 0 else 5
            if done.any() and not colbad.all():
                _mm_fast(a, b, out, done, colbad, fmt.two_emin32, fmt.magic32, mode)
        if not done.all() or colbad.any():
            _mm_general(a, b, out, done, colbad, order, int(block), bool(fma), fmt.m, fmt.emin, fmt.maxbits64)
    return out


def matmul_acc(a: np.ndarray, b: np.ndarray, ebits: int, mbits: int, order: str = "sequential",
               block: int = 32, fma: bool = True) -> np.ndarray:
    """a @ b (numpy matmul semantics: broadcast batch dims, 1-D operands promoted and the
    added dim removed) with every output accumulated in the (ebits, mbits) format in the given
    order; see the module docstring. Returns float32 holding format values."""
    fmt = _Fmt(ebits, mbits)
    o = _check_order(order, block)
    a, b = _as_f32(a), _as_f32(b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("matmul_acc: operands must have at least one dimension")
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    if a2.shape[-1] != b2.shape[-2]:
        raise ValueError(f"matmul_acc: shapes {a.shape} and {b.shape} do not align")
    batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    M, K, N = a2.shape[-2], a2.shape[-1], b2.shape[-1]
    nbatch = int(np.prod(batch, dtype=np.int64))
    ab = np.broadcast_to(a2, batch + (M, K)).reshape(nbatch, M, K)
    bb = np.broadcast_to(b2, batch + (K, N)).reshape(nbatch, K, N)
    out = _matmul3d(np.ascontiguousarray(ab), np.ascontiguousarray(bb), fmt, o, block, fma)
    out = out.reshape(batch + (M, N))
    if a.ndim == 1:
        out = out[..., 0, :]
    if b.ndim == 1:
        out = out[..., 0]
    return out


def sum_acc(x: np.ndarray, axis: int | tuple[int, ...] | None = None, keepdims: bool = False,
            ebits: int = 5, mbits: int = 10, order: str = "sequential", block: int = 32) -> np.ndarray:
    """np.sum with the running sum in the (ebits, mbits) format: reduced axes are flattened in
    C order and summed in increasing index in the given order. Returns float32."""
    fmt = _Fmt(ebits, mbits)
    o = _check_order(order, block)
    x = _as_f32(x)
    nd = x.ndim
    if axis is None:
        axes = tuple(range(nd))
    else:
        axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
        norm = []
        for ax in axes:
            if not -nd <= ax < nd:
                raise np.exceptions.AxisError(ax, nd)
            norm.append(int(ax) % nd)
        if len(set(norm)) != len(norm):
            raise ValueError("duplicate value in 'axis'")
        axes = tuple(sorted(norm))
    keep = [d for d in range(nd) if d not in axes]
    kept_shape = tuple(x.shape[d] for d in keep)
    n = int(np.prod([x.shape[d] for d in axes], dtype=np.int64))
    nrows = int(np.prod(kept_shape, dtype=np.int64))
    rows = np.ascontiguousarray(np.transpose(x, keep + list(axes))).reshape(nrows, n)
    res = np.zeros(rows.shape[0], np.float32)
    if n > 0 and rows.shape[0] > 0:
        with _one_thread_if(rows.size < _PARALLEL_SUM_MIN):
            _sum_rows(rows, res, o, int(block), fmt.m, fmt.emin, fmt.maxbits64)
    res = res.reshape(kept_shape)
    if keepdims:
        res = res.reshape(tuple(1 if d in axes else x.shape[d] for d in range(nd)))
    return res
