"""Accumulation kernels against independent oracles: numpy float16 scalar arithmetic,
ml_dtypes bfloat16 scalars, and exact rational arithmetic (fractions) with a reference
nearest-even rounding written here from the definition."""
from __future__ import annotations

from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

from halfsim.kernels import accumulate as acc_mod
from halfsim.kernels.accumulate import matmul_acc, sum_acc

F16 = (5, 10)
BF16 = (8, 7)


# ---------------------------------------------------------------- oracles

def round_exact(q: Fraction, ebits: int, mbits: int) -> float:
    """Nearest-even rounding of the exact rational q to the IEEE-like (ebits, mbits) format,
    subnormals kept, overflow to inf (zero results carry q's sign; q == 0 gives +0)."""
    if q == 0:
        return 0.0
    neg = q < 0
    a = -q if neg else q
    emax = (1 << (ebits - 1)) - 1
    emin = 1 - emax
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if Fraction(2) ** e > a:
        e -= 1
    assert Fraction(2) ** e <= a < Fraction(2) ** (e + 1)
    quantum = Fraction(2) ** (max(e, emin) - mbits)
    n = a / quantum
    fl = n.numerator // n.denominator
    rem = n - fl
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and fl % 2 == 1):
        fl += 1
    r = fl * quantum
    maxfinite = (2 - Fraction(2) ** -mbits) * Fraction(2) ** emax
    v = float("inf") if r > maxfinite else float(r)
    return -v if neg else v


def seq_exact(a_row, b_col, ebits, mbits, fma):
    acc = Fraction(0)
    for x, y in zip(a_row, b_col):
        p = Fraction(float(x)) * Fraction(float(y))
        if not fma:
            p = Fraction(round_exact(p, ebits, mbits))
        v = round_exact(acc + p, ebits, mbits)
        if np.isinf(v):
            return v  # only finite continuations are exercised with this oracle
        acc = Fraction(v)
    return float(acc)


def mm_oracle(a, b, step):
    out = np.empty((a.shape[0], b.shape[1]), np.float64)
    for i in range(a.shape[0]):
        for j in range(b.shape[1]):
            out[i, j] = step(a[i], b[:, j])
    return out


def f16_seq(a_row, b_col):
    acc = np.float16(0)
    for x, y in zip(a_row, b_col):
        acc = np.float16(acc + np.float16(np.float32(x) * np.float32(y)))
    return acc


def f16_seq_fma(a_row, b_col):
    acc = np.float16(0)
    for x, y in zip(a_row, b_col):
        # numpy converts float64 -> float16 directly (one correct rounding); the float64 sum of
        # an fp16 value and an exact fp16 product is exact or lands far from fp16 midpoints.
        acc = np.float16(float(acc) + float(x) * float(y))
    return acc


def bf16_seq(a_row, b_col):
    bf = ml_dtypes.bfloat16
    acc = bf(0)
    for x, y in zip(a_row, b_col):
        # bf16 + bf16 in ml_dtypes: float32 sum (24 >= 2*8+2 bits: innocuous) rounded to bf16.
        acc = bf(np.float32(acc) + np.float32(bf(np.float32(x) * np.float32(y))))
    return acc


def f16_pairwise(leaves):
    vals = list(leaves)
    while len(vals) > 1:
        nxt = [np.float16(vals[t] + vals[t + 1]) for t in range(0, len(vals) - 1, 2)]
        if len(vals) % 2:
            nxt.append(vals[-1])
        vals = nxt
    return vals[0] if vals else np.float16(0)


def f16_blocked(terms, block):
    acc = np.float16(0)
    for lo in range(0, len(terms), block):
        exact = sum((Fraction(float(t)) for t in terms[lo:lo + block]), Fraction(0))
        acc = np.float16(acc + np.float16(round_exact(exact, 5, 10)))
    return acc


def rand_fmt_values(rng, shape, ebits, mbits, lo=-12, hi=3):
    """Random values of the format with magnitudes 2**lo .. 2**hi, random signs, some zeros."""
    mag = np.exp2(rng.uniform(lo, hi, size=shape))
    v = np.where(rng.random(shape) < 0.5, -mag, mag)
    v[rng.random(shape) < 0.05] = 0.0
    return np.array([round_exact(Fraction(float(x)), ebits, mbits) for x in v.ravel()],
                    np.float32).reshape(shape)


def same_bits(x, y):
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.float32)
    return x.shape == y.shape and np.array_equal(x.view(np.uint32), y.view(np.uint32))


@pytest.fixture(params=["fast", "general"])
def path(request, monkeypatch):
    """Run each test through the float32 fast path and through the general float64 path."""
    if request.param == "general":
        monkeypatch.setattr(acc_mod, "_fast_split", lambda a, b, fmt: (np.zeros(a.shape[:2], np.bool_),
                                                                          np.zeros((a.shape[0], b.shape[2]), np.bool_)))
    return request.param


def test_round_exact_oracle_matches_numpy_and_ml_dtypes():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(2000) * np.exp2(rng.integers(-30, 20, 2000))).astype(np.float32)
    x = np.concatenate([x, np.float32([65504, 65519.99, 65520, 2.0 ** -25, 3 * 2.0 ** -26])])
    for v in x:
        with np.errstate(over="ignore"):
            assert same_bits(round_exact(Fraction(float(v)), 5, 10), np.float16(v))
        assert same_bits(round_exact(Fraction(float(v)), 8, 7), ml_dtypes.bfloat16(v))


# ---------------------------------------------------------------- sequential, fp16 / bf16

