"""Numerical events of a rounding in one pass: NaNs, finite values beyond the format's overflow
threshold, and values flushed to zero. Serial on purpose: right after a BLAS call OpenBLAS's
threads still spin, and parallel numba kernels competing with them ran a whole fp16 model
1.5-1.8x slower (measured on 2 cores)."""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .halfcvt import HW_F16C, f32_to_f16_f32
from .rounding import _rne_bits32

_QNAN32 = 0x7FC00000


@njit(cache=True, nogil=True)
def _stats_serial(x, th, strict):
    nan = 0
    big = 0
    nz = 0
    for i in range(x.size):
        v = x[i]
        if v != v:
            nan += 1
            nz += 1
        elif v != 0:
            nz += 1
            a = abs(v)
            if a != np.inf and (a > th or (a == th and not strict)):
                big += 1
    return nan, big, nz


def stats(x: np.ndarray, th: float, strict: bool) -> tuple[int, int, int]:
    """(NaNs, finite values with |v| beyond th (>= th unless strict), nonzeros) of a 1-D float array."""
    return _stats_serial(x, np.float32(th) if x.dtype == np.float32 else np.float64(th), strict)


@njit(cache=True, nogil=True, inline="always")
def _rc_one(v, s, half_m1, lsb1, be_min, up_scale, down_scale, maxbits, has_inf, th, strict):
    # Branch-free so that LLVM vectorises the loop: comparisons become 0/1 integers.
    a = np.abs(v)
    nan = np.int64(v != v)
    big = np.int64((a != np.inf) & ((a > th) | ((a == th) & (not strict))))
    r = _rne_bits32(v, s, half_m1, lsb1, be_min, up_scale, down_scale, maxbits, has_inf)
    under = np.int64((v != 0) & ((r & 0x7FFFFFFF) == 0))
    return r, nan, big, under


@njit(cache=True, nogil=True, inline="always")
def _f16_one(v):
    # fp16 through f32_to_f16_f32 (F16C where the CPU has it); a NaN becomes the signed quiet
    # NaN without payload, as the generic kernel gives. fp16 has inf, so a finite value
    # overflowed exactly when its result is infinite (|v| >= 65520, the threshold).
    r = f32_to_f16_f32(v)
    u = np.int64(np.float32(v).view(np.uint32))
    rb = np.int64(np.float32(r).view(np.uint32))
    nan = v != v
    rb = ((u & 0x80000000) | _QNAN32) if nan else rb
    big = np.int64((np.abs(v) != np.inf) & (np.abs(r) == np.inf))
    under = np.int64((v != 0) & (r == 0))
    return rb, np.int64(nan), big, under


@njit(cache=True, nogil=True)
def _round_count_inplace(x, s, half_m1, lsb1, be_min, up_scale, down_scale, maxbits, has_inf, th, strict):
    # One array read and written: with two views of the same memory LLVM's runtime alias check
    # fails and the loop runs scalar (measured 4x slower).
    nan = big = under = 0
    for i in range(x.size):
        r, n, b, u = _rc_one(x[i], s, half_m1, lsb1, be_min, up_scale, down_scale, maxbits, has_inf, th, strict)
        x[i] = np.uint32(r).view(np.float32)
        nan, big, under = nan + n, big + b, under + u
    return nan, big, under


