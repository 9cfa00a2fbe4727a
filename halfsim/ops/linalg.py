"""Linear algebra: MatMul, Gemm, Einsum, MatMulInteger, QLinearMatMul.

Every float inner product goes through ctx.matmul (the precision plan swaps in low-precision
accumulation there); integer products are exact (float32/float64 BLAS within their exact range)."""
from __future__ import annotations

import numpy as np

from ..errors import ExecutionError, ModelError
from ..kernels.blas import matmul as split_matmul
from ..kernels.u8s8 import U8S8_SATURATES, packed_pairs, pair_bound, saturates, u8s8_matmul
from .registry import op


def is_float(a: np.ndarray) -> bool:
    return a.dtype.kind == "f" or a.dtype.name == "bfloat16"


def fmatmul(ctx, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Float matmul through ctx.matmul with ONNX 1-D promotion (the plan sees >= 2-D operands)."""
    if a.ndim == 0 or b.ndim == 0:
        raise ExecutionError("MatMul operands must have rank >= 1")
    a1, b1 = a.ndim == 1, b.ndim == 1
    if a1:
        a = a[None, :]
    if b1:
        b = b[:, None]
    if a.shape[-1] != b.shape[-2]:
        raise ExecutionError(f"MatMul inner dimensions differ: {list(a.shape)} x {list(b.shape)}")
    if is_float(a):
        y = ctx.matmul(a, b)
    else:
        y = int_matmul(a, b).astype(np.result_type(a.dtype, b.dtype), copy=False)
    if a1:
        y = y[..., 0, :]
    if b1:
        y = y[..., 0]
    return y


def int_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact integer matmul on BLAS. sgemm is exact while every partial sum stays below 2**24:
    used directly when the operands' ranges allow, else with A split as 16*hi + lo (two
    sgemms, each with a 16x smaller range); then dgemm (exact below 2**53); else int64."""
    amax = max(abs(int(a.max())), abs(int(a.min()))) if a.size else 0
    bmax = max(abs(int(b.max())), abs(int(b.min()))) if b.size else 0
    k = a.shape[-1]
    y = sgemm_exact(a, lambda: b.astype(np.float32), amax, bmax, k)
    if y is not None:
        return y
    if amax * bmax * k < 2 ** 53:
        return split_matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.int64)
    return split_matmul(a.astype(np.int64), b.astype(np.int64))


def one_gemm_exact(a: np.ndarray, amax: int, bmax: int, k: int) -> bool:
    """Whether every partial sum of a @ b (integers, |a| <= amax, |b| <= bmax) is below 2**24,
    so that one float32 GEMM is exact in any summation order."""
    return amax * bmax * k < 2 ** 24 or bool(a.size and int(np.abs(a, dtype=np.int64).sum(axis=-1).max()) * bmax < 2 ** 24)