def test_fp16_sequential_no_fma_matches_numpy_float16(path):
    rng = np.random.default_rng(1)
    a = rand_fmt_values(rng, (6, 37), *F16, lo=-14)
    b = rand_fmt_values(rng, (37, 5), *F16, lo=-14)
    if path == "fast":
        assert acc_mod._fast_rows(a, b, acc_mod._Fmt(*F16)).all()
    got = matmul_acc(a, b, *F16, fma=False)
    assert same_bits(got, mm_oracle(a, b, f16_seq))


def test_fp16_sequential_fma_matches_exact_and_numpy(path):
    rng = np.random.default_rng(2)
    a = rand_fmt_values(rng, (6, 41), *F16, lo=-14)
    b = rand_fmt_values(rng, (41, 5), *F16, lo=-14)
    got = matmul_acc(a, b, *F16, fma=True)
    assert same_bits(got, mm_oracle(a, b, f16_seq_fma))
    exact = mm_oracle(a, b, lambda r, c: seq_exact(r, c, *F16, True))
    assert np.array_equal(got, exact)
    # fma and no-fma differ somewhere on such data, so the flag is really honoured
    assert not np.array_equal(got, matmul_acc(a, b, *F16, fma=False))


def test_fast_path_bound_uses_per_row_scales_of_b():
    # One large row of b (max|b| = 128) over many small ones: K * max|a| * max|b| exceeds 65504,
    # but sum_k |a_ik| max_j |b_kj| does not, so every row is proven safe for the fast path.
    rng = np.random.default_rng(7)
    K = 600
    a = rand_fmt_values(rng, (5, K), *F16, lo=-4, hi=0)
    b = rand_fmt_values(rng, (K, 4), *F16, lo=-6, hi=-1)
    b[3] = np.float32([128.0, -96.0, 65.0, 120.0])
    fmt = acc_mod._Fmt(*F16)
    assert K * np.abs(a).max() * np.abs(b).max() > 65504.0
    assert acc_mod._fast_rows(a, b, fmt).all()
    for fma, step in ((False, f16_seq), (True, f16_seq_fma)):
        assert same_bits(matmul_acc(a, b, *F16, fma=fma), mm_oracle(a, b, step))
    # a row whose own products may reach the fp16 maximum stays on the general path
    a[2, 3] = 2048.0
    assert not acc_mod._fast_rows(a, b, fmt)[2]


def test_fp16_fma_midpoint_case(path):
    # 4096 + 1.9619140625 * 1.01953125 = 4098.000244...: a float32 sum lands on the fp16
    # midpoint 4098, which ties to 4096; the exact value is above it, so fma gives 4100.
    a = np.float32([[4096.0, 1.9619140625]])
    b = np.float32([[1.0], [1.01953125]])
    naive = np.float16(np.float32(4096.0) + a[0, 1] * b[1, 0])
    assert naive == 4096.0  # the trap is real
    assert matmul_acc(a, b, *F16, fma=True)[0, 0] == 4100.0
    assert same_bits(matmul_acc(a, b, *F16, fma=False), mm_oracle(a, b, f16_seq))


def test_bf16_sequential(path):
    rng = np.random.default_rng(3)
    a = rand_fmt_values(rng, (5, 40), *BF16, lo=-20, hi=10)
    b = rand_fmt_values(rng, (40, 4), *BF16, lo=-20, hi=10)
    got = matmul_acc(a, b, *BF16, fma=False)
    assert same_bits(got, mm_oracle(a, b, bf16_seq))
    got = matmul_acc(a, b, *BF16, fma=True)
    assert np.array_equal(got, mm_oracle(a, b, lambda r, c: seq_exact(r, c, *BF16, True)))


@pytest.mark.parametrize("fmt", [(4, 3), (5, 2), (8, 10), (6, 14), (8, 22), (3, 20), (8, 23)])
@pytest.mark.parametrize("fma", [False, True])
def test_other_formats_against_exact_arithmetic(fmt, fma, path):
    rng = np.random.default_rng(4 + fmt[0] * 31 + fmt[1])
    a = rand_fmt_values(rng, (4, 23), *F16, lo=-6, hi=1)
    b = rand_fmt_values(rng, (23, 3), *F16, lo=-6, hi=1)
    got = matmul_acc(a, b, *fmt, fma=fma)
    assert np.array_equal(got, mm_oracle(a, b, lambda r, c: seq_exact(r, c, *fmt, fma)))


def test_fp32_accumulation_equals_float32_loop(path):
    rng = np.random.default_rng(5)
    for a, b in [(rng.standard_normal((5, 64)).astype(np.float32), rng.standard_normal((64, 4)).astype(np.float32)),
                 (rand_fmt_values(rng, (5, 64), *F16), rand_fmt_values(rng, (64, 4), *F16))]:
        want = np.empty((5, 4), np.float32)
        for i in range(5):
            for j in range(4):
                s = np.float32(0)
                for k in range(64):
                    s = np.float32(s + np.float32(a[i, k] * b[k, j]))
                want[i, j] = s
        assert same_bits(matmul_acc(a, b, 8, 23, fma=False), want)


def test_generic_float32_inputs_fp16_accumulate():
    # full 24-bit float32 inputs: products are not exact in float32, the general path must run
    rng = np.random.default_rng(6)
    a = rng.standard_normal((3, 30)).astype(np.float32)
    b = rng.standard_normal((30, 3)).astype(np.float32)
    assert not acc_mod._fast_rows(a, b, acc_mod._Fmt(*F16)).any()
    for fma in (False, True):
        assert np.array_equal(matmul_acc(a, b, *F16, fma=fma),
                              mm_oracle(a, b, lambda r, c: seq_exact(r, c, *F16, fma)))


