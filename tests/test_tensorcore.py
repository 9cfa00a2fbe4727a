"""Tensor-core accumulation: bit-exact against GPU measurements and an exact Fraction model."""
from __future__ import annotations

import math
import os
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from halfsim.errors import HalfsimError
from halfsim.tensorcore import MODELS, TensorCoreModel, block_fma, gemm, get_model

DATA = os.path.join(os.path.dirname(__file__), "data", "tensorcore")
F32_MAX = float(np.finfo(np.float32).max)
# format -> (fraction bits, minimum normal exponent, maximum exponent): the published layouts
LAYOUT = {"fp16": (10, -14, 15), "bf16": (7, -126, 127), "tf32": (10, -126, 127),
          "fp8-e4m3": (3, -6, 8), "fp8-e5m2": (2, -14, 15)}


# ---------------------------------------------------------------- measured vectors

_HEX = np.full(256, -1, np.int64)
_HEX[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_HEX[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
_HEX[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)


def _read_hex(path: str, k: int) -> np.ndarray:
    """Lines of k hex float32 patterns ("xxxxxxxx " each) -> float32 [n, k], vectorized."""
    raw = np.frombuffer(open(path, "rb").read(), np.uint8)
    width = 9 * k + 1
    assert raw.size % width == 0, path
    digits = _HEX[raw.reshape(-1, width)[:, :9 * k].reshape(-1, k, 9)[:, :, :8]]
    assert (digits >= 0).all(), path
    bits = (digits << (4 * np.arange(7, -1, -1))).sum(axis=2)
    return bits.astype(np.uint32).view(np.float32)


def _read_bin(path: str) -> np.ndarray:
    """Lines of 32 '0'/'1' characters -> float32 [n], vectorized."""
    raw = np.frombuffer(open(path, "rb").read(), np.uint8)
    assert raw.size % 33 == 0, path
    b = raw.reshape(-1, 33)[:, :32].astype(np.int64) - ord("0")
    assert ((b == 0) | (b == 1)).all(), path
    return (b << np.arange(31, -1, -1)).sum(axis=1).astype(np.uint32).view(np.float32)


def _load(gpu: str, fmt: str, k: int):
    d = os.path.join(DATA, gpu, fmt)
    a = _read_hex(os.path.join(d, f"a_{gpu}_{fmt}.txt"), k)
    b = _read_hex(os.path.join(d, f"b_{gpu}_{fmt}.txt"), k)
    c = _read_bin(os.path.join(d, f"c_{gpu}_fp32.txt"))
    return a, b, c


def _same_bits(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bit equality, any NaN equal to any NaN."""
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.float32)
    return (x.view(np.uint32) == y.view(np.uint32)) | (np.isnan(x) & np.isnan(y))


MEASURED = [  # (gpu, input format, K, model, output)
    ("V100", "fp16", 4, "tc-v100-fp16", "fp32"),
    ("V100", "fp16", 4, "tc-v100-fp16", "fp16"),
    ("A100", "fp16", 8, "tc-a100-fp16", "fp32"),
    ("A100", "fp16", 8, "tc-a100-fp16", "fp16"),
    ("A100", "bf16", 8, "tc-a100-bf16", "fp32"),
    ("A100", "tf32", 4, "tc-a100-tf32", "fp32"),
]


@pytest.mark.parametrize("gpu,fmt,k,name,out", MEASURED, ids=[f"{m[3]}-out-{m[4]}" for m in MEASURED])
def test_measured_gpu_vectors_bit_exact(gpu, fmt, k, name, out):
    a, b, c = _load(gpu, fmt, k)
    d = _read_bin(os.path.join(DATA, gpu, fmt, f"d_{gpu}_{out}.txt"))
    assert a.shape == b.shape == (5000, k) and c.shape == d.shape == (5000,)
    assert get_model(name).k == k
    # both code paths: the int64 block path and the vectorized GEMM path (batch of 1x1 products)
    via_block = block_fma(a, b, c, name, out=out)
    via_gemm = gemm(a[:, None, :], b[:, :, None], name, c=c[:, None, None], out=out)[:, 0, 0]
    paths = [via_block, via_gemm]
    if out == "fp32":  # every case lies in the register-tiled kernel's range: it alone, too
        from halfsim.kernels.tc_tile import tile_gemm
        from halfsim.tensorcore import _params, _to_format
        a3, b3 = (np.ascontiguousarray(_to_format(x, fmt)) for x in (a[:, None, :], b[:, :, None]))
        tiled = tile_gemm(a3, b3, np.ascontiguousarray(c[:, None, None]), *_params(get_model(name), (fmt, fmt))[:6])
        assert tiled is not None
        paths.append(tiled[:, 0, 0])
    for got in paths:
        bad = np.flatnonzero(~_same_bits(got, d))
        assert bad.size == 0, f"{bad.size} mismatches, first case {bad[:1]}: {got[bad[:3]]} vs {d[bad[:3]]}"


@pytest.mark.parametrize("gpu,fmt,k,name,out", [m for m in MEASURED if m[4] == "fp32"],
                         ids=[m[3] for m in MEASURED if m[4] == "fp32"])
def test_measured_vectors_pin_down_the_parameters(gpu, fmt, k, name, out):
    """The data discriminate (so the bit-exact pass is not vacuous): one alignment bit more or
    less, nearest-even instead of truncation, or an exact dot product rounded once each miss
    hundreds of the 5000 cases."""
    a, b, c = _load(gpu, fmt, k)
    d = _read_bin(os.path.join(DATA, gpu, fmt, f"d_{gpu}_fp32.txt"))
    m = get_model(name)
    variants = [TensorCoreModel("v", k, m.extra_bits + 1, "toward-zero", "fp32", (fmt,)),
                TensorCoreModel("v", k, m.extra_bits, "nearest-even", "fp32", (fmt,))]
    if m.extra_bits > 0:
        variants.append(TensorCoreModel("v", k, m.extra_bits - 1, "toward-zero", "fp32", (fmt,)))
    for v in variants:
        got = gemm(a[:, None, :], b[:, :, None], v, c=c[:, None, None])[:, 0, 0]
        assert (~_same_bits(got, d)).sum() > 300, v
    exact = (a.astype(np.float64) * b).sum(axis=1) + c  # products exact; sum error far below fp32
    assert (~_same_bits(exact.astype(np.float32), d)).sum() > 100


# ---------------------------------------------------------------- exact oracle

def _exp(x: float, emin: int) -> int:
    """Alignment exponent: floor(log2|x|), subnormals at the format's minimum exponent."""
    return max(math.frexp(x)[1] - 1, emin)


def _round_out(s: Fraction, out: str, rounding: str) -> float:
    mbits, emin, big = (23, -126, F32_MAX) if out == "fp32" else (10, -14, 65504.0)
    if s == 0:
        return 0.0
    e = abs(s.numerator).bit_length() - s.denominator.bit_length()
    while Fraction(2) ** e > abs(s):
        e -= 1
    while Fraction(2) ** (e + 1) <= abs(s):
        e += 1
    ulp = Fraction(2) ** (max(e, emin) - mbits)
    n = int(s / ulp) if rounding == "toward-zero" else round(s / ulp)  # round(): ties to even
    r = n * ulp
    if abs(r) > big:
        return math.copysign(big if rounding == "toward-zero" else math.inf, s)
    return math.copysign(float(r), s)  # IEEE: a nonzero sum that rounds to 0 keeps its sign


def oracle_block(av, bv, c, model: TensorCoreModel, fa: str, fb: str) -> float:
    """The documented block model in exact rational arithmetic (finite inputs)."""
    w = 23 + model.extra_bits
    c_emin = -14 if model.out_format == "fp16" else -126
    terms = [(Fraction(x) * Fraction(y), _exp(x, LAYOUT[fa][1]) + _exp(y, LAYOUT[fb][1]))
             for x, y in zip(map(float, av), map(float, bv)) if x != 0 and y != 0]
    if c != 0:
        terms.append((Fraction(float(c)), _exp(float(c), c_emin)))
    if not terms:
        return 0.0
    unit = Fraction(2) ** (max(e for _, e in terms) - w)
    s = sum(int(v / unit) * unit for v, _ in terms)  # int(): truncation toward zero
    return _round_out(s, model.out_format, model.block_rounding)


def oracle_gemm(a, b, c, model: TensorCoreModel, fa: str, fb: str) -> np.ndarray:
    M, K = a.shape
    N = b.shape[1]
    d = np.empty((M, N), np.float32)
    for i in range(M):
        for j in range(N):
            acc = float(c[i, j])
            for k0 in range(0, K, model.k):
                acc = oracle_block(a[i, k0:k0 + model.k], b[k0:k0 + model.k, j], acc, model, fa, fb)
            d[i, j] = acc
    return d


def random_format_values(rng, shape, fmt: str, elo: int, ehi: int, p_sub=0.05, p_zero=0.05):
    """Exact values of fmt: random sign, exponent in [elo, ehi], mantissa; some subnormals, zeros."""
    f, emin, _ = LAYOUT[fmt]
    e = rng.integers(elo, ehi + 1, shape)
    m = rng.integers(0, 1 << f, shape)
    val = (m + (1 << f)) * np.exp2(e - f)
    sub = rng.random(shape) < p_sub
    val = np.where(sub, rng.integers(1, 1 << f, shape) * 2.0 ** (emin - f), val)
    val = np.where(rng.random(shape) < p_zero, 0.0, val)
    return (np.where(rng.random(shape) < 0.5, -val, val)).astype(np.float32)


def random_fp32(rng, shape, elo, ehi):
    v = rng.integers(1 << 23, 1 << 24, shape) * np.exp2(rng.integers(elo, ehi + 1, shape) - 23)
    return np.where(rng.random(shape) < 0.5, -v, v).astype(np.float32)


ORACLE_CASES = [  # model, input formats, exponent range of inputs, C exponent range, out
    ("tc-v100-fp16", ("fp16", "fp16"), (-14, 6), (-20, 10), "fp32"),
    ("tc-a100-fp16", ("fp16", "fp16"), (-14, 6), (-20, 10), "fp32"),
    ("tc-a100-fp16", ("fp16", "fp16"), (-8, 2), (-10, 3), "fp16"),
    ("tc-a100-bf16", ("bf16", "bf16"), (-80, 60), (-140, 120), "fp32"),
    ("tc-a100-tf32", ("tf32", "tf32"), (-70, 60), (-140, 120), "fp32"),
    ("tc-h100-fp16", ("fp16", "fp16"), (-14, 6), (-20, 10), "fp32"),
    ("tc-h100-bf16", ("bf16", "bf16"), (-126, -100), (-149, -110), "fp32"),  # fp32 subnormal results
    ("tc-h100-tf32", ("tf32", "tf32"), (-20, 20), (-30, 30), "fp32"),
    ("tc-h100-fp8", ("fp8-e4m3", "fp8-e5m2"), (-6, 7), (-10, 10), "fp32"),
    ("tc-h100-fp8-e5m2", ("fp8-e5m2", "fp8-e5m2"), (-14, 3), (-20, 8), "fp16"),
]


@pytest.mark.parametrize("name,fmts,erange,crange,out", ORACLE_CASES,
                         ids=[f"{c[0]}-{c[4]}" for c in ORACLE_CASES])
def test_gemm_matches_exact_fraction_model(name, fmts, erange, crange, out):
    rng = np.random.default_rng(abs(hash((name, out))) % 2**32)
    model = get_model(name).with_output(out)
    M, K, N = 5, 3 * model.k + 3, 4  # a ragged last block: zero-padded
    a = random_format_values(rng, (M, K), fmts[0], *erange)
    b = random_format_values(rng, (K, N), fmts[1], *erange)
    c = random_fp32(rng, (M, N), *crange)
    if out == "fp16":
        c = c.astype(np.float16).astype(np.float32)
    c[0, 0] = 0.0
    want = oracle_gemm(a, b, c, model, *fmts)
    got = gemm(a, b, model, c=c, in_format=fmts)
    assert _same_bits(got, want).all(), np.argwhere(~_same_bits(got, want))[:5]
    # the int64 block path agrees as well, chained by hand
    acc = c.copy()
    for k0 in range(0, K, model.k):
        acc = block_fma(a[:, None, k0:k0 + model.k], b[k0:k0 + model.k].T[None], acc, model, in_format=fmts)
    assert _same_bits(acc, want).all()


@pytest.mark.parametrize("rounding,out", [("toward-zero", "fp16"), ("nearest-even", "fp32")])
def test_custom_model_rounding_matches_oracle(rounding, out):
    rng = np.random.default_rng(13)
    m = TensorCoreModel("custom", 6, 3, rounding, out, ("fp16",))
    a = random_format_values(rng, (4, 20), "fp16", -12, 2)
    b = random_format_values(rng, (20, 5), "fp16", -12, 2)
    c = random_fp32(rng, (4, 5), -16, 4).astype(np.float16).astype(np.float32)
    want = oracle_gemm(a, b, c, m, "fp16", "fp16")
    assert _same_bits(gemm(a, b, m, c=c), want).all()
    one_block = np.array([[oracle_block(a[i, :6], b[:6, j], c[i, j], m, "fp16", "fp16") for j in range(5)]
                          for i in range(4)], np.float32)
    assert _same_bits(block_fma(a[:, None, :6], b[:6].T[None], c, m), one_block).all()


def test_kernel_level_tc_gemm():
    from halfsim.kernels.tensorcore import tc_gemm
    rng = np.random.default_rng(11)
    a = random_format_values(rng, (6, 21), "bf16", -20, 20)
    b = random_format_values(rng, (21, 7), "bf16", -20, 20)
    c = random_fp32(rng, (6, 7), -10, 10)
    m = get_model("tc-h100-bf16")
    want = oracle_gemm(a, b, c, m, "bf16", "bf16")
    got = tc_gemm(a, b, c, k=16, extra_bits=2, in_a="bf16")
    assert got.dtype == np.float32 and _same_bits(got, want).all()
    got3 = tc_gemm(np.stack([a, a]), np.stack([b, b]), c, k=16, extra_bits=2, in_a="bf16")
    assert _same_bits(got3, np.stack([want, want])).all()
    with pytest.raises(HalfsimError):
        tc_gemm(a, b.T, k=16, extra_bits=2, in_a="bf16")
    with pytest.raises(HalfsimError):
        tc_gemm(a, b, k=16, extra_bits=2, in_a="int4")


def test_chained_blocks_equal_long_gemm():
    rng = np.random.default_rng(7)
    for name in ("tc-v100-fp16", "tc-a100-bf16", "tc-h100-fp16"):
        m = get_model(name)
        n = 6
        fmt = m.in_formats[0]
        a = random_format_values(rng, (8, n * m.k), fmt, -10, 5)
        b = random_format_values(rng, (n * m.k, 9), fmt, -10, 5)
        c0 = random_fp32(rng, (8, 9), -5, 5)
        acc = c0
        for t in range(n):
            sl = slice(t * m.k, (t + 1) * m.k)
            acc = block_fma(a[:, None, sl], b[sl].T[None], acc, m)  # [8,1,k] x [1,9,k] -> [8,9]
        assert _same_bits(gemm(a, b, m, c=c0), acc).all()
        # and it is not just fp32 matmul: chained truncation leaves a visible trace somewhere
        assert not _same_bits(gemm(a, b, m, c=c0), (a @ b + c0).astype(np.float32)).all()


# ---------------------------------------------------------------- hand-built cases

@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(MODELS)), st.data())
def test_small_integers_sum_exactly(name, data):
    m = get_model(name)
    top = 8 if "fp8" in name else 60  # fp8-e5m2 holds integers up to 8 exactly
    ints = st.integers(-top, top)
    a = data.draw(st.lists(ints, min_size=m.k, max_size=m.k))
    b = data.draw(st.lists(ints, min_size=m.k, max_size=m.k))
    c = data.draw(st.integers(-1000, 1000))
    exact = sum(x * y for x, y in zip(a, b)) + c
    got = block_fma(np.array(a, np.float32), np.array(b, np.float32), c, m)
    assert float(got) == exact
    got = gemm(np.array([a], np.float32), np.array([b], np.float32).T, m, c=[[c]])
    assert float(got[0, 0]) == exact


def test_truncation_visible_and_extra_bits_matter():
    # C = 1, product -2^-24: V100's window (23 fraction bits) truncates it away, A100's (24)
    # keeps it, so D = 1 - 2^-24 exactly. A correctly rounded fp32 dot product gives 1 - 2^-24
    # for both; with -2^-28 both GPUs drop the product where round-toward-zero of the exact sum
    # would give 1 - 2^-24.
    one_less = 1.0 - 2.0 ** -24
    a = np.array([-(2.0 ** -12), 0, 0, 0], np.float32)
    b = np.array([2.0 ** -12, 0, 0, 0], np.float32)
    assert float(block_fma(a, b, 1.0, "tc-v100-fp16")) == 1.0
    assert float(block_fma(a, b, 1.0, "tc-a100-fp16")) == one_less
    assert float(gemm(a[None], b[:, None], "tc-v100-fp16", c=[[1.0]])[0, 0]) == 1.0
    assert float(gemm(a[None], b[:, None], "tc-a100-fp16", c=[[1.0]])[0, 0]) == one_less
    a[0] = -(2.0 ** -14)
    b[0] = 2.0 ** -14
    for name in ("tc-v100-fp16", "tc-a100-fp16", "tc-h100-fp16"):
        assert float(block_fma(a, b, 1.0, name)) == 1.0
        assert float(gemm(a[None], b[:, None], name, c=[[1.0]])[0, 0]) == 1.0
    # truncation is toward zero on each term, not on the sum: 2 terms of -0.75 units each
    # lose 1.5 units together (V100: unit 2^-23 at C = 1; the oracle agrees)
    a = np.array([-(1.5 * 2.0 ** -12), -(1.5 * 2.0 ** -12), 1.0, 0], np.float32)
    b = np.array([2.0 ** -12, 2.0 ** -12, 0.0, 0], np.float32)
    m = get_model("tc-v100-fp16")
    assert float(block_fma(a, b, 1.0, m)) == oracle_block(a, b, 1.0, m, "fp16", "fp16") == 1.0


def test_fp16_output_rounds_ties_to_even():
    m = get_model("tc-a100-fp16").with_output("fp16")
    assert m.block_rounding == "nearest-even"
    one = np.float32(1.0)
    cases = [  # (C, product a*b with b = 1), expected: ties to even at fp16's ulp 2^-10 near 1
        (1.0, 2.0 ** -11, 1.0),                          # 1 + half ulp -> 1 (even)
        (1.0 + 2.0 ** -10, 2.0 ** -11, 1.0 + 2.0 ** -9),  # odd + half ulp -> up to even
        (-1.0, -(2.0 ** -11), -1.0),
        (1.0, 2.0 ** -11 + 2.0 ** -20, 1.0 + 2.0 ** -10),  # just above the tie -> up
        (2048.0, 1.0, 2048.0),                           # ulp 2 at 2048: tie -> even
        (2050.0, 1.0, 2052.0),
        (65504.0, 16.0, math.inf),                       # 65520 is a tie above max: overflow
    ]
    for c, p, want in cases:
        a = np.array([p, 0, 0, 0, 0, 0, 0, 0], np.float32)
        b = np.array([one] + [0] * 7, np.float32)
        assert float(block_fma(a, b, c, m)) == want, (c, p)
        assert float(gemm(a[None], b[:, None], m, c=[[c]])[0, 0]) == want, (c, p)
        assert oracle_block(a, b, c, m, "fp16", "fp16") == want
    # fp32 output on the same tie truncates instead
    assert float(block_fma(np.float32([2.0 ** -25] + [0] * 7), np.float32([1] + [0] * 7), 1.0,
                           "tc-a100-fp16")) == 1.0


def test_special_values_propagate():
    inf, nan = np.inf, np.nan
    m = "tc-a100-fp16"
    z = [0.0] * 6

    def one(a, b, c=0.0):
        x = np.array(a + z, np.float32)
        y = np.array(b + z, np.float32)
        r1 = float(block_fma(x, y, c, m))
        r2 = float(gemm(x[None], y[:, None], m, c=[[c]])[0, 0])
        assert _same_bits(r1, r2), (a, b, c, r1, r2)
        return r1

    assert np.isnan(one([inf, 1.0], [0.0, 1.0]))          # inf * 0
    assert np.isnan(one([inf, inf], [1.0, -1.0]))         # inf - inf among products
    assert np.isnan(one([inf, 1.0], [1.0, 1.0], -inf))    # product inf + C -inf
    assert np.isnan(one([nan, 1.0], [1.0, 1.0]))
    assert one([inf, 1.0], [-2.0, 1.0]) == -inf
    assert one([1.0, 1.0], [1.0, 1.0], inf) == inf
    assert one([65504.0, 65504.0], [65504.0, 65504.0]) == 2 * 65504.0 ** 2  # exact in fp32
    # an fp16 accumulator overflows to inf and stays there along the chain
    a = np.full((1, 16), 256.0, np.float32)
    b = np.full((16, 1), 256.0, np.float32)
    assert gemm(a, b, m, out="fp16")[0, 0] == inf
    # inputs that overflow the format on rounding: fp16 -> inf, so 70000 * 0 is NaN
    r = gemm(np.float32([[70000.0, 1.0]]), np.float32([[0.0], [1.0]]), m)
    assert np.isnan(r[0, 0])
    # a NaN in one row/column leaves the others untouched
    a = np.ones((3, 8), np.float32)
    a[1, 2] = nan
    r = gemm(a, np.ones((8, 2), np.float32), m)
    assert np.isnan(r[1]).all() and (r[[0, 2]] == 8.0).all()


def test_tf32_inputs_truncated_not_rounded():
    x = np.float32(1.0 + 2.0 ** -10 * 0.99)  # below the next tf32 value: rounds up, truncates down
    r = gemm(np.float32([[x]]), np.float32([[1.0]]), "tc-a100-tf32")
    assert r[0, 0] == 1.0
    r = gemm(np.float32([[x]]), np.float32([[1.0]]), "tc-a100-fp16")  # fp16 rounds to nearest
    assert r[0, 0] == np.float32(1.0 + 2.0 ** -10)


def test_tf32_truncation_of_float32_is_the_format_rounding():
    # halfsim.tensorcore truncates float32 operands to tf32 with a bit mask; same values as the
    # general toward-zero rounding of halfsim.formats, over every kind of bit pattern
    from halfsim import formats
    from halfsim.tensorcore import _to_format
    rng = np.random.default_rng(8)
    bits = rng.integers(0, 2 ** 32, 200_000, dtype=np.uint64).astype(np.uint32)
    bits[:8] = [0, 0x80000000, 0x7F800000, 0xFF800000, 0x7F800001, 0x00001FFF, 0x80002001, 0x7F7FFFFF]
    x = bits.view(np.float32).reshape(400, 500)
    got = _to_format(x[:, ::2], "tf32")  # a strided view too
    want = formats.round(x[:, ::2], "tf32", rounding="toward-zero")
    assert _same_bits(got, want).all()
    assert np.isnan(_to_format(x, "tf32").reshape(-1)[4])  # a NaN whose payload lies in the dropped bits


def test_inputs_rounded_to_format_first():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((4, 20))
    b = rng.standard_normal((20, 3))
    for name, dt in (("tc-a100-fp16", np.float16), ("tc-h100-fp16", np.float16)):
        ra = a.astype(dt).astype(np.float32)
        rb = b.astype(dt).astype(np.float32)
        assert _same_bits(gemm(a, b, name), gemm(ra, rb, name)).all()


def test_batched_broadcast_like_matmul():
    rng = np.random.default_rng(5)
    a = random_format_values(rng, (2, 1, 3, 10), "fp16", -4, 4)
    b = random_format_values(rng, (4, 10, 5), "fp16", -4, 4)
    c = random_fp32(rng, (5,), -3, 3)
    got = gemm(a, b, "tc-h100-fp16", c=c)
    assert got.shape == np.matmul(a, b).shape == (2, 4, 3, 5) and got.dtype == np.float32
    for i in range(2):
        for j in range(4):
            assert _same_bits(got[i, j], gemm(a[i, 0], b[j], "tc-h100-fp16", c=np.broadcast_to(c, (3, 5)))).all()
    # 1-D operands follow matmul's rules
    v = a[0, 0, 0]
    assert gemm(v, b[0], "tc-h100-fp16").shape == (5,)
    assert gemm(a[0, 0], b[0, :, 0], "tc-h100-fp16").shape == (3,)
    assert gemm(v, b[0, :, 0], "tc-h100-fp16").shape == ()
    # empty and K = 0: D = C
    assert gemm(np.zeros((0, 4)), np.zeros((4, 2)), "tc-a100-fp16").shape == (0, 2)
    assert (gemm(np.zeros((2, 0)), np.zeros((0, 3)), "tc-a100-fp16", c=1.5) == 1.5).all()
    assert block_fma(np.zeros((0, 4)), np.zeros((0, 4)), None, "tc-a100-fp16").shape == (0,)
    assert (block_fma(np.zeros((2, 0)), np.zeros((2, 0)), 2.5, "tc-a100-fp16") == 2.5).all()


def test_named_models():
    assert {(n, MODELS[n].k, MODELS[n].extra_bits) for n in
            ("tc-v100-fp16", "tc-a100-fp16", "tc-a100-bf16", "tc-a100-tf32", "tc-h100-fp16",
             "tc-h100-bf16", "tc-h100-tf32", "tc-h100-fp8")} == {
        ("tc-v100-fp16", 4, 0), ("tc-a100-fp16", 8, 1), ("tc-a100-bf16", 8, 1),
        ("tc-a100-tf32", 4, 1), ("tc-h100-fp16", 16, 2), ("tc-h100-bf16", 16, 2),
        ("tc-h100-tf32", 8, 2), ("tc-h100-fp8", 32, -10)}
    assert get_model("TC-A100-FP16") is MODELS["tc-a100-fp16"]
    assert get_model("tc-h100-fp8-e5m2").in_formats == ("fp8-e5m2",)
    m = MODELS["tc-a100-fp16"]
    assert m.with_output("fp16").with_output("fp32").block_rounding == "toward-zero"


def test_bad_input_raises():
    a = np.ones((2, 8), np.float32)
    with pytest.raises(HalfsimError, match="tc-a100-fp16"):  # lists the known names
        gemm(a, a.T, "tc-a200-fp16")
    with pytest.raises(HalfsimError, match="inner dimensions"):
        gemm(a, a, "tc-a100-fp16")
    with pytest.raises(HalfsimError, match="batch"):
        gemm(np.ones((2, 3, 4)), np.ones((3, 4, 5)), "tc-a100-fp16")
    with pytest.raises(HalfsimError, match="broadcast"):
        gemm(a, a.T, "tc-a100-fp16", c=np.ones((3, 3)))
    with pytest.raises(HalfsimError, match="third argument"):
        gemm(a, a.T, np.ones((2, 2)))
    with pytest.raises(HalfsimError, match="takes"):
        gemm(a, a.T, "tc-a100-fp16", in_format="bf16")
    with pytest.raises(HalfsimError):
        gemm(a, a.T, "tc-a100-fp16", out="bf16")
    with pytest.raises(HalfsimError, match="exceed"):
        block_fma(np.ones(9), np.ones(9), 0.0, "tc-a100-fp16")
    with pytest.raises(HalfsimError, match="products per block"):
        block_fma(np.ones(4), np.ones(3), 0.0, "tc-a100-fp16")
    with pytest.raises(HalfsimError):
        get_model(3)
    with pytest.raises(HalfsimError):
        TensorCoreModel("x", 0, 1, "toward-zero", "fp32", ("fp16",))
    with pytest.raises(HalfsimError):
        TensorCoreModel("x", 8, 1, "up", "fp32", ("fp16",))
    with pytest.raises(HalfsimError):
        TensorCoreModel("x", 8, 1, "toward-zero", "fp32", ("int8",))
    for err in (HalfsimError, ValueError):
        with pytest.raises(err):
            gemm(a, a.T, "nope")


# ---------------------------------------------------------------- float32 fast core
# kernels.tensorcore runs the products' passes in float32/int32 when every input lies in
# [2**-30, 2**31) and w <= 26, else in float64; both must give the oracle's bits.

def _paths(a, b, c, model, fmts):
    """(float32-core result, float64-core result, whether the float32 core was eligible)."""
    from halfsim.kernels import tensorcore as K
    from halfsim.tensorcore import _params
    p = _params(model, fmts)
    a3, b3, c3 = (np.ascontiguousarray(x[None], np.float32) for x in (a, b, c))
    av32, ag32, aok = K._prepare32(a3, p[2], p[3])
    bv32, bg32, bok = K._prepare32(b3, p[4], p[5])
    eligible = aok and bok and p[1] <= 26
    # the float32 core itself (fp32 outputs would otherwise mostly take the tiled kernel)
    got32 = K._gemm_core32(a3, b3, av32, ag32, bv32, bg32, c3, *p) if eligible else K._gemm_kernel(a3, b3, c3, *p)
    av, ag = K._prepare(a3, p[2], p[3])
    bv, bg = K._prepare(b3, p[4], p[5])
    return got32[0], K._gemm_core(a3, b3, av, ag, bv, bg, c3, *p)[0], eligible


FAST_CASES = [  # model, input formats, input exponents, C exponents, out
    ("tc-v100-fp16", ("fp16", "fp16"), (-14, 15), (-149, 127), "fp32"),
    ("tc-a100-fp16", ("fp16", "fp16"), (-14, 6), (-30, 12), "fp16"),
    ("tc-a100-bf16", ("bf16", "bf16"), (-30, 30), (-149, 127), "fp32"),
    ("tc-a100-tf32", ("tf32", "tf32"), (-30, 30), (-100, 100), "fp32"),
    ("tc-h100-fp16", ("fp16", "fp16"), (-14, 15), (-40, 40), "fp32"),
    ("tc-h100-tf32", ("tf32", "tf32"), (-30, 30), (-60, 60), "fp32"),
    ("tc-h100-fp8", ("fp8-e4m3", "fp8-e5m2"), (-6, 8), (-30, 30), "fp32"),
]


@pytest.mark.parametrize("name,fmts,erange,crange,out", FAST_CASES, ids=[f"{c[0]}-{c[4]}" for c in FAST_CASES])
def test_float32_core_matches_oracle_and_float64_core(name, fmts, erange, crange, out):
    rng = np.random.default_rng(abs(hash(("fast", name, out))) % 2**32)
    model = get_model(name).with_output(out)
    M, K, N = 3, 2 * model.k + 5, 21  # ragged last block; N not a multiple of the SIMD width
    # no bf16/tf32 subnormals (2^-126..): they are out of the float32 core's range
    psub = [0.0 if f in ("bf16", "tf32") else 0.05 for f in fmts]
    a = random_format_values(rng, (M, K), fmts[0], *erange, p_zero=0.15, p_sub=psub[0])
    b = random_format_values(rng, (K, N), fmts[1], *erange, p_zero=0.15, p_sub=psub[1])
    a[1, :] = 0.0  # a row of zero products: the block maximum comes from C alone
    c = random_fp32(rng, (M, N), *crange)
    c[:, :3] = 0.0
    c[0, 3] = 2.0 ** -149  # fp32 subnormal C
    if out == "fp16":
        c = c.astype(np.float16).astype(np.float32)
    got32, got64, eligible = _paths(a, b, c, model, fmts)
    assert eligible
    assert _same_bits(got32, got64).all()
    want = oracle_gemm(a, b, c, model, *fmts)
    assert _same_bits(got32, want).all(), np.argwhere(~_same_bits(got32, want))[:5]


def test_float32_core_int32_chunks_do_not_overflow():
    # 32 products per block with w = 26: a block's terms could pass 2^31, so int32 sums are
    # flushed every 8; all products large and positive push each chunk near its bound
    m = TensorCoreModel("wide", 32, 3, "toward-zero", "fp32", ("fp16",))
    rng = np.random.default_rng(21)
    a = (rng.integers(1 << 10, 1 << 11, (2, 70)) * 2.0 ** -10).astype(np.float32) * 1.9
    b = (rng.integers(1 << 10, 1 << 11, (70, 9)) * 2.0 ** -10).astype(np.float32) * 1.9
    a, b = a.astype(np.float16).astype(np.float32), b.astype(np.float16).astype(np.float32)
    c = np.zeros((2, 9), np.float32)
    got32, got64, eligible = _paths(a, b, c, m, ("fp16", "fp16"))
    assert eligible and _same_bits(got32, got64).all()
    assert _same_bits(got32, oracle_gemm(a, b, c, m, "fp16", "fp16")).all()


def test_float32_core_gate():
    # out-of-range inputs (bf16 2^40) or a window of 27 bits go to the float64 core; same bits
    rng = np.random.default_rng(22)
    a = random_format_values(rng, (3, 20), "bf16", -10, 10, p_sub=0)
    b = random_format_values(rng, (20, 5), "bf16", -10, 10, p_sub=0)
    c = random_fp32(rng, (3, 5), -10, 10)
    m = get_model("tc-h100-bf16")
    assert _paths(a, b, c, m, ("bf16", "bf16"))[2]
    a[2, 4] = 2.0 ** 40
    got32, got64, eligible = _paths(a, b, c, m, ("bf16", "bf16"))
    assert not eligible and _same_bits(got32, got64).all()
    assert _same_bits(got32, oracle_gemm(a, b, c, m, "bf16", "bf16")).all()
    wide = TensorCoreModel("w27", 4, 4, "toward-zero", "fp32", ("bf16",))
    a[2, 4] = 1.0
    assert not _paths(a, b, c, wide, ("bf16", "bf16"))[2]
    assert _same_bits(gemm(a, b, wide, c=c), oracle_gemm(a, b, c, wide, "bf16", "bf16")).all()


# ---------------------------------------------------------------- register-tiled kernel
# kernels.tc_tile: fp32 output toward zero, inputs in [2**-30, 2**31), nonzero |C| >= 2**-99;
# checked against dot_scalar (the int64 reference, itself checked against the oracle above).

def _scalar_gemm(a, b, c, model, fmts):
    """D [nb, M, N] element by element through dot_scalar (block_fma_batch)."""
    from halfsim.kernels.tensorcore import block_fma_batch
    from halfsim.tensorcore import _params
    nb, M, K = a.shape
    N = b.shape[2]
    ar = np.ascontiguousarray(np.repeat(a, N, axis=1).reshape(-1, K), np.float32)
    br = np.ascontiguousarray(np.tile(b.transpose(0, 2, 1), (1, M, 1)).reshape(-1, K), np.float32)
    cr = np.ascontiguousarray(c.reshape(-1), np.float32)
    return block_fma_batch(ar, br, cr, *_params(model, fmts)).reshape(nb, M, N)


def _tile_inputs(rng, name, shape_a, shape_b, fmts):
    """Inputs in the tile's range with wide exponent spreads, subnormals (fp16/fp8), zeros and
    products that cancel exactly within a block."""
    lo_hi = {"fp16": (-14, 15), "fp8-e4m3": (-6, 7), "fp8-e5m2": (-14, 15), "bf16": (-30, 30), "tf32": (-30, 30)}
    psub = {"fp16": 0.05, "fp8-e4m3": 0.05, "fp8-e5m2": 0.05, "bf16": 0.0, "tf32": 0.0}
    a = random_format_values(rng, shape_a, fmts[0], *lo_hi[fmts[0]], p_sub=psub[fmts[0]], p_zero=0.1)
    b = random_format_values(rng, shape_b, fmts[1], *lo_hi[fmts[1]], p_sub=psub[fmts[1]], p_zero=0.1)
    # cancellation: in some rows, products k and k+1 are equal and opposite
    for i in range(0, shape_a[1], 3):
        a[:, i, 1::4] = a[:, i, 0:-1:4][:, :a[:, i, 1::4].shape[1]]
    if fmts[0] == fmts[1]:
        b[:, 1::4, :] = -b[:, 0:-1:4, :][:, :b[:, 1::4, :].shape[1]]
    return a, b


@pytest.mark.parametrize("name", sorted(MODELS))
def test_tiled_kernel_matches_dot_scalar(name):
    from halfsim.kernels import tc_tile
    from halfsim.tensorcore import _params
    model = get_model(name)
    fmts = (model.in_formats[0], model.in_formats[-1])
    rng = np.random.default_rng(abs(hash(("tile", name))) % 2**32)
    # K over two chunks of tc_tile._KC with a ragged last block; M, N not multiples of the tile
    nb, M, K, N = 2, 7, 2 * tc_tile._KC + 2 * model.k + 3, 19
    a, b = _tile_inputs(rng, name, (nb, M, K), (nb, K, N), fmts)
    c = random_fp32(rng, (nb, M, N), -99, 60)
    c[:, :, :2] = 0.0
    c[0, 1] = -c[0, 1]
    p = _params(model, fmts)
    want = _scalar_gemm(a, b, c, model, fmts)
    for hw_rz in {tc_tile.HW_RZ, False}:  # block sums rounded by MXCSR's mode, or corrected
        got = tc_tile.tile_gemm(a, b, c, *p[:6], hw_rz=hw_rz)
        assert got is not None  # the tile took it
        nan = np.isnan(got)  # lanes the checked kernel hands back (H100 fp16/bf16 only)
        assert not nan.any() or model.k * 2 ** (p[1] + 2) + 2 ** (p[1] + 1) > 2 ** 31 - 1
        assert _same_bits(got[~nan], want[~nan]).all(), np.argwhere(~_same_bits(got, want) & ~nan)[:5]
    assert _same_bits(gemm(a, b, model, c=c, in_format=fmts), want).all()


def test_tiled_kernel_orientation_batches_and_fallbacks():
    from halfsim.kernels import tc_tile
    from halfsim.kernels.tensorcore import _tiled
    from halfsim.tensorcore import _params
    model = get_model("tc-a100-tf32")
    fmts = ("tf32", "tf32")
    p = _params(model, fmts)
    rng = np.random.default_rng(31)
    # a narrow result (N = 3) runs transposed: D^T = B^T A^T pads 3 rows, not 3 of 8 columns
    assert tc_tile.tile_area(3, 40) < tc_tile.tile_area(40, 3)
    a, b = _tile_inputs(rng, "t", (3, 40, 29), (3, 29, 3), fmts)
    c = random_fp32(rng, (3, 40, 3), -40, 40)
    want = _scalar_gemm(a, b, c, model, fmts)
    assert _same_bits(_tiled(a, b, c, *p[:6]), want).all()
    # non-finite inputs and C: those outputs go through dot_scalar, the others stay tiled
    a[1, 5, 7] = np.inf
    b[2, 4, 1] = np.nan
    c[0, 9, 2] = -np.inf
    want = _scalar_gemm(a, b, c, model, fmts)
    got = gemm(a, b, model, c=c)
    assert _same_bits(got, want).all()
    assert np.isinf(got[0, 9, 2]) and np.isnan(got[2, :, 1]).all()
    # out of the tile's range: a nonzero C below 2^-99 or from 2^100, an input beyond 2^31;
    # same bits anyway
    for where in ("c", "C", "a"):
        a2, c2 = np.where(np.isfinite(a), a, 1.0), np.where(np.isfinite(c), c, 1.0)
        b2 = np.where(np.isfinite(b), b, 1.0)
        if where == "c":
            c2[1, 2, 0] = 2.0 ** -120
        elif where == "C":
            c2[1, 2, 0] = -3.0e38  # near the top: a toward-zero overflow clamps to FLT_MAX
        else:
            a2[0, 0, 0] = 2.0 ** 40
        assert tc_tile.tile_gemm(a2, b2, c2, *p[:6]) is None
        assert _same_bits(gemm(a2, b2, model, c=c2), _scalar_gemm(a2, b2, c2, model, fmts)).all()


def test_tiled_kernel_checked_lanes_for_wide_blocks():
    # H100 fp16: 16 products of up to 2^27 each in the window (w = 25) can pass 2^31 with C;
    # such lanes come back NaN from the tile and are recomputed, so the result still matches
    from halfsim.kernels import tc_tile
    from halfsim.tensorcore import _params
    model = get_model("tc-h100-fp16")
    fmts = ("fp16", "fp16")
    p = _params(model, fmts)
    big = np.float32(2047 / 1024)  # largest fp16 significand: each product ~ 4 * 2^(window - 2)
    a = np.full((1, 8, 32), big, np.float32)
    b = np.full((1, 32, 8), big, np.float32)
    a[0, 4:] *= -1  # rows 4..7: a sum near -2^31 (flagged, though it fits)
    b[0, :, 4:] = np.float32(0.5)  # columns 4..7: sums below 2^30, not flagged
    # C at the products' alignment exponent: in rows 0..3 the first block's window sum is
    # 16 * trunc(big^2 * 2^25) + trunc(1.99 * 2^25) > 2^31 - 1, a real int32 overflow
    c = np.full((1, 8, 8), 1.99, np.float32)
    got = tc_tile.tile_gemm(a, b, c, *p[:6])
    assert np.isnan(got[0, :, :4]).all() and not np.isnan(got[0, :, 4:]).any()
    want = _scalar_gemm(a, b, c, model, fmts)
    assert _same_bits(got[0, :, 4:], want[0, :, 4:]).all()
    assert _same_bits(gemm(a, b, model, c=c), want).all()
    assert np.abs(want[0, :, :4]).min() > 64  # the recomputed lanes hold real sums


def test_tiled_kernel_restores_the_rounding_mode():
    # the tile sets MXCSR to toward-zero for its span (x86): afterwards, on the calling thread
    # too, float32 arithmetic rounds to nearest again
    import numba
    from halfsim.kernels import tc_tile
    rng = np.random.default_rng(5)
    a = random_format_values(rng, (1, 12, 40), "fp16", -5, 5)
    b = random_format_values(rng, (1, 40, 16), "fp16", -5, 5)
    c = np.zeros((1, 12, 16), np.float32)
    n = numba.get_num_threads()
    numba.set_num_threads(1)  # the calling thread runs the tiles itself
    try:
        tc_tile.tile_gemm(a, b, c, 4, 23, 10, -14, 10, -14)
    finally:
        numba.set_num_threads(n)
    one, frac = np.float32(1.0), np.float32(0.75 * 2.0 ** -23)
    assert one + frac == np.float32(1.0 + 2.0 ** -23)  # toward zero would give 1.0
    assert -one - frac == np.float32(-1.0 - 2.0 ** -23)


@pytest.mark.parametrize("name", ["tc-v100-fp16", "tc-a100-tf32", "tc-a100-fp16"])
def test_empty_dimensions(name):
    # numpy matmul shapes; an empty inner dimension leaves C (rounded to the output format)
    for sa, sb in [((3, 0), (0, 4)), ((0, 5), (5, 4)), ((3, 5), (5, 0)), ((0, 3, 5), (0, 5, 4))]:
        a, b = np.ones(sa, np.float32), np.ones(sb, np.float32)
        want = np.matmul(a, b) + np.float32(0.5)
        got = gemm(a, b, name, c=np.float32(0.5))
        assert got.shape == want.shape and (got == want).all()
