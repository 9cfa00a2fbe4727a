"""MLAS's uint8 x int8 integer GEMM on x86 hosts without VNNI: AVX2's vpmaddubsw multiplies
unsigned by signed bytes and adds each adjacent pair of products (k = 2j, 2j+1) with signed
saturation to int16 before the int32 accumulation, so ORT's MatMulInteger, DynamicQuantizeMatMul
and DynamicQuantizeLSTM results for full-range int8 weights are not the exact sums there (ORT's
quantizer suggests 7-bit weights for that reason). VNNI, AMX and ARM kernels are exact.
Used by ops/linalg.py (integer_matmul) and ops/contrib_recurrent.py."""
from __future__ import annotations

import platform

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _acc_row(a, w, acc, sat):
    """acc (int32 [N]) += sum over k of a[k]·w[k, :], a uint8 [K], w 8-bit [K, N]. sat: every
    adjacent pair (k = 2j, 2j+1) is summed and saturated to int16 first, as AVX2's vpmaddubsw
    (MLAS's u8·s8 kernel) does; each product fits int16, so the pair loop runs on 16-bit
    lanes (twice as fast as int32). Otherwise exact int32 sums (the caller bounds K)."""
    K = a.shape[0]
    N = w.shape[1]
    for j in range(0, K - 1, 2):
        w0 = w[j]
        w1 = w[j + 1]
        if sat:
            a0 = np.int16(a[j])
            a1 = np.int16(a[j + 1])
            for n in range(N):
                p0 = np.int16(a0 * np.int16(w0[n]))
                p1 = np.int16(a1 * np.int16(w1[n]))
                acc[n] += min(np.int32(32767), max(np.int32(-32768), np.int32(p0) + np.int32(p1)))
        else:
            b0 = np.int32(a[j])
            b1 = np.int32(a[j + 1])
            for n in range(N):
                acc[n] += b0 * np.int32(w0[n]) + b1 * np.int32(w1[n])
    if K % 2:  # the odd last column pairs with a zero: one product, never saturates
        b0 = np.int32(a[K - 1])
        w0 = w[K - 1]
        for n in range(N):
            acc[n] += b0 * np.int32(w0[n])