# ---------------------------------------------------------------- stagnation

@pytest.mark.parametrize("fma", [False, True])
def test_fp16_dot_of_ones_stagnates_at_2048(fma):
    # from 2048 on the fp16 spacing is 2, and 2048 + 1 ties back to 2048 (even)
    ones = np.ones(4096, np.float32)
    got = matmul_acc(ones, ones, *F16, fma=fma)
    assert got.shape == () and got == 2048.0
    assert matmul_acc(ones, ones, 8, 23, fma=fma) == 4096.0
    assert matmul_acc(ones, ones, *F16, order="pairwise", fma=fma) == 4096.0
    assert matmul_acc(ones, ones, *F16, order="blocked", block=32, fma=fma) == 4096.0


def test_sum_of_ones_stagnates():
    assert sum_acc(np.ones(8192, np.float32)) == 2048.0
    assert sum_acc(np.ones(8192, np.float32), ebits=8, mbits=7) == 256.0  # bf16: spacing 2 at 256
    assert sum_acc(np.ones(8192, np.float32), order="pairwise") == 8192.0
    assert sum_acc(np.ones(8192, np.float32), order="blocked", block=64) == 8192.0


def test_dot_product_drift_matches_float16_oracle():
    # a 4096-long dot product of fp16 values near 1: above 2048 every product (about 1) is
    # added at a spacing of 2 and its deviation from 1 is lost, above 4096 at a spacing of 4.
    rng = np.random.default_rng(7)
    x = np.float16(1 + rng.uniform(-0.01, 0.01, 4096)).astype(np.float32)
    y = np.float16(1 + rng.uniform(-0.01, 0.01, 4096)).astype(np.float32)
    got = matmul_acc(x, y, *F16, fma=False)
    want = f16_seq(x, y)
    assert same_bits(got, want)
    exact = float(np.dot(x.astype(np.float64), y.astype(np.float64)))
    assert abs(exact - 4096) < 20 and abs(float(got) - exact) > 30


# ---------------------------------------------------------------- pairwise and blocked

@pytest.mark.parametrize("k", [1, 2, 7, 16, 33])
def test_pairwise_matches_float16_tree(k):
    rng = np.random.default_rng(8 + k)
    a = rand_fmt_values(rng, (3, k), *F16, lo=-8, hi=4)
    b = rand_fmt_values(rng, (k, 4), *F16, lo=-8, hi=4)
    got = matmul_acc(a, b, *F16, order="pairwise", fma=False)
    want = mm_oracle(a, b, lambda r, c: f16_pairwise([np.float16(np.float32(x) * np.float32(y))
                                                     for x, y in zip(r, c)]))
    assert same_bits(got, want)
    x = rand_fmt_values(rng, (5, k), *F16, lo=-8, hi=10)
    want = [f16_pairwise([np.float16(v) for v in row]) for row in x]
    assert same_bits(sum_acc(x, axis=1, order="pairwise"), want)


@pytest.mark.parametrize("k,block", [(1, 4), (37, 8), (64, 32), (50, 1), (20, 64)])
def test_blocked_matches_exact_blocks(k, block):
    rng = np.random.default_rng(9 + k)
    a = rand_fmt_values(rng, (3, k), *F16, lo=-14, hi=5)
    b = rand_fmt_values(rng, (k, 4), *F16, lo=-14, hi=5)
    got = matmul_acc(a, b, *F16, order="blocked", block=block)
    want = mm_oracle(a, b, lambda r, c: f16_blocked([np.float32(x) * np.float32(y) for x, y in zip(r, c)], block))
    assert same_bits(got, want)
    x = rand_fmt_values(rng, (4, k), *F16, lo=-14, hi=12)
    assert same_bits(sum_acc(x, axis=-1, order="blocked", block=block), [f16_blocked(row, block) for row in x])


def test_blocked_exact_sum_with_far_apart_terms():
    # 2**20 + 1 - 2**20 + 2**-30: a float64 running sum is exact here, but 2**60 + 1 - 2**60 is not;
    # the block sum must be exact (1 + 2**-30 rounds to 1 in fp16, 3 + tiny to 3 in bf16)
    x = np.float32([[2.0 ** 60, 1.0, -(2.0 ** 60), 3.0, 2.0 ** -30]])
    assert sum_acc(x, axis=1, ebits=8, mbits=7, order="blocked", block=8)[0] == 4.0
    y = np.float32([[2.0 ** 100, 2.0 ** -100, -(2.0 ** 100), 1.0 + 2.0 ** -8]])
    # exact block sum 1 + 2**-8 + 2**-100 is just above the bf16 midpoint between 1 and 1+2**-7
    assert sum_acc(y, axis=1, ebits=8, mbits=7, order="blocked", block=4)[0] == np.float32(1 + 2.0 ** -7)


# ---------------------------------------------------------------- specials

