"""Register-tiled tensor-core GEMM: the fp32-output, toward-zero block FMA of kernels.tensorcore
(same bits as dot_scalar) for inputs whose nonzero values lie in [2**-30, 2**31) and a C whose
nonzero values lie in [2**-99, 2**100); tile_gemm says None otherwise.

A tile of _TR rows x _TW columns of the output keeps its accumulators in AVX2 registers
(<8 x float>) for a chunk of K; per block of blk products and per lane:
  * the alignment exponent is an integer maximum: emax = max(C's biased exponent field,
    ea_k + eb_k + 127 over the block, 28), the products' part in int16 lanes (a tile row's 16
    columns in one register). Zero inputs carry the exponent -16000, so they never set it. The
    floor 28 (2^-99) only acts when every term is zero: a nonzero product is
    >= 2^-60 and a nonzero C >= 2^-99 (the caller's by the check, a block's as it is at least
    one unit 2^(emax - w) >= 2^-87);
  * G = 2^(w - emax) and 2^(emax - w) are float32 bit patterns, normal for 3 <= w <= 27;
  * each term trunc(a*b*G) and trunc(C*G) is an exact float32 product (at most 24 significant
    bits, < 2^(w+2); a product below 1 truncates to 0 however it rounds) converted to int32
    toward zero, and the block sum S is an int32: |S| < 2^(w+1) + blk * 2^(w+2). Where that
    bound passes 2^31 (K=16 with w=25: the H100 fp16/bf16 units) the products alone still fit,
    and a lane whose sum leaves [-2^30, 2^30] is marked NaN and recomputed by the caller
    through dot_scalar (the "checked" kernel);
  * the result RZ(S * 2^(emax - w)) is float32(S) rounded toward zero (by MXCSR's rounding
    field on x86, else by stepping a nearest conversion back), times 2^(emax - w): exact, as
    the result is >= 2^-126 and, since truncation only shrinks terms, below
    |C| + sum |a*b| < 2^100 + K * 2^62: no subnormal and no overflow to handle.
numba has no SIMD types and LLVM does not keep such a tile in registers by itself, so the tile
is emitted as LLVM IR (as kernels.accumulate does for the strict fp16 GEMM).
"""
from __future__ import annotations

import platform

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

_TR, _TV, _TL = 4, 2, 8  # tile rows, vectors per row, lanes per vector (AVX2)
_TW = _TV * _TL  # tile columns
_KC = 128  # products per K chunk: a chunk of A's rows and of B stays in L2 across tiles
_ZERO_E = -16000  # exponent of zero inputs: sums with it stay far below every real one, in int16
_C_MIN, _C_MAX = 2.0 ** -99, 2.0 ** 100  # range of a nonzero C the tile takes (module docstring)
_F2 = types.Array(types.float32, 2, "C")
_H2 = types.Array(types.int16, 2, "C")