def _u8s8_saturates() -> bool:
    """Whether this host's MLAS multiplies u8·s8 with vpmaddubsw (AVX2 or AVX512BW without
    VNNI/AMX), which saturates each adjacent product pair to int16. VNNI, AMX and ARM kernels
    are exact. ORT's results for int8 weights differ between the two kinds of CPU."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((ln.split(":", 1)[1].split() for ln in fh if ln.startswith("flags")), [])
    except OSError:
        return True  # no way to tell: AVX2 without VNNI is the common case
    return "avx2" in flags and not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags)


U8S8_SATURATES = _u8s8_saturates()

# ---- the saturating u8·s8 product through AVX2's own instruction -----------------------------
# On the hosts where MLAS saturates (AVX2 without VNNI) the products run through the very
# instruction it uses, vpmaddubsw, on weights packed once as interleaved row pairs: ~3x the
# scalar pair loop's speed with the same sums by construction. Elsewhere the kernel is not
# compiled (the intrinsic exists only on x86 with AVX2) and the pair loop runs.
_I8_1D = types.Array(types.int8, 1, "C")
_I32_1D = types.Array(types.int32, 1, "C")


@intrinsic
def _pmaddubs16(typingctx, acc, aoff, bp, boff, apair):
    """acc[aoff:aoff+16] += sign-extended vpmaddubsw(apair broadcast, bp[boff:boff+32]): for
    i < 16, sat16(a0 * bp[boff+2i] + a1 * bp[boff+2i+1]) with apair = a0 | a1 << 8 (a0, a1
    unsigned bytes, bp signed)."""
    sig = types.void(_I32_1D, types.intp, _I8_1D, types.intp, types.int16)

    def codegen(context, builder, signature, args):
        acc_, aoff_, bp_, boff_, ap_ = args
        A = context.make_array(_I32_1D)(context, builder, acc_)
        B = context.make_array(_I8_1D)(context, builder, bp_)
        v32i8, v16i16 = ir.VectorType(ir.IntType(8), 32), ir.VectorType(ir.IntType(16), 16)
        v16i32 = ir.VectorType(ir.IntType(32), 16)
        bvec = builder.load(builder.bitcast(builder.gep(B.data, [boff_]), v32i8.as_pointer()), align=1)
        a16 = builder.insert_element(ir.Constant(v16i16, ir.Undefined), ap_, ir.Constant(ir.IntType(32), 0))
        a16 = builder.shuffle_vector(a16, ir.Constant(v16i16, ir.Undefined),
                                     ir.Constant(ir.VectorType(ir.IntType(32), 16), [0] * 16))
        name = "llvm.x86.avx2.pmadd.ub.sw"
        fn = builder.module.globals.get(name) or ir.Function(builder.module, ir.FunctionType(v16i16, [v32i8, v32i8]),
                                                             name=name)
        prod = builder.sext(builder.call(fn, [builder.bitcast(a16, v32i8), bvec]), v16i32)
        aptr = builder.bitcast(builder.gep(A.data, [aoff_]), v16i32.as_pointer())
        builder.store(builder.add(builder.load(aptr, align=4), prod), aptr, align=4)
        return context.get_dummy_value()
    return sig, codegen


@njit(cache=True, nogil=True)
def _acc_row_packed(a, bp, acc):
    """acc (int32 [Np]) += the pair-saturated products of a (uint8 [K]) with bp, a weight
    packed by _pack_pairs (Np = its padded width)."""
    K = a.shape[0]
    Np = acc.shape[0]
    for j in range((K + 1) // 2):
        a0 = np.int32(a[2 * j])
        a1 = np.int32(a[2 * j + 1]) if 2 * j + 1 < K else np.int32(0)
        ap = np.int16(((a0 | (a1 << 8)) ^ 0x8000) - 0x8000)  # the two bytes as one int16
        base = j * 2 * Np
        for n0 in range(0, Np, 16):
            _pmaddubs16(acc, n0, bp, base + 2 * n0, ap)


def _pack_pairs(w: np.ndarray) -> np.ndarray:
    """int8 [K, N] as rows k = 2j, 2j+1 interleaved per column, N padded to a multiple of 16
    (zeros; an odd K's last row pairs with zeros): flat [ceil(K/2) * Np * 2]."""
    K, N = w.shape
    Np = -(-N // 16) * 16
    p = np.zeros(((K + 1) // 2, Np, 2), np.int8)
    p[:, :N, 0] = w[0::2]
    p[:K // 2, :N, 1] = w[1::2]
    return p.reshape(-1)


_PACKED = U8S8_SATURATES  # AVX2 without VNNI: where the saturating products are asked for
_EMPTY_I8 = np.zeros(0, np.int8)


if _PACKED:
    @njit(cache=True, nogil=True, inline="always")
    def _row(a, w, bp, acc, sat):
        """acc += a · w (see _acc_row), through the packed weight when saturating."""
        if sat:
            _acc_row_packed(a, bp, acc)
        else:
            _acc_row(a, w, acc, sat)
else:
    @njit(cache=True, nogil=True, inline="always")
    def _row(a, w, bp, acc, sat):
        _acc_row(a, w, acc, sat)


@njit(cache=True, nogil=True)
def _u8s8_pairs(a, b, bp=_EMPTY_I8):
    """int32 [M, N] raw u8·s8 products of a (uint8 [M, K]) and b (int8 [K, N]) with AVX2's
    pair saturation (see _acc_row); bp: b packed by _pack_pairs on hosts with _PACKED."""
    N = b.shape[1]
    width = -(-N // 16) * 16 if bp.size else N
    out = np.zeros((a.shape[0], width), np.int32)
    for m in range(a.shape[0]):
        if bp.size:
            _row(a[m], b, bp, out[m], True)
        else:
            _acc_row(a[m], b, out[m], True)
    return out[:, :N]


def packed_pairs(b: np.ndarray) -> np.ndarray:
    """b (int8 [K, N]) packed for the vpmaddubsw kernel on hosts that have it, else empty (the
    pair loop reads b itself)."""
    return _pack_pairs(np.ascontiguousarray(b)) if _PACKED else _EMPTY_I8


def pair_bound(b: np.ndarray) -> int:
    """max over pairs k = 2j, 2j+1 and columns of |b[k]| + |b[k+1]| for int8 b [K, N] (see
    saturates)."""
    k2 = b.shape[0] // 2 * 2
    if k2 == 0 or b.shape[1] == 0:
        return 0
    return int((np.abs(b[0:k2:2].astype(np.int32)) + np.abs(b[1:k2:2].astype(np.int32))).max())


def saturates(a: np.ndarray, bound: int) -> bool:
    """Whether uint8 a against a weight of pair_bound `bound` can take a pair of products out of
    int16: only then do the saturating sums differ from exact ones."""
    return a.size > 0 and int(a.max()) * bound > 32767


def u8s8_matmul(a: np.ndarray, b: np.ndarray, za=0, zb=0, packed: np.ndarray | None = None,
                colsum: np.ndarray | None = None) -> np.ndarray:
    """int32 (a - za) @ (b - zb) as MLAS computes it on a saturating host: the raw pair-
    saturated products of a (uint8 [..., M, K]) and b (int8 [K, N]; `packed` by packed_pairs,
    `colsum` its column sums, both made here when not given), then the exact zero-point terms
    -za*colsum(b) - zb*rowsum(a) + K*za*zb. za: scalar or broadcastable to [..., M, 1]; zb:
    scalar or per column [N]."""
    K, N = b.shape
    packed = packed_pairs(b) if packed is None else packed
    colsum = b.sum(0, dtype=np.int64) if colsum is None else colsum
    acc = _u8s8_pairs(np.ascontiguousarray(a.reshape(-1, K)), np.ascontiguousarray(b), packed)
    acc = acc.astype(np.int64).reshape(a.shape[:-1] + (N,))
    za, zb = np.asarray(za, np.int64), np.asarray(zb, np.int64)
    acc -= za * colsum + zb * a.sum(-1, dtype=np.int64)[..., None] - K * za * zb
    return acc.astype(np.int32)