def test_overflow_to_inf_and_stays(path):
    a = np.float32([[40000.0, 40000.0, -40000.0], [-40000.0, -40000.0, 1.0], [300.0, 0.0, 0.0]])
    b = np.float32([[1.0], [1.0], [1.0]])
    b2 = np.float32([[300.0], [1.0], [1.0]])
    for fma in (False, True):
        got = matmul_acc(a, b, *F16, fma=fma)[:, 0]
        assert got[0] == np.inf and got[1] == -np.inf  # 80000 -> inf, never back to finite
        assert matmul_acc(a[2:], b2, *F16, fma=fma)[0, 0] == np.inf  # 90000 product
    assert sum_acc(np.float32([65504, 15])) == 65504.0  # below the threshold 65520
    assert sum_acc(np.float32([65504, 8, 8, 8])) == 65504.0
    assert sum_acc(np.float32([65504, 16])) == np.inf  # 65520 is the tie: rounds to inf
    assert sum_acc(np.float32([-65504, -16])) == -np.inf
    with np.errstate(over="ignore"):
        assert np.float16(np.float16(65504) + np.float16(16)) == np.inf  # numpy agrees


def test_nan_and_inf_propagate():
    a = np.float32([[1.0, np.nan, 2.0], [1.0, 2.0, 3.0], [np.inf, 1.0, 1.0], [np.inf, 1.0, 0.0]])
    b = np.float32([[1.0, 1.0], [1.0, 1.0], [1.0, -np.inf]])
    for order in ("sequential", "pairwise", "blocked"):
        got = matmul_acc(a, b, *F16, order=order, block=2)
        assert np.isnan(got[0]).all()
        assert got[1, 0] == 6.0 and got[1, 1] == -np.inf
        assert got[2, 0] == np.inf and np.isnan(got[2, 1])  # inf + (-inf)
        assert got[3, 0] == np.inf and np.isnan(got[3, 1])  # 0 * -inf
        assert np.isnan(sum_acc(np.float32([1, np.nan, 2]), order=order, block=2))


def _nan32(sign: int, payload: int) -> np.float32:
    return np.uint32((sign << 31) | 0x7F800000 | payload).view(np.float32)


def seq_nonfinite_oracle(a_row, b_col, fma, ebits=5, mbits=10):
    """Sequential order step by step with NaN and inf: products and non-finite sums in numpy
    float64 (a NaN operand propagates, inf*0 and inf-inf give the CPU's default NaN), finite
    sums exact. The NaN of a is the product when both factors are NaN; once the accumulator
    is NaN it is the result (later NaN terms do not replace it); a NaN result is the quiet NaN
    of that sign, as every halfsim rounding returns it."""
    acc = np.float64(0.0)
    for x, y in zip(a_row, b_col):
        if np.isnan(acc):
            break
        with np.errstate(invalid="ignore", over="ignore"):
            p = np.float64(x) if np.isnan(x) else np.float64(x) * np.float64(y)
            if not fma and np.isfinite(p):
                p = np.float64(round_exact(Fraction(float(p)), ebits, mbits))
            if np.isfinite(acc) and np.isfinite(p):
                acc = np.float64(round_exact(Fraction(float(acc)) + Fraction(float(p)), ebits, mbits))
            else:
                acc = acc + p
    if np.isnan(acc):
        return np.uint32(0x7FC00000 | (int(np.signbit(acc)) << 31)).view(np.float32)
    return np.float32(acc)


@pytest.mark.parametrize("fma", [False, True])
def test_nan_results_bit_for_bit(fma, path):
    # The first NaN-producing step decides a sequential result: NaN terms of either sign and
    # any payload in a and in b, inf*0, inf + -inf after an overflow, NaNs after inf. Checked
    # bit for bit (sign included) against the step-by-step oracle, on both paths.
    rng = np.random.default_rng(30)
    M, K, N = 11, 23, acc_mod._TW + 3
    a = rand_fmt_values(rng, (M, K), *F16, lo=-6, hi=2)
    b = rand_fmt_values(rng, (K, N), *F16, lo=-6, hi=2)
    a[0, 0], a[0, 5] = _nan32(1, 0x1234), _nan32(0, 0x400000)  # first term NaN, negative
    a[1, 7], a[1, 9] = _nan32(0, 0x5), _nan32(1, 0x400001)  # a positive NaN first
    a[2, :] = _nan32(1, 0x400000)  # the all-NaN rows of a broken layer
    a[3, 4], a[3, 6] = np.inf, _nan32(0, 0x2)  # inf * 0 where b is 0, else inf then NaN
    b[4, 1] = 0.0
    a[4, 0], a[4, 1] = 60000.0, 60000.0  # overflow to +inf, then a -inf term: inf - inf
    a[4, 2] = -np.inf
    a[5, K - 1] = _nan32(1, 0x3)  # NaN in the last step only
    b[10, 3], b[12, 3] = _nan32(0, 0x7), _nan32(1, 0x400000)  # NaN columns of b
    b[0, 5], b[1, 5] = _nan32(1, 0x1), -np.inf
    a[6, 10] = _nan32(0, 0x100)  # row 6 meets b's NaN column 3 at k=10 with its own NaN there
    with np.errstate(invalid="ignore", over="ignore"):
        got = matmul_acc(a, b, *F16, fma=fma)
    want = np.array([[seq_nonfinite_oracle(a[i], b[:, j], fma) for j in range(N)] for i in range(M)], np.float32)
    assert same_bits(got, want)
    assert (got.view(np.uint32) == 0xFFC00000).sum() >= N and (got.view(np.uint32) == 0x7FC00000).any()
    # a batch of all-NaN rows (a layer after an overflow) on its own: one step per output
    nan_rows = np.full((3, K), _nan32(1, 0x400000), np.float32)
    nan_rows[1, 0] = _nan32(0, 0x9)
    got = matmul_acc(nan_rows, b, *F16, fma=fma)
    assert same_bits(got, [[seq_nonfinite_oracle(r, b[:, j], fma) for j in range(N)] for r in nan_rows])