def _make_tile(checked: bool, rz_mode: bool):
    """Intrinsic tile(av, ae, bv, be, acc, i0, ka0, kb0, j0, nblk, blk, w): acc[i0:i0+_TR,
    j0:j0+_TW] <- nblk chained blocks of blk products (columns ka0.. of av/ae, rows kb0.. of
    bv/be), starting from the C held there. checked: lanes whose block sum may have left int32
    come back NaN, and stay NaN in later chunks. rz_mode: the int32 -> float32 conversion of
    the block sum rounds toward zero by itself, MXCSR's rounding field set for the tile's span
    (x86 only); else it rounds to nearest and is corrected."""
    L = _TL
    i16, i32 = ir.IntType(16), ir.IntType(32)
    fv, iv = ir.VectorType(ir.FloatType(), L), ir.VectorType(i32, L)
    hv = ir.VectorType(i16, _TW)  # the tile row's exponents: int16 lanes, one AVX2 register

    def ci(x):
        return ir.Constant(iv, [x] * L)

    @intrinsic
    def tile(typingctx, av, ae, bv, be, acc, i0, ka0, kb0, j0, nblk, blk, w):
        sig = types.void(_F2, _H2, _F2, _H2, _F2, types.intp, types.intp, types.intp, types.intp,
                         types.intp, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            av_, ae_, bv_, be_, acc_, i0_, ka0_, kb0_, j0_, nblk_, blk_, w_ = args
            A = context.make_array(_F2)(context, builder, av_)
            AE = context.make_array(_H2)(context, builder, ae_)
            B = context.make_array(_F2)(context, builder, bv_)
            BE = context.make_array(_H2)(context, builder, be_)
            O = context.make_array(_F2)(context, builder, acc_)
            Ka = cgutils.unpack_tuple(builder, A.shape)[1]
            N = cgutils.unpack_tuple(builder, B.shape)[1]
            ity = Ka.type

            def idx(x):
                return ir.Constant(ity, x)

            def splat(x, vty):
                v = builder.insert_element(ir.Constant(vty, ir.Undefined), x, ir.Constant(i32, 0))
                return builder.shuffle_vector(v, ir.Constant(vty, ir.Undefined),
                                              ir.Constant(ir.VectorType(i32, vty.count), [0] * vty.count))

            def vptr(ary, off, vty):
                return builder.bitcast(builder.gep(ary.data, [off]), vty.as_pointer())

            def smax(x, y):
                return builder.select(builder.icmp_signed(">", x, y), x, y)

            def load(p):
                return builder.load(p)

            def store(x, p):
                builder.store(x, p)

            w32 = builder.trunc(w_, i32)
            # G's biased exponent field + emax's, and w, both in the exponent field's place
            g_bias = splat(builder.shl(builder.add(w32, ir.Constant(i32, 254)), ir.Constant(i32, 23)), iv)
            s_bias = splat(builder.shl(w32, ir.Constant(i32, 23)), iv)
            R, V = range(_TR), range(_TV)
            # per row r and vector v of 8 columns (allocas: registers after mem2reg)
            acc, ce, G, S, bad = ([[cgutils.alloca_once(builder, t) for _ in V] for _ in R]
                                  for t in (fv, iv, fv, iv, iv))
            em = [cgutils.alloca_once(builder, hv) for _ in R]  # the products' maximum, int16
            orow = [builder.add(builder.mul(builder.add(i0_, idx(r)), N), j0_) for r in R]
            arow = [builder.add(builder.mul(builder.add(i0_, idx(r)), Ka), ka0_) for r in R]
            for r in R:
                for v in V:
                    x = builder.load(vptr(O, builder.add(orow[r], idx(L * v)), fv), align=4)
                    store(x, acc[r][v])
                    store(builder.sext(builder.fcmp_unordered("uno", x, x), iv), bad[r][v])
            if rz_mode:
                csr = cgutils.alloca_once(builder, i32)
                i8p = ir.IntType(8).as_pointer()
                fnty = ir.FunctionType(ir.VoidType(), [i8p])
                stm = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.sse.stmxcsr")
                ldm = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.sse.ldmxcsr")
                builder.call(stm, [builder.bitcast(csr, i8p)])
                saved = load(csr)
                store(builder.or_(saved, ir.Constant(i32, 0x6000)), csr)  # RC = toward zero
                builder.call(ldm, [builder.bitcast(csr, i8p)])

            def brow(k):
                return builder.add(builder.mul(builder.add(kb0_, k), N), j0_)

            def a_at(ary, r, k):
                return builder.load(builder.gep(ary.data, [builder.add(arow[r], k)]))

            def exps(k):  # em <- max(em, ea_k + eb_k), all 16 columns in one int16 vector
                ebk = builder.load(vptr(BE, brow(k), hv), align=2)
                for r in R:
                    store(smax(load(em[r]), builder.add(splat(a_at(AE, r, k), hv), ebk)), em[r])

            def products(k):  # S <- S + trunc(a_k * b_k * G)
                bk = [builder.load(vptr(B, builder.add(brow(k), idx(L * v)), fv), align=4) for v in V]
                for r in R:
                    a = splat(a_at(A, r, k), fv)
                    for v in V:
                        t = builder.fptosi(builder.fmul(builder.fmul(a, bk[v]), load(G[r][v])), iv)
                        store(builder.add(load(S[r][v]), t), S[r][v])

            with cgutils.for_range(builder, nblk_) as blo:
                k0 = builder.mul(blo.index, blk_)
                for r in R:
                    store(ir.Constant(hv, [28] * _TW), em[r])  # the floor
                with cgutils.for_range(builder, blk_) as kl:
                    exps(builder.add(k0, kl.index))
                for r in R:
                    for v in V:
                        half = builder.shuffle_vector(load(em[r]), ir.Constant(hv, ir.Undefined),
                                                      ir.Constant(iv, list(range(L * v, L * v + L))))
                        # emax in place in the exponent field: C's field as it is, the products'
                        # shifted there; then G and 2^(emax - w) are one subtraction each
                        c_field = builder.and_(builder.bitcast(load(acc[r][v]), iv), ci(0x7F800000))
                        e = smax(c_field, builder.shl(builder.sext(half, iv), ci(23)))
                        g = builder.bitcast(builder.sub(g_bias, e), fv)
                        store(g, G[r][v])
                        store(builder.sub(e, s_bias), ce[r][v])  # 2^(emax - w)
                        store(builder.fptosi(builder.fmul(load(acc[r][v]), g), iv), S[r][v])
                with cgutils.for_range(builder, blk_) as kl:
                    products(builder.add(k0, kl.index))
                for r in R:
                    for v in V:
                        s = load(S[r][v])
                        if checked:  # |S| > 2^30, or S = -2^31 (its magnitude wraps): maybe overflowed
                            mag = builder.select(builder.icmp_signed("<", s, ci(0)), builder.sub(ci(0), s), s)
                            out = builder.sext(builder.icmp_signed(">", builder.sub(mag, ci(1)), ci((1 << 30) - 1)), iv)
                            store(builder.or_(load(bad[r][v]), out), bad[r][v])
                            s = builder.and_(s, builder.not_(out))  # a marked lane goes on from 0
                        if rz_mode:  # the conversion itself rounds toward zero
                            fb = builder.bitcast(builder.sitofp(s, fv), iv)
                        else:  # |S| to nearest, one step back where it rounded up, the sign put back
                            mag = builder.select(builder.icmp_signed("<", s, ci(0)), builder.sub(ci(0), s), s)
                            f = builder.sitofp(mag, fv)
                            up = builder.sext(builder.icmp_signed(">", builder.fptosi(f, iv), mag), iv)
                            fb = builder.add(builder.bitcast(f, iv), up)
                            fb = builder.or_(fb, builder.and_(s, ci(-0x80000000)))
                        store(builder.fmul(builder.bitcast(fb, fv), builder.bitcast(load(ce[r][v]), fv)), acc[r][v])
            for r in R:
                for v in V:
                    x = load(acc[r][v])
                    if checked:
                        nan = ir.Constant(fv, [float("nan")] * L)
                        x = builder.select(builder.icmp_signed("!=", load(bad[r][v]), ci(0)), nan, x)
                    builder.store(x, vptr(O, builder.add(orow[r], idx(L * v)), fv), align=4)
            if rz_mode:
                store(saved, csr)
                builder.call(ldm, [builder.bitcast(csr, i8p)])
            return context.get_dummy_value()

        return sig, codegen

    return tile


# rounding-mode control through MXCSR: x86 only (numba compiles for the host)
HW_RZ: bool = platform.machine().lower() in ("x86_64", "amd64")
_T0, _T1 = _make_tile(False, False), _make_tile(True, False)
_T2, _T3 = (_make_tile(False, True), _make_tile(True, True)) if HW_RZ else (_T0, _T1)


@njit(cache=True, parallel=True)
def _prepare(x, mbits, emin, bias, rows_to, cols_to):
    """x [nb, R, C] (A or B) -> values [nb*rows_to, cols_to] float32 and alignment exponents +
    bias, int16 (zero-padded; zeros and non-finite values: value 0, exponent _ZERO_E), and
    whether every nonzero finite value lies in [2**-30, 2**31)."""
    nb, R, C = x.shape
    v = np.zeros((nb * rows_to, cols_to), np.float32)
    e = np.full((nb * rows_to, cols_to), _ZERO_E, np.int16)
    bad = 0
    for r in prange(nb * R):
        bi = r // R
        i = r % R
        bad += _put_row(x[bi, i], mbits, emin, bias, v[bi * rows_to + i], e[bi * rows_to + i])
    return v, e, bad == 0


@njit(cache=True)
def _put_row(x, mbits, emin, bias, v, e):
    """v[:n], e[:n] <- each x's value in the format (fraction bits below the format's last one
    dropped: exact for values in the format, the tf32 truncation of raw fp32) and alignment
    exponent + bias; returns how many nonzero values lie outside [2**-30, 2**31). Branch-free
    integer steps, so that the loop vectorizes."""
    bad = 0
    for j in range(x.size):
        bits = np.float32(x[j]).view(np.int32)
        be = (bits >> 23) & 0xFF
        ex = (be if be > 1 else 1) - 127  # fp32 subnormals sit at -126
        d = emin - ex
        drop = 23 - mbits + (d if d > 0 else 0)
        keep = np.int32(-(np.int32(drop < 24) & np.int32(be != 0xFF)))  # else 0: below the last bit
        vb = np.int32(bits & ~((np.int32(1) << np.int32(drop if drop < 24 else 0)) - 1) & keep)
        nz = (vb & 0x7FFFFFFF) != 0
        v[j] = vb.view(np.float32)
        e[j] = np.int16((ex if ex > emin else emin) + bias if nz else _ZERO_E)
        vbe = (vb >> 23) & 0xFF
        bad += 1 if nz and (vbe < 97 or vbe > 157) else 0  # 2^-30 .. 2^31
    return bad


@njit(cache=True, parallel=True)
def _prepare_c(c, rows_to, cols_to):
    """C [nb, M, N] -> the padded accumulator [nb*rows_to, cols_to] (non-finite C as 0: those
    outputs are recomputed), and whether every nonzero finite |C| lies in [_C_MIN, _C_MAX)."""
    nb, M, N = c.shape
    acc = np.zeros((nb * rows_to, cols_to), np.float32)
    bad = 0
    for r in prange(nb * M):
        bi = r // M
        i = r % M
        for j in range(N):
            x = c[bi, i, j]
            if np.isfinite(x):
                acc[bi * rows_to + i, j] = x
                bad += 1 if (x != 0 and (abs(x) < _C_MIN or abs(x) >= _C_MAX)) else 0
    return acc, bad == 0


@njit(cache=True, parallel=True)
def _tiles(av, ae, bv, be, acc, nb, kp, blk, w, mode):
    """Every tile of acc [nb*Mp, Np]: K in chunks (acc holds the chained C between them), each
    chunk in parallel over row tiles. mode: 1 checked, + 2 with MXCSR's rounding."""
    rows = acc.shape[0] // nb
    mt = acc.shape[0] // _TR
    nt = acc.shape[1] // _TW
    kc = max(blk, _KC // blk * blk)
    for k0 in range(0, kp, kc):
        nblk = min(kc, kp - k0) // blk
        for t in prange(mt):
            i0 = t * _TR
            kb0 = i0 // rows * kp + k0
            for jt in range(nt):
                j0 = jt * _TW
                if mode == 0:
                    _T0(av, ae, bv, be, acc, i0, k0, kb0, j0, nblk, blk, w)
                elif mode == 1:
                    _T1(av, ae, bv, be, acc, i0, k0, kb0, j0, nblk, blk, w)
                elif mode == 2:
                    _T2(av, ae, bv, be, acc, i0, k0, kb0, j0, nblk, blk, w)
                else:
                    _T3(av, ae, bv, be, acc, i0, k0, kb0, j0, nblk, blk, w)


def _up(n: int, m: int) -> int:
    return -(-n // m) * m


def tile_area(m: int, n: int) -> int:
    """Outputs computed for an m x n result, padding included."""
    return _up(m, _TR) * _up(n, _TW)


def tile_gemm(a: np.ndarray, b: np.ndarray, c: np.ndarray, blk: int, w: int, ma: int, emin_a: int,
              mb: int, emin_b: int, hw_rz: bool = HW_RZ) -> np.ndarray | None:
    """a [nb, M, K], b [nb, K, N], c [nb, M, N] float32 -> D [nb, M, N] with fp32 output and
    toward-zero block rounding, without the outputs that have non-finite inputs or C (the caller
    recomputes those, and NaN lanes); None where the tile's conditions fail (then nothing is
    computed): a window beyond 27 bits, products whose sum may leave int32, inputs outside
    [2**-30, 2**31) or a nonzero C outside [2**-99, 2**100)."""
    if w > 27 or blk * (1 << (w + 2)) > (1 << 31):
        return None
    nb, M, K = a.shape
    N = b.shape[2]
    if nb * M * N == 0:
        return np.empty((nb, M, N), np.float32)
    mp, kp, np_ = _up(M, _TR), _up(K, blk), _up(N, _TW)
    acc, ok = _prepare_c(c, mp, np_)
    if not ok:
        return None
    av, ae, ok = _prepare(a, ma, emin_a, 0, mp, kp)
    if not ok:
        return None
    bv, be, ok = _prepare(b, mb, emin_b, 127, kp, np_)
    if not ok:
        return None
    checked = (1 << (w + 1)) + blk * (1 << (w + 2)) > (1 << 31) - 1
    _tiles(av, ae, bv, be, acc, nb, kp, blk, w, int(checked) + 2 * int(hw_rz and HW_RZ))
    return acc.reshape(nb, mp, np_)[:, :M, :N]