@intrinsic
def _f16_round_vec(typingctx, x, n):
    """x[:n] (n a multiple of 8) rounded to fp16 in place as _f16_one does, in <8 x float>
    steps through the F16C conversions, the counts kept in vector registers; returns (NaNs,
    overflows, underflows). LLVM does not vectorise the scalar loop through the conversion
    intrinsic (measured ~4x slower)."""
    if not (isinstance(x, types.Array) and x.dtype == types.float32 and x.ndim == 1):
        return None
    L = 8
    i32, i64 = ir.IntType(32), ir.IntType(64)
    fv, iv, hv = ir.VectorType(ir.FloatType(), L), ir.VectorType(i32, L), ir.VectorType(ir.HalfType(), L)
    ret = types.UniTuple(types.int64, 3)

    def ci(v):
        return ir.Constant(iv, [v] * L)

    def codegen(context, builder, signature, args):
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        n = args[1]
        counts = [cgutils.alloca_once_value(builder, ci(0)) for _ in range(3)]  # registers after mem2reg
        inf, zero = ci(0x7F800000), ir.Constant(fv, [0.0] * L)
        with cgutils.for_range_slice(builder, ir.Constant(n.type, 0), n, ir.Constant(n.type, L)) as (i, _):
            ptr = builder.bitcast(builder.gep(arr.data, [i]), fv.as_pointer())
            v = builder.load(ptr, align=4)
            r = builder.fpext(builder.fptrunc(v, hv), fv)
            vb, rb = builder.bitcast(v, iv), builder.bitcast(r, iv)
            nan = builder.fcmp_unordered("uno", v, v)
            qnan = builder.or_(builder.and_(vb, ci(-0x80000000)), ci(_QNAN32))
            builder.store(builder.bitcast(builder.select(nan, qnan, rb), fv), ptr, align=4)
            big = builder.and_(builder.icmp_signed("!=", builder.and_(vb, ci(0x7FFFFFFF)), inf),
                               builder.icmp_signed("==", builder.and_(rb, ci(0x7FFFFFFF)), inf))
            under = builder.and_(builder.fcmp_unordered("!=", v, zero), builder.fcmp_ordered("==", r, zero))
            for c, m in zip(counts, (nan, big, under)):
                builder.store(builder.sub(builder.load(c), builder.sext(m, iv)), c)  # a true lane is -1
        out = []
        for c in counts:
            vec = builder.load(c)
            tot = ir.Constant(i64, 0)
            for lane in range(L):
                tot = builder.add(tot, builder.zext(builder.extract_element(vec, ir.Constant(i32, lane)), i64))
            out.append(tot)
        return context.make_tuple(builder, ret, out)

    return ret(x, types.intp), codegen


@njit(cache=True, nogil=True)
def _f16_count_inplace(x):
    # A twin of the loop above, not one loop with an fp16 flag: LLVM then vectorised neither
    # path (measured 6x slower for bf16).
    nan = big = under = 0
    for i in range(x.size):
        r, n, b, u = _f16_one(x[i])
        x[i] = np.uint32(r).view(np.float32)
        nan, big, under = nan + n, big + b, under + u
    return nan, big, under


@njit(cache=True, nogil=True)
def _f16_count_inplace_vec(x):
    """_f16_count_inplace in 8-lane steps (only where the CPU has F16C), the tail scalar.
    Lane counts are 32-bit: fine below 2**34 elements."""
    n8 = x.size - x.size % 8
    nan, big, under = _f16_round_vec(x, n8)
    for i in range(n8, x.size):
        r, n, b, u = _f16_one(x[i])
        x[i] = np.uint32(r).view(np.float32)
        nan, big, under = nan + n, big + b, under + u
    return nan, big, under


def round_count(src: np.ndarray, dst: np.ndarray, p, th: float, strict: bool) -> tuple[int, int, int]:
    """Round 1-D float32 `src` to nearest-even into float32 `dst` (src itself, or memory not
    overlapping it) in one pass, returning (NaNs in src, finite values beyond th, nonzeros
    rounded to zero). `p` holds the format's kernel parameters (halfsim.formats._params); th
    and strict its overflow threshold."""
    if dst is not src:
        np.copyto(dst, src)  # then in place: a copy costs less than a second pair of kernels
    if p.fp16:
        return _f16_count_inplace_vec(dst) if HW_F16C else _f16_count_inplace(dst)
    return _round_count_inplace(dst, p.s, p.half_m1, int(p.s > 0), p.be_min, p.up_scale, p.down_scale, p.maxbits,
                                p.has_inf, np.float32(th), strict)


def inplace_counter(p, th: float, strict: bool):
    """round_count(x, x, p, th, strict) as one callable of a 1-D float32 array, its choices
    made once per format (a small tensor's rounding is mostly call overhead)."""
    if p.fp16:
        return _f16_count_inplace_vec if HW_F16C else _f16_count_inplace
    args = (p.s, p.half_m1, int(p.s > 0), p.be_min, p.up_scale, p.down_scale, p.maxbits, p.has_inf, np.float32(th),
            strict)
    return lambda x: _round_count_inplace(x, *args)