def test_nan_sums_bit_for_bit():
    rows = np.float32([[1.0, 2.0, 3.0, 4.0, 5.0]] * 5)
    rows[0, 1], rows[0, 3] = _nan32(1, 0x5), _nan32(0, 0x400000)
    rows[1, 0], rows[1, 2] = _nan32(0, 0x5), _nan32(1, 0x400000)
    rows[2, 0], rows[2, 1] = np.inf, -np.inf
    rows[3, 0], rows[3, 4] = 65504.0, _nan32(1, 0x1)
    rows[4, 0], rows[4, 1], rows[4, 2] = 65504.0, 65504.0, -np.inf  # overflow, then inf - inf
    ones = np.ones(5, np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        got = sum_acc(rows, axis=1)
    assert same_bits(got, [seq_nonfinite_oracle(r, ones, True) for r in rows])


def test_negative_zero_results():
    # fma: 0 + (-2**-30) rounds to -0 in fp16, as numpy float16 does
    a = np.float32([[-(2.0 ** -15), 0.0]])
    b = np.float32([[2.0 ** -15], [1.0]])
    got = matmul_acc(a, b, *F16, fma=True)
    assert same_bits(got[0, 0], f16_seq_fma(a[0], b[:, 0]))
    assert same_bits(matmul_acc(a, b, *F16, fma=False)[0, 0], f16_seq(a[0], b[:, 0]))
    assert same_bits(sum_acc(np.float32([-0.0, -0.0])), np.float16(np.float16(-0.0) + np.float16(-0.0)))


# ---------------------------------------------------------------- shapes

@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 5)), ((2, 1, 3, 4), (5, 4, 6)), ((4,), (4, 6)),
                                   ((3, 4), (4,)), ((4,), (4,)), ((2, 3, 4), (4,)), ((4,), (2, 4, 3)),
                                   ((1, 3, 0), (2, 0, 2)), ((0, 4), (4, 3))])
def test_matmul_shapes_follow_numpy(sa, sb):
    rng = np.random.default_rng(10)
    a = np.float16(rng.integers(-4, 5, sa)).astype(np.float32)
    b = np.float16(rng.integers(-4, 5, sb)).astype(np.float32)
    got = matmul_acc(a, b, *F16)
    want = np.matmul(a, b)  # small integers: every order is exact
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.array_equal(got, want)


def test_matmul_errors():
    with pytest.raises(ValueError):
        matmul_acc(np.ones((2, 3), np.float32), np.ones((4, 2), np.float32), *F16)
    with pytest.raises(ValueError):
        matmul_acc(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32), 9, 10)
    with pytest.raises(ValueError):
        matmul_acc(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32), *F16, order="random")


def test_empty_k_gives_zeros():
    got = matmul_acc(np.ones((3, 0), np.float32), np.ones((0, 2), np.float32), *F16)
    assert got.shape == (3, 2) and not got.any()


@pytest.mark.parametrize("axis", [None, 0, 1, -1, 2, (0, 2), (-1, 0), (1, 2), ()])
@pytest.mark.parametrize("keepdims", [False, True])
def test_sum_axes_follow_numpy(axis, keepdims):
    rng = np.random.default_rng(11)
    x = rng.integers(-8, 9, (3, 4, 5)).astype(np.float32)
    got = sum_acc(x, axis=axis, keepdims=keepdims)
    want = np.sum(x, axis=axis, keepdims=keepdims)  # small integers: exact in fp16
    assert np.shape(got) == np.shape(want) and np.array_equal(got, want)


def test_sum_multi_axis_order_is_c_order():
    # values chosen so that the order matters in fp16: flattened C order of axes (0, 2)
    rng = np.random.default_rng(12)
    x = rand_fmt_values(rng, (3, 2, 6), *F16, lo=-6, hi=8)
    got = sum_acc(x, axis=(0, 2))
    for j in range(2):
        acc = np.float16(0)
        for i in range(3):
            for k in range(6):
                acc = np.float16(acc + np.float16(x[i, j, k]))
        assert same_bits(got[j], acc)


def test_sum_fp32_equals_float32_loop_and_generic_inputs():
    rng = np.random.default_rng(13)
    x = rng.standard_normal((4, 300)).astype(np.float32)
    for r in range(4):
        s = np.float32(0)
        for v in x[r]:
            s = np.float32(s + v)
        assert same_bits(sum_acc(x, axis=1, ebits=8, mbits=23)[r], s)
    # float32 inputs summed in fp16: one rounding per step of the exact acc + x
    got = sum_acc(x, axis=1)
    for r in range(4):
        acc = Fraction(0)
        for v in x[r]:
            acc = Fraction(round_exact(acc + Fraction(float(v)), *F16))
        assert got[r] == float(acc)


def test_sum_empty():
    assert sum_acc(np.zeros((0,), np.float32)) == 0.0
    assert sum_acc(np.zeros((3, 0), np.float32), axis=1).shape == (3,)
    assert sum_acc(np.zeros((0, 3), np.float32), axis=0).tolist() == [0.0, 0.0, 0.0]


# ---------------------------------------------------------------- register-tiled fast path
# Shapes with full tiles (_TR x _TW), a row edge and a column edge, so every part of _mm_fast
# runs; the oracles are the same independent ones as above.

TILE_SHAPE = (2 * acc_mod._TR + 1, 29, 2 * acc_mod._TW + 3)  # M, K, N


def _tile_operands(seed, fmt=F16, lo=-10, hi=2):
    rng = np.random.default_rng(seed)
    M, K, N = TILE_SHAPE
    return rand_fmt_values(rng, (M, K), *fmt, lo=lo, hi=hi), rand_fmt_values(rng, (K, N), *fmt, lo=lo, hi=hi)