def sgemm_exact(a: np.ndarray, bf, amax: int, bmax: int, k: int) -> np.ndarray | None:
    """a @ b as int32 through float32 GEMMs when that is exact, else None. a: integers with
    |a| <= amax; bf: b as float32 (or a callable making it) with |b| <= bmax. Every result is
    below 2**24 * 17 (one GEMM, up to 8 K-slices, or 16 * hi + lo), so int32 holds it: one
    conversion pass instead of float32 -> int64 -> the ops' int32."""
    # Every partial sum of row m is at most sum_k |a_mk| * bmax: activations are far from
    # amax almost everywhere, so this usually allows one GEMM where amax * bmax * k does not
    # (K-slices cost ~1.4x one GEMM; ddddocr's MatMulInteger bound: 0.07 * 2**24 vs 1.06).
    if one_gemm_exact(a, amax, bmax, k):
        return split_matmul(a.astype(np.float32), bf() if callable(bf) else bf).astype(np.int32)
    kc = (2 ** 24 - 1) // (amax * bmax) if amax * bmax else k
    if kc >= 1 and -(-k // kc) <= 8:
        # Sums over at most kc terms stay below 2**24: a few K-slices, one GEMM's work in all
        # (the 16*hi + lo split below costs two full GEMMs).
        bf = bf() if callable(bf) else bf
        af = a.astype(np.float32)
        y = None
        for k0 in range(0, k, kc):
            part = split_matmul(af[..., k0:k0 + kc], bf[..., k0:k0 + kc, :]).astype(np.int32)
            y = part if y is None else y + part
        return y
    if (amax // 16 + 1) * bmax * k < 2 ** 24 and amax < 2 ** 15:
        bf = bf() if callable(bf) else bf
        ai = a.astype(np.int32)
        hi = split_matmul((ai >> 4).astype(np.float32), bf).astype(np.int32)  # floor(a / 16)
        lo = split_matmul((ai & 15).astype(np.float32), bf).astype(np.int32)
        return hi * 16 + lo
    return None


@op("MatMul", since=1)
def matmul(ctx, a, b):
    return fmatmul(ctx, a, b)


def _gemm(ctx, a, b, c, alpha, beta, transA, transB):
    if a.ndim != 2 or b.ndim != 2:
        raise ExecutionError(f"Gemm needs 2-D A and B, got {list(a.shape)} and {list(b.shape)}")
    if transA:
        a = a.T
    if transB:
        b = b.T
    if a.shape[1] != b.shape[0]:
        raise ExecutionError(f"Gemm inner dimensions differ: {list(a.shape)} x {list(b.shape)}")
    y = fmatmul(ctx, a, b)
    dt = y.dtype
    if alpha != 1.0:
        y = y * np.asarray(alpha, dtype=dt) if is_float(y) else (y * int(alpha)).astype(dt)
    if c is not None and beta != 0.0:
        cc = c if beta == 1.0 else (c * np.asarray(beta, dtype=dt) if is_float(c) else (c * int(beta)).astype(dt))
        y = y + cc
        if y.dtype != dt:
            y = y.astype(dt)
    return y


@op("Gemm", since=1)
def gemm_v1(ctx, a, b, c, *, alpha=1.0, beta=1.0, transA=0, transB=0, broadcast=0):
    # Opsets 1-6: without broadcast=1 C must already have the output shape; we broadcast anyway.
    return _gemm(ctx, a, b, c, alpha, beta, transA, transB)


@op("Gemm", since=7)
def gemm_v7(ctx, a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0):
    return _gemm(ctx, a, b, c, alpha, beta, transA, transB)


# ---------------------------------------------------------------------------------- Einsum
def _parse_einsum(eq: str, ranks: list[int]):
    """Returns (operand letter lists, output letter list); ellipsis dims become the chars
    '\\x00'.. so that they behave as ordinary letters aligned from the right."""
    eq = eq.replace(" ", "")
    if "->" in eq:
        lhs, rhs = eq.split("->")
    else:
        lhs, rhs = eq, None
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise ModelError(f"Einsum equation {eq!r} has {len(terms)} operands, the node has {len(ranks)} inputs")
    ell_rank = 0
    for t, r in zip(terms, ranks):
        if "..." in t:
            ell_rank = max(ell_rank, r - (len(t) - 3))
    ell = [chr(i) for i in range(ell_rank)]
    ops = []
    for t, r in zip(terms, ranks):
        if "..." in t:
            pre, post = t.split("...")
            k = r - len(pre) - len(post)
            if k < 0:
                raise ExecutionError(f"Einsum term {t!r} does not fit an operand of rank {r}")
            letters = list(pre) + ell[ell_rank - k:] + list(post)
        else:
            letters = list(t)
        if len(letters) != r or not all(c.isalpha() or c < " " for c in letters):
            raise ExecutionError(f"Einsum term {t!r} does not fit an operand of rank {r}")
        ops.append(letters)
    if rhs is None:
        counts: dict[str, int] = {}
        for letters in ops:
            for c in letters:
                counts[c] = counts.get(c, 0) + 1
        out = ell + sorted(c for c, n in counts.items() if n == 1 and c >= " ")
    else:
        if "..." in rhs:
            pre, post = rhs.split("...")
            out = list(pre) + ell + list(post)
        else:
            out = list(rhs)
        if len(set(out)) != len(out):
            raise ModelError(f"Einsum output {rhs!r} repeats a letter")
        have = {c for letters in ops for c in letters}
        if any(c not in have for c in out):
            raise ModelError(f"Einsum output {rhs!r} names a letter no operand has")
    return ops, out


def _fsum(ctx, x, axes):
    if not axes:
        return x
    if is_float(x):
        return ctx.sum(x, axis=tuple(axes), keepdims=False)
    return np.sum(x, axis=tuple(axes), dtype=x.dtype)


def _prepare(ctx, x, letters, keep):
    """Take diagonals of repeated letters and sum out letters nobody else needs."""
    uniq = list(dict.fromkeys(letters))
    if len(uniq) != len(letters):
        # np.einsum with every letter of the output once only extracts a diagonal (no sums).
        sub = "".join(chr(97 + uniq.index(c)) for c in letters)
        x = np.einsum(f"{sub}->{''.join(chr(97 + i) for i in range(len(uniq)))}", x)
        letters = uniq
    drop = [i for i, c in enumerate(letters) if c not in keep]
    x = _fsum(ctx, x, drop)
    return x, [c for c in letters if c in keep]


def _contract(ctx, a, la, b, lb, keep):
    sizes = {}
    for x, ls in ((a, la), (b, lb)):
        for c, n in zip(ls, x.shape):
            if c not in sizes or sizes[c] == 1:
                sizes[c] = n
            elif n != 1 and n != sizes[c]:
                raise ExecutionError(f"Einsum dimension mismatch: {sizes[c]} vs {n}")
    shared = [c for c in la if c in lb]
    batch = [c for c in shared if c in keep]
    red = [c for c in shared if c not in keep]
    a_only = [c for c in la if c not in lb]
    b_only = [c for c in lb if c not in la]

    def arrange(x, ls, order):
        x = x.transpose([ls.index(c) for c in order])
        return np.broadcast_to(x, [sizes[c] if c in shared else x.shape[i] for i, c in enumerate(order)])

    A = arrange(a, la, batch + a_only + red)
    B = arrange(b, lb, batch + red + b_only)
    nb = [sizes[c] for c in batch]
    na = int(np.prod([sizes[c] for c in a_only], dtype=np.int64))
    nbo = int(np.prod([sizes[c] for c in b_only], dtype=np.int64))
    k = int(np.prod([sizes[c] for c in red], dtype=np.int64))
    A = A.reshape(nb + [na, k])
    B = B.reshape(nb + [k, nbo])
    if is_float(A):
        y = ctx.matmul(A, B)
    else:
        y = int_matmul(A, B).astype(A.dtype)
    y = y.reshape(nb + [sizes[c] for c in a_only] + [sizes[c] for c in b_only])
    return y, batch + a_only + b_only


@op("Einsum", since=12)
def einsum(ctx, *xs, equation):
    xs = [np.asarray(x) for x in xs]
    ops, out = _parse_einsum(equation, [x.ndim for x in xs])
    dt = xs[0].dtype
    cur, lc = None, None
    for i, (x, ls) in enumerate(zip(xs, ops)):
        later = set(out) | {c for o in ops[i + 1:] for c in o}
        keep = later | set(lc or ())
        x, ls = _prepare(ctx, x, ls, keep)
        if cur is None:
            cur, lc = x, ls
            continue
        cur, lc = _contract(ctx, cur, lc, x, ls, later)
    cur, lc = _prepare(ctx, cur, lc, set(out))
    y = np.asarray(cur).transpose([lc.index(c) for c in out])
    return np.array(y, dtype=dt, order="C")


# ------------------------------------------------------------------------- integer matmul
def _u8s8_pair(a_dtype, b, bzp) -> bool:
    """Whether this is a product MLAS runs through the saturating uint8 x int8 kernel (on this
    host, for a 2-D B with a per-tensor or per-column zero point)."""
    return (U8S8_SATURATES and a_dtype == np.uint8 and b.dtype == np.int8 and b.ndim == 2
            and (bzp is None or np.ndim(bzp) <= 1))


def _zp_row(zp, a):
    """A's zero point: scalar, per-row 1-D (M) or N-D shaped like [.., M, 1]."""
    if zp is None:
        return 0
    zp = zp.astype(np.int32)
    if zp.ndim == 1 and zp.size > 1 and a.ndim >= 2:
        return zp.reshape(-1, 1)
    return zp.reshape(()) if zp.size == 1 else zp


def _zp_col(zp):
    """B's zero point: scalar, per-column 1-D (N) or N-D shaped like [.., 1, N]."""
    if zp is None:
        return 0
    zp = zp.astype(np.int32)
    return zp.reshape(()) if zp.size == 1 else zp


def integer_matmul(a, b, azp, bzp) -> np.ndarray:
    """(A - azp) @ (B - bzp) as ORT's MLAS: exact (int32 where float32 GEMMs were exact, else
    int64), except uint8 x int8 on hosts whose kernel saturates pairs of products to int16
    (kernels/u8s8.py), when the values can reach that."""
    a1, b1 = a.ndim == 1, b.ndim == 1
    if _u8s8_pair(a.dtype, b, bzp) and saturates(a, pair_bound(b)):
        A = a[None, :] if a1 else a
        y = u8s8_matmul(A, b, _zp_row(azp, A), _zp_col(bzp))
        return y[..., 0, :] if a1 else y
    A = a.astype(np.int32) - _zp_row(azp, a)
    B = b.astype(np.int32) - _zp_col(bzp)
    if a1:
        A = A[None, :]
    if b1:
        B = B[:, None]
    y = int_matmul(A, B)
    if a1:
        y = y[..., 0, :]
    if b1:
        y = y[..., 0]
    return y


@op("MatMulInteger", since=10)
def matmul_integer(ctx, a, b, a_zero_point=None, b_zero_point=None):
    # Wraps like the int32 accumulator of a real kernel.
    return integer_matmul(a, b, a_zero_point, b_zero_point).astype(np.int32, copy=False)


def _specialize_matmul_integer(node, consts: dict):
    """With a constant 2-D B (and zero point): B - bzp is prepared once per model. An 8-bit B
    stays 8-bit: column blocks are widened to float32 per call in a cache-sized buffer
    (kernels/qgemm.py; no 4x float32 copy of the weights, same CPU time) whenever one float32
    GEMM is exact; otherwise (or without a bindable sgemm) a float32 copy of B - bzp, made on
    first need, goes to sgemm_exact, which may split A into 16 * hi + lo. Same int32 result as
    matmul_integer."""
    b = consts.get(1)
    if b is None or b.ndim != 2 or (len(node.inputs) > 3 and node.inputs[3] and 3 not in consts):
        return None
    K, N = b.shape
    zp = consts.get(3)
    zc = _zp_col(zp)
    # max |b - bzp| from column extremes (no full-size temporary: peak memory counts it).
    z = np.asarray(zc, dtype=np.int64)
    bmax = int(np.maximum(np.abs(b.max(axis=0).astype(np.int64) - z), np.abs(b.min(axis=0).astype(np.int64) - z)).max()) \
        if b.size else 0
    bz = np.asarray(zc, dtype=np.float32).reshape(-1)
    blocked = b.dtype in (np.uint8, np.int8) and b.flags.c_contiguous and bz.size in (1, N) and b.size > 0
    bc: list = []  # the float32 copy of B - bzp, made on first need

    def bf():
        if not bc:
            bc.append((b.astype(np.int32) - zc).astype(np.float32))
        return bc[0]

    # MLAS's saturating uint8 x int8 sums (kernels/u8s8.py), where they can differ from exact ones
    bound = pair_bound(b) if _u8s8_pair(np.uint8, b, zp) else 0
    prepared: list = []  # b packed, and its column sums, made on first need

    def fn(ctx, a, b_, a_zero_point=None, b_zero_point=None):
        if a.ndim < 2:
            return matmul_integer(ctx, a, b_, a_zero_point, b_zero_point)
        if bound and a.dtype == np.uint8 and saturates(a, bound):
            if not prepared:
                prepared.extend((packed_pairs(b), b.sum(0, dtype=np.int64)))
            return u8s8_matmul(a, b, _zp_row(a_zero_point, a), zc, *prepared)
        A = a.astype(np.int32) - _zp_row(a_zero_point, a)
        amax = int(np.abs(A).max()) if A.size else 0
        if blocked and A.size and one_gemm_exact(A, amax, bmax, K):
            from ..kernels.cblas import sgemm_address
            fptr = sgemm_address()
            if fptr:
                return _blocked_int_gemm(fptr, A, b, bz)
        y = sgemm_exact(A, bf, amax, bmax, K)
        if y is None:
            return matmul_integer(ctx, a, b_, a_zero_point, b_zero_point)
        return y
    return fn


def _blocked_int_gemm(fptr: int, A: np.ndarray, b: np.ndarray, bz: np.ndarray) -> np.ndarray:
    """A (..., K) @ (b - bz) as int32 through kernels/qgemm.blocks_u8 (exactness is the
    caller's check); column blocks of ~1 MB of float32, split on the kernel threads from the
    split matmul's threshold."""
    from ..kernels.blas import _MIN_WORK
    from ..kernels.conv import run_split
    from ..kernels.qgemm import blocks_u8
    K, N = b.shape
    af = A.reshape(-1, K).astype(np.float32)
    y = np.empty((af.shape[0], N), np.float32)
    nb = max(16, min(N, (1 << 20) // (4 * K) // 16 * 16))
    run_split(blocks_u8, (fptr, af, b, bz, y, nb), -(-N // nb), af.shape[0] * K * N, min_work=_MIN_WORK)
    return y.astype(np.int32).reshape(A.shape[:-1] + (N,))


# The fp32 interpreter offers ops with a `specialize(node, constant inputs)` attribute a
# one-time preparation of their constant inputs (see interpreter._FastGraph).
matmul_integer.specialize = _specialize_matmul_integer


def requantize(acc: np.ndarray, multiplier: np.ndarray, zp, qdtype) -> np.ndarray:
    """round_half_even(acc * multiplier) + zp, saturated: MLAS's float requantization."""
    info = np.iinfo(qdtype)
    z = np.asarray(0 if zp is None else zp).astype(np.float32)
    v = acc.astype(np.float32) * multiplier.astype(np.float32)
    v = np.clip(v, np.float32(info.min) - z, np.float32(info.max) - z)
    return (np.rint(v) + z).astype(qdtype)


@op("QLinearMatMul", since=10)
def qlinear_matmul(ctx, a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point):
    if a_scale.dtype != np.float32:
        raise ExecutionError("QLinearMatMul supports float32 scales")
    acc = integer_matmul(a, b, a_zero_point, b_zero_point)
    bs = b_scale.astype(np.float32)
    bs = bs.reshape(()) if bs.size == 1 else bs
    asc = a_scale.astype(np.float32)
    asc = asc.reshape(()) if asc.size == 1 else (asc.reshape(-1, 1) if asc.ndim == 1 else asc)
    mult = (asc * bs) / y_scale.astype(np.float32).reshape(())
    return requantize(acc, np.asarray(mult, np.float32), y_zero_point.reshape(()) if y_zero_point is not None else None,
                      y_zero_point.dtype if y_zero_point is not None else a.dtype)