@pytest.mark.parametrize("fma", [False, True])
def test_tiled_fp16_matches_numpy_float16(fma):
    a, b = _tile_operands(11)
    assert acc_mod._fast_rows(a, b, acc_mod._Fmt(*F16)).all()
    got = matmul_acc(a, b, *F16, fma=fma)
    assert same_bits(got, mm_oracle(a, b, f16_seq_fma if fma else f16_seq))


@pytest.mark.parametrize("fmt", [BF16, (6, 14), (8, 23)])
@pytest.mark.parametrize("fma", [False, True])
def test_tiled_other_formats_against_exact_arithmetic(fmt, fma):
    a, b = _tile_operands(12 + fmt[1], F16, lo=-6, hi=1)
    assert acc_mod._fast_rows(a, b, acc_mod._Fmt(*fmt)).all()
    got = matmul_acc(a, b, *fmt, fma=fma)
    if fmt == (8, 23) and not fma:
        want = mm_oracle(a, b, lambda r, c: np.float32(sum_f32(r, c)))
        assert same_bits(got, want)
    else:
        assert np.array_equal(got, mm_oracle(a, b, lambda r, c: seq_exact(r, c, *fmt, fma)))


def sum_f32(a_row, b_col):
    s = np.float32(0)
    for x, y in zip(a_row, b_col):
        s = np.float32(s + np.float32(np.float32(x) * np.float32(y)))
    return s


@pytest.mark.parametrize("fma", [False, True])
def test_tile_with_a_slow_row(fma):
    # row 5 (inside the second tile) overflows fp16 and fails the pre-check: the tile still
    # runs for its other rows and the general path must own row 5 completely
    a, b = _tile_operands(13)
    a[5, 3] = 60000.0
    b[3, :] = 4.0
    ok = acc_mod._fast_rows(a, b, acc_mod._Fmt(*F16))
    assert not ok[5] and ok.sum() == a.shape[0] - 1
    got = matmul_acc(a, b, *F16, fma=fma)
    assert np.isinf(got[5]).any()
    with np.errstate(over="ignore", invalid="ignore"):  # the oracle overflows on row 5 too
        want = mm_oracle(a, b, f16_seq_fma if fma else f16_seq)
    assert same_bits(got, want)


@pytest.mark.parametrize("mode_pair", [(0, 4), (2, 5)])
def test_fp16_conversion_tiles_equal_portable_tiles(mode_pair):
    # modes 4/5 use the F16C conversions where the CPU has them (HW_F16C); modes 0/2 with fp16
    # constants are the portable arithmetic a CPU without F16C runs instead: same bits
    rng = np.random.default_rng(14)
    M, K, N = 4 * acc_mod._TR, 300, 3 * acc_mod._TW
    a = rand_fmt_values(rng, (M, K), *F16, lo=-16, hi=-9)  # products and sums near fp16's
    b = rand_fmt_values(rng, (K, N), *F16, lo=-16, hi=-9)  # subnormals, many rounded away
    fmt = acc_mod._Fmt(*F16)
    ok = acc_mod._fast_rows(a, b, fmt)
    assert ok.all()
    outs = []
    for mode in mode_pair:
        out = np.zeros((1, M, N), np.float32)
        acc_mod._mm_fast(a[None], b[None], out, ok[None], np.zeros((1, N), np.bool_), fmt.two_emin32,
                          fmt.magic32, mode)
        outs.append(out)
    assert same_bits(outs[0], outs[1])
    assert (np.abs(outs[0]) < 2.0 ** -14).any()  # the subnormal range was reached
    # the row kernel (1-row products), with a column tail
    a1, b1 = a[:, None, :], b[None, :, :N - 3].repeat(M, 0)
    ok1 = np.ones((M, 1), np.bool_)
    rows = []
    for mode in mode_pair:
        out = np.zeros((M, 1, N - 3), np.float32)
        acc_mod._mm_fast(a1, b1, out, ok1, np.zeros((M, N - 3), np.bool_), fmt.two_emin32, fmt.magic32, mode)
        rows.append(out)
    assert same_bits(rows[0], rows[1]) and same_bits(rows[0][:, 0], outs[0][0, :, :N - 3])


def _span_ok(q: Fraction, bits: int) -> bool:
    """q is a float32 value whose significand spans at most `bits` bits."""
    if q == 0:
        return True
    d = q.denominator
    if d & (d - 1):
        return False
    n = abs(q.numerator)
    n //= n & -n
    return n.bit_length() <= bits and float(q) == float(np.float32(float(q)))


def _double_rounding_rows(rng, n):
    """Rows (acc0, p) whose second step acc0 + p lies next to an fp16 midpoint: p a float32 of
    at most 23 significant bits, off the midpoint by about one float32 ulp or less, or acc0 a
    tiny fp16 value off a midpoint p. Float32 addition then ties the wrong way unless the
    kernel rounds once; both |acc0| > |p| and |p| > |acc0| occur, and both signs of the miss."""
    rows = []
    while len(rows) < n:
        kind = rng.integers(3)
        e = int(rng.integers(-13, 12))
        v = Fraction(int(rng.integers(1024, 2048)), 1024) * Fraction(2) ** e  # a normal fp16 value
        m = v + Fraction(2) ** (e - 11)  # the midpoint above it
        sgn = 1 if rng.random() < 0.5 else -1
        if kind == 2:  # |p| >> |acc0|: p is the midpoint, acc0 a few fp16 subnormal quanta
            acc0 = sgn * int(rng.integers(1, 4)) * Fraction(2) ** -24
            p = m
        else:
            acc0 = Fraction(round_exact(v * Fraction(int(rng.integers(1, 8)), 8), 5, 10))
            p0 = m - acc0
            if p0 == 0:
                continue
            shift = int(rng.integers(22, 30)) if kind == 0 else 22
            pe = abs(p0.numerator).bit_length() - p0.denominator.bit_length()
            p = p0 + sgn * Fraction(2) ** (pe - shift)
        if rng.random() < 0.5:
            acc0, p = -acc0, -p
        if _span_ok(p, 23) and abs(acc0 + p) < 60000:
            rows.append((float(acc0), float(p)))
    return np.array(rows, np.float32)


def test_fp16_fma_tile_rounds_once_next_to_midpoints():
    # The fp16 fma tile (rounding toward zero, then to odd) against exact arithmetic where a
    # float32 sum would double-round; columns of b scale the rows by powers of two so that the
    # same sums also land in fp16's subnormal range.
    rng = np.random.default_rng(40)
    a = _double_rounding_rows(rng, 4 * acc_mod._TR * 8)
    b = np.exp2(np.arange(-acc_mod._TW + 1, 1, dtype=np.float32))[None, :].repeat(2, 0)
    fmt = acc_mod._Fmt(*F16)
    assert acc_mod._fast_rows(a, b, fmt).all()
    got = matmul_acc(a, b, *F16, fma=True)
    assert np.array_equal(got, mm_oracle(a, b, lambda r, c: seq_exact(r, c, *F16, True)))
    # bits, signs of zeros included: numpy float16 from the float64 sum (exact, or too far from
    # a midpoint to matter for one operand of <= 24 bits and the other an fp16 value)
    assert same_bits(got, mm_oracle(a, b, f16_seq_fma))
    # the data really sets the trap: rounding the float32 sum instead differs in many places
    naive = np.float16(a[:, :1] * b[:1] + a[:, 1:] * b[1:]).astype(np.float32)
    assert (naive != got).sum() > got.size // 20
    assert (np.abs(got) < 2.0 ** -14).any() and (np.abs(got) > 1024).any()


def test_fp16_fma_tile_restores_the_rounding_mode():
    # the tile sets MXCSR to round toward zero for its span; numpy's float32 addition on this
    # thread rounds to nearest again afterwards (a small product runs on the calling thread)
    rng = np.random.default_rng(41)
    a, b = rand_fmt_values(rng, (8, 16), *F16), rand_fmt_values(rng, (16, acc_mod._TW), *F16)
    matmul_acc(a, b, *F16, fma=True)
    one, x = np.float32(1.0), np.float32(1.5 * 2.0 ** -24)
    assert one + x == np.float32(1.0 + 2.0 ** -23) and -one - x == np.float32(-1.0 - 2.0 ** -23)


# ---------------------------------------------------------------- batches, narrow outputs, non-finite columns

def test_batched_broadcast_matmul_matches_numpy_float16_per_product(path):
    # one kernel call covers every product of a broadcast batch (grouped convolutions); each
    # product is checked against the numpy float16 oracle on its own
    rng = np.random.default_rng(20)
    a = rand_fmt_values(rng, (2, 1, 5, 9), *F16, lo=-8, hi=1)
    b = rand_fmt_values(rng, (3, 9, 6), *F16, lo=-8, hi=1)
    for fma, step in ((False, f16_seq), (True, f16_seq_fma)):
        got = matmul_acc(a, b, *F16, fma=fma)
        assert got.shape == (2, 3, 5, 6)
        for i in range(2):
            for j in range(3):
                assert same_bits(got[i, j], mm_oracle(a[i, 0], b[j], step))


@pytest.mark.parametrize("K", [25, acc_mod._PACK_MIN_K + 3])
def test_batches_of_one_row_products_match_numpy_float16(K):
    # depthwise convolutions: 9 one-row products, two tiles of _TR products (one per tile row,
    # each reading its own b) and one left over; 37 columns end in a partial column tile.
    # Above _PACK_MIN_K the products take the packed per-product tiles instead.
    rng = np.random.default_rng(23)
    a = rand_fmt_values(rng, (9, 1, K), *F16, lo=-8, hi=1)
    b = rand_fmt_values(rng, (9, K, 37), *F16, lo=-8, hi=1)
    for fma, step in ((False, f16_seq), (True, f16_seq_fma)):
        got = matmul_acc(a, b, *F16, fma=fma)
        for i in range(9):
            assert same_bits(got[i], mm_oracle(a[i], b[i], step))
    got = matmul_acc(a, b, *BF16, fma=False)
    for i in range(9):
        assert same_bits(got[i], mm_oracle(a[i], b[i], bf16_seq))


@pytest.mark.parametrize("shape", [(37, 29, 3), (40, 21, 1), (8, 5, 2)])
def test_narrow_outputs_match_numpy_float16(shape, path):
    # outputs narrower than a register tile are computed transposed: same sums, same order
    M, K, N = shape
    rng = np.random.default_rng(21 + N)
    a = rand_fmt_values(rng, (M, K), *F16, lo=-8, hi=2)
    b = rand_fmt_values(rng, (K, N), *F16, lo=-8, hi=2)
    for fma, step in ((False, f16_seq), (True, f16_seq_fma)):
        assert same_bits(matmul_acc(a, b, *F16, fma=fma), mm_oracle(a, b, step))
    # a 1-D right operand (matrix-vector product) gives the vector of the same sums
    assert same_bits(matmul_acc(a, b[:, 0], *F16, fma=False), mm_oracle(a, b[:, :1], f16_seq)[:, 0])


def test_nonfinite_columns_of_b_leave_the_other_columns_on_the_fast_path(monkeypatch):
    rng = np.random.default_rng(22)
    M, K, N = 9, 40, 3 * acc_mod._TW + 5
    a = rand_fmt_values(rng, (M, K), *F16, lo=-8, hi=0)
    b = rand_fmt_values(rng, (K, N), *F16, lo=-8, hi=0)
    b[3, 2], b[17, 20], b[0, N - 1] = np.nan, np.inf, -np.inf
    fmt = acc_mod._Fmt(*F16)
    ok, bad = acc_mod._fast_split(a[None], b[None], fmt)
    assert ok.all() and sorted(np.flatnonzero(bad[0])) == [2, 20, N - 1]
    for fma, step in ((False, f16_seq), (True, f16_seq_fma)):
        got = matmul_acc(a, b, *F16, fma=fma)
        good = np.ones(N, bool)
        good[[2, 20, N - 1]] = False
        with np.errstate(invalid="ignore", over="ignore"):
            want = mm_oracle(a, b, step)
        assert same_bits(got[:, good], want[:, good])
        assert np.isnan(got[:, 2]).all()
        # the non-finite columns are exactly what the general path alone gives
        with monkeypatch.context() as m:
            m.setattr(acc_mod, "_fast_split", lambda a3, b3, f: (np.zeros(a3.shape[:2], np.bool_),
                                                                 np.zeros((a3.shape[0], b3.shape[2]), np.bool_)))
            general = matmul_acc(a, b, *F16, fma=fma)
        assert same_bits(got, general)


def test_fast_path_refuses_products_below_the_float32_subnormal_grid():
    # 2**-80 * (1 + 2**-10) times 2**-60: the product's lowest bit is 2**-150, below float32's
    # smallest subnormal, so float32 products would not be exact: the general path runs
    a = np.float32([[2.0 ** -80 * (1 + 2.0 ** -10), 1.0]])
    b = np.float32([[2.0 ** -60], [0.5]])
    fmt = acc_mod._Fmt(8, 23)
    assert not acc_mod._fast_rows(a, b, fmt)[0]
    assert acc_mod._fast_rows(np.float32([[2.0 ** -80, 1.0]]), b, fmt)[0]  # lowest bit 2**-140
    want = mm_oracle(a, b, lambda r, c: seq_exact(r, c, 8, 23, False))
    assert same_bits(matmul_acc(a, b, 8, 23, fma=False), want)


def test_column_tiles_of_nonfinite_columns_are_left_to_the_general_path():
    # A column tile whose columns all hold NaN/inf is skipped by the tile kernel (the general
    # path computes it): one such tile between good ones, in a plain product and in a batch of
    # one-row products where only some tile rows' columns are bad.
    rng = np.random.default_rng(24)
    T = acc_mod._TW
    M, K, N = 6, 30, 3 * T + 2
    a = rand_fmt_values(rng, (M, K), *F16, lo=-8, hi=0)
    b = rand_fmt_values(rng, (K, N), *F16, lo=-8, hi=0)
    b[rng.integers(0, K, T), np.arange(T, 2 * T)] = _nan32(1, 0x400000)  # tile 1: all bad
    b[5, 2 * T:] = np.inf  # the last full tile and the partial one
    b[7, 3 * T] = _nan32(0, 0x11)
    nb = 2 * acc_mod._TR + 1
    ab = rand_fmt_values(rng, (nb, 1, K), *F16, lo=-8, hi=0)
    bb = rand_fmt_values(rng, (nb, K, T + 3), *F16, lo=-8, hi=0)
    bb[:acc_mod._TR, 3, :T] = np.nan  # the first group's first tile: every product's columns bad
    bb[acc_mod._TR, 0, 1:T] = -np.inf  # the second group's: one column of one product good
    for fma in (False, True):
        with np.errstate(invalid="ignore", over="ignore"):
            got = matmul_acc(a, b, *F16, fma=fma)
            want = [[seq_nonfinite_oracle(a[i], b[:, j], fma) for j in range(N)] for i in range(M)]
            assert same_bits(got, want)
            got = matmul_acc(ab, bb, *F16, fma=fma)
            for i in range(nb):
                want = [[seq_nonfinite_oracle(ab[i, 0], bb[i, :, j], fma) for j in range(T + 3)]]
                assert same_bits(got[i], want)


@pytest.mark.parametrize("fmt,fma", [(BF16, True), ((6, 14), False), ((6, 14), True), ((8, 23), False)])
def test_one_row_products_other_modes_against_exact_arithmetic(fmt, fma):
    # the row kernel in each of its modes (round-to-odd without and with fma, plain float32) on
    # 1-row products with a column tail; the fp16 modes are checked against numpy float16 above
    rng = np.random.default_rng(25 + fmt[1])
    a = rand_fmt_values(rng, (3, 1, 29), *F16, lo=-6, hi=1)
    b = rand_fmt_values(rng, (3, 29, 2 * acc_mod._TL + 3), *F16, lo=-6, hi=1)
    got = matmul_acc(a, b, *fmt, fma=fma)
    for i in range(3):
        want = mm_oracle(a[i], b[i], lambda r, c: seq_exact(r, c, *fmt, fma))
        assert np.array_equal(got[i], want) and same_bits(got[i], np.float32(want))
