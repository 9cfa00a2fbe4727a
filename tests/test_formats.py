"""Formats and rounding against independent oracles: numpy float16, ml_dtypes, and an exact
rational-rounding oracle written here with fractions.Fraction."""
import functools
import math
from fractions import Fraction

import ml_dtypes as md
import numpy as np
import pytest

import halfsim
from halfsim import formats as F
from halfsim.errors import HalfsimError

REF_DTYPES = {"fp16": np.float16, "bf16": md.bfloat16, "fp8-e4m3": md.float8_e4m3fn,
              "fp8-e5m2": md.float8_e5m2}
CODE_DTYPES = {"fp16": np.uint16, "bf16": np.uint16, "fp8-e4m3": np.uint8, "fp8-e5m2": np.uint8}


def ref_round(x, name):
    with np.errstate(invalid="ignore", over="ignore"):
        return x.astype(REF_DTYPES[name]).astype(np.float32)


def assert_same_bits(got, want):
    """Bit-exact equality of float32 arrays, any NaN equal to any NaN."""
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert got.shape == want.shape
    bad = (got.view(np.uint32) != want.view(np.uint32)) & ~(np.isnan(got) & np.isnan(want))
    if bad.any():
        i = np.flatnonzero(bad)[:5]
        x = [hex(int(v)) for v in got.view(np.uint32).reshape(-1)[i]]
        y = [hex(int(v)) for v in want.view(np.uint32).reshape(-1)[i]]
        raise AssertionError(f"{bad.sum()} mismatches, first at {i}: got {x} want {y}")


def all_values(name):
    """Every value of a reference dtype, as float32."""
    dt = REF_DTYPES[name]
    codes = np.arange(1 << (8 * np.dtype(dt).itemsize), dtype=np.uint64).astype(CODE_DTYPES[name])
    return codes.view(dt).astype(np.float32)


def probes(name):
    """Every value, every midpoint between adjacent finite values (the ties), their float32
    neighbours, and the overflow thresholds."""
    with np.errstate(all="ignore"):
        return _probes(name)


def _probes(name):
    v = all_values(name)
    fin = np.unique(v[np.isfinite(v)])
    mids = ((fin[:-1].astype(np.float64) + fin[1:]) / 2).astype(np.float32)  # exact in float32
    top = fin[-1].astype(np.float64)
    ulp = top - fin[-2]
    edges = np.array([top + ulp / 2, top + ulp, 2 * top, -(top + ulp / 2), 1e30, -1e30, 3e38,
                      np.inf, -np.inf, np.nan, -np.nan, 0.0, -0.0], np.float32)
    base = np.concatenate([v, mids, edges])
    return np.concatenate([base, np.nextafter(base, np.float32(np.inf)), np.nextafter(base, np.float32(-np.inf))])


# ------------------------------------------------------------------ nearest-even vs references

@pytest.mark.parametrize("name", list(REF_DTYPES))
def test_nearest_even_matches_reference_on_probes(name):
    x = probes(name)
    assert_same_bits(halfsim.round(x, name), ref_round(x, name))
    assert_same_bits(F.round_into(x, F.format(name)), ref_round(x, name))


def test_nearest_even_random_bit_patterns():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 1 << 32, size=10_000_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    out = np.empty_like(x)
    for name in REF_DTYPES:
        assert_same_bits(F.round_into(x, F.format(name), out), ref_round(x, name))


@pytest.mark.parametrize("name", list(REF_DTYPES))
def test_float64_input_matches_reference_where_no_double_rounding(name):
    # float64 values that are already float32 cannot suffer double rounding.
    x = probes(name).astype(np.float64)
    assert_same_bits(halfsim.round(x, name), ref_round(x.astype(np.float32), name))


def test_float64_is_rounded_once():
    # 1 + 2**-11 + 2**-40 lies above the fp16 tie 1 + 2**-11; through float32 it becomes the tie
    # and rounds to even (1.0), as ml_dtypes and numpy do.
    x = np.array([1 + 2.0**-11 + 2.0**-40, -(1 + 2.0**-11 + 2.0**-40)])
    assert list(halfsim.round(x, "fp16")) == [1 + 2.0**-10, -(1 + 2.0**-10)]
    assert x.astype(np.float32).astype(np.float16)[0] == 1.0  # the double rounding we avoid
    y = np.array([1 + 2.0**-8 + 2.0**-30])
    assert halfsim.round(y, "bf16")[0] == 1 + 2.0**-7


def test_fp32_nearest_is_identity_and_other_dtypes_accepted():
    x = np.random.default_rng(2).integers(0, 1 << 32, 1000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    r = halfsim.round(x, "fp32")
    assert_same_bits(r, x)
    assert r is not x
    assert F.round_into(x, F.format("fp32")) is x
    h = np.array([1.5, -2.0, 65504, np.inf], np.float16)
    assert_same_bits(halfsim.round(h, "fp16"), h.astype(np.float32))
    b = np.array([1.5, 3.0], md.bfloat16)
    assert_same_bits(halfsim.round(b, "fp8-e4m3"), np.array([1.5, 3.0], np.float32))


def test_shapes_layouts_and_in_place():
    x = (np.random.default_rng(3).standard_normal((40, 30)) * 100).astype(np.float32)
    nc = x[:, ::2]  # not contiguous
    assert_same_bits(halfsim.round(nc, "fp16"), nc.astype(np.float16).astype(np.float32))
    assert halfsim.round(np.float32(1 / 3), "bf16").shape == ()
    y = x.copy()
    assert F.round_into(y, F.format("bf16"), out=y) is y
    assert_same_bits(y, x.astype(md.bfloat16).astype(np.float32))
    out = np.empty((30, 40), np.float32).T  # non-contiguous out
    F.round_into(x, F.format("fp16"), out=out)
    assert_same_bits(out, x.astype(np.float16).astype(np.float32))
    big = np.random.default_rng(4).standard_normal(200_000).astype(np.float32)  # parallel kernel
    assert_same_bits(halfsim.round(big, "fp8-e5m2", rounding="toward-zero")[:1000],
                     halfsim.round(big[:1000], "fp8-e5m2", rounding="toward-zero"))


# ------------------------------------------------------------------ formats

def test_format_properties():
    for name, dt in REF_DTYPES.items():
        f, fi = halfsim.format(name), md.finfo(dt)
        assert f.max == float(fi.max)
        assert f.min_normal == float(fi.smallest_normal)
        assert f.min_subnormal == float(fi.smallest_subnormal)
        assert f.eps == float(fi.eps)
        assert f.bits == 8 * np.dtype(dt).itemsize
    assert halfsim.format("fp8-e4m3").has_inf is False and halfsim.format("e5m2").has_inf is True
    t = halfsim.format("tf32")
    assert (t.ebits, t.mbits, t.bits, t.max) == (8, 10, 19, (2 - 2.0**-10) * 2.0**127)
    assert halfsim.format("float32").max == float(np.finfo(np.float32).max)
    for alias, name in [("half", "fp16"), ("float16", "fp16"), ("bfloat16", "bf16"), ("e4m3", "fp8-e4m3"),
                        ("fp8-e4m3fn", "fp8-e4m3"), ("E5M2", "fp8-e5m2"), ("float32", "fp32")]:
        assert halfsim.format(alias) is halfsim.format(name)
    c = halfsim.format("e3m2")
    assert (c.ebits, c.mbits, c.bias, c.max, c.min_subnormal) == (3, 2, 3, 14.0, 0.0625)
    assert halfsim.format(c) is c


@pytest.mark.parametrize("bad, word", [("fp17", "unknown format"), ("e9m3", "exponent bits 9"),
                                       ("e1m3", "exponent bits 1"), ("e5m24", "mantissa bits 24"),
                                       ("e5m0", "mantissa bits 0"), ("", "unknown format")])
def test_bad_format_names(bad, word):
    with pytest.raises(ValueError, match=word):
        halfsim.format(bad)
    with pytest.raises(HalfsimError):
        halfsim.round(np.ones(3, np.float32), bad)


def test_bad_inputs():
    for x in [np.arange(3), np.ones(3, bool), np.array([1.0, None], object), np.ones(2, np.complex64)]:
        with pytest.raises(HalfsimError, match="floating-point array"):
            halfsim.round(x, "fp16")
    x = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="rounding"):
        halfsim.round(x, "fp16", rounding="nearest-odd")
    with pytest.raises(ValueError, match="subnormals"):
        halfsim.round(x, "fp16", subnormals="flush")
    with pytest.raises(ValueError, match="overflow"):
        halfsim.round(x, "fp16", overflow="wrap")
    with pytest.raises(ValueError, match="seed"):
        halfsim.round(x, "fp16", rounding="stochastic", seed=-1)
    with pytest.raises(ValueError, match="integer array"):
        halfsim.decode(np.ones(2, np.float32), "fp16")
    with pytest.raises(ValueError, match="out of range"):
        halfsim.decode(np.array([256]), "fp8-e5m2")
    with pytest.raises(ValueError, match="format"):
        halfsim.format(16)


# ------------------------------------------------------------------ exact oracle

@functools.lru_cache(maxsize=None)
def _limits(E, M, fn):
    """(emin, max, min_normal) of the 1/E/M format, from the format's definition."""
    bias = 2 ** (E - 1) - 1
    emax = 2**E - 1 - bias if fn else 2**E - 2 - bias
    maxv = (2 - Fraction(2) ** ((1 - M) if fn else -M)) * Fraction(2) ** emax
    return 1 - bias, maxv, Fraction(2) ** (1 - bias)


def oracle(x, E, M, fn=False, mode="nearest-even", daz=False, ftz=False, overflow=None):
    """Round the float x to the format 1/E/M exactly with rational arithmetic; returns a float."""
    emin, maxv, minnorm = _limits(E, M, fn)
    if math.isnan(x):
        return math.nan
    neg = math.copysign(1.0, x) < 0
    sgn = -1.0 if neg else 1.0
    if math.isinf(x):
        if overflow == "saturate":
            return sgn * float(maxv)
        return math.nan if fn else x
    num, den = abs(x).as_integer_ratio()  # |x| = num/den exactly
    if daz and Fraction(num, den) < minnorm:
        return sgn * 0.0
    if num == 0:
        return sgn * 0.0
    e = math.frexp(abs(x))[1] - 1  # exact floor(log2 |x|)
    p = max(e, emin) - M  # the quantum is 2**p; |x| / 2**p = N / D
    N, D = (num, den << p) if p >= 0 else (num << -p, den)
    fl, rem = divmod(N, D)
    if mode == "nearest-even":
        k = fl + (2 * rem > D or (2 * rem == D and fl % 2 == 1))
    elif mode == "toward-zero":
        k = fl
    elif mode == "up":
        k = fl + (rem > 0 and not neg)
    elif mode == "down":
        k = fl + (rem > 0 and neg)
    v = Fraction(k << p) if p >= 0 else Fraction(k, 1 << -p)
    if v > maxv:
        gives_max = mode == "toward-zero" or (mode == "up" and neg) or (mode == "down" and not neg)
        if overflow == "saturate" or (overflow is None and gives_max):
            v = maxv
        else:
            return math.nan if fn else sgn * math.inf
    if ftz and 0 < v < minnorm:
        v = 0
    return sgn * float(v)


def samples(E, M, fn, n, rng):
    """float64 values around the format's grid: normals, subnormals, near overflow, exact ties
    and values one float32/float64 step from ties, both signs, plus the specials."""
    bias = 2 ** (E - 1) - 1
    emin, emax = 1 - bias, (2**E - 1 - bias if fn else 2**E - 2 - bias)
    maxv = (2 - 2.0 ** ((1 - M) if fn else -M)) * 2.0**emax
    lo = max(emin - M - 3, -149)
    normals = np.exp2(rng.uniform(emin, emax + 1, n))
    subs = rng.uniform(0, 2.0**emin, n // 4)
    tiny = np.exp2(rng.uniform(lo, emin, n // 4))
    over = maxv * rng.uniform(0.98, 1.1, n // 4)
    # Ties: odd multiples of half a quantum, in normal and subnormal binades.
    ee = rng.integers(emin, emax + 1, n // 2)
    kk = rng.integers(2**M, 2 ** (M + 1), n // 2)
    ties = (2 * kk + 1) * np.exp2(ee - M - 1.0)
    ks = rng.integers(0, 2**M, n // 4)
    subties = (2 * ks + 1) * 2.0 ** (emin - M - 1)
    top = np.array([maxv + 2.0 ** (emax - M - 1) * (2 if fn else 1), maxv * 2, 2.0 ** (emax + 1),
                    2.0**emin, 2.0 ** (emin - M), 2.0 ** (emin - M - 1), 0.0, np.inf, np.nan, 3e38])
    x = np.concatenate([normals, subs, tiny, over, ties, subties, top])
    x = x[np.abs(x) < 3.4e38]
    x = np.concatenate([x, -x, [-0.0, -np.inf]])
    x32 = x.astype(np.float32).astype(np.float64)
    step = np.concatenate([np.nextafter(x32.astype(np.float32), np.float32(np.inf)),
                           np.nextafter(x32.astype(np.float32), np.float32(0))]).astype(np.float64)
    return np.concatenate([x, x32, step, np.nextafter(x, np.inf), np.nextafter(x, -np.inf)])


CUSTOM = [("e5m10", 5, 10, False), ("e8m7", 8, 7, False), ("e3m2", 3, 2, False), ("e6m9", 6, 9, False),
          ("e2m1", 2, 1, False), ("e8m23", 8, 23, False), ("fp8-e4m3", 4, 3, True), ("fp8-e5m2", 5, 2, False),
          ("tf32", 8, 10, False), ("e4m3fn", 4, 3, True), ("e7m16", 7, 16, False), ("e6m23", 6, 23, False)]
MODES = ["nearest-even", "toward-zero", "up", "down"]


def check_against_oracle(name, E, M, fn, x, mode, sub, overflow):
    daz, ftz = "daz" in sub, "ftz" in sub
    want = np.array([oracle(float(v), E, M, fn, mode, daz, ftz, overflow) for v in x], np.float32)
    with np.errstate(over="ignore"):
        x32 = x.astype(np.float32)
    got64 = halfsim.round(x, name, rounding=mode, subnormals=sub, overflow=overflow)
    assert_same_bits(got64, want)  # float64 in: one rounding, straight from float64
    want32 = np.array([oracle(float(v), E, M, fn, mode, daz, ftz, overflow) for v in x32], np.float32)
    got32 = halfsim.round(x32, name, rounding=mode, subnormals=sub, overflow=overflow)
    assert_same_bits(got32, want32)


@pytest.mark.parametrize("name, E, M, fn", CUSTOM)
def test_directed_modes_against_exact_oracle(name, E, M, fn):
    rng = np.random.default_rng(E * 100 + M)
    x = samples(E, M, fn, 70, rng)
    for mode in MODES:
        check_against_oracle(name, E, M, fn, x, mode, "keep", None)


@pytest.mark.parametrize("name, E, M, fn", CUSTOM[:7])
def test_subnormal_and_overflow_options_against_exact_oracle(name, E, M, fn):
    rng = np.random.default_rng(E * 1000 + M)
    x = samples(E, M, fn, 40, rng)
    combos = [("nearest-even", "ftz", None), ("nearest-even", "daz", "saturate"),
              ("nearest-even", "ftz+daz", "inf"), ("toward-zero", "ftz", "saturate"),
              ("up", "daz", "inf"), ("down", "ftz+daz", None), ("up", "keep", "saturate"),
              ("toward-zero", "keep", "inf")]
    for mode, sub, overflow in combos:
        check_against_oracle(name, E, M, fn, x, mode, sub, overflow)


def test_overflow_special_cases():
    r = halfsim.round(np.array([70000, -70000, np.inf, -np.inf, np.nan], np.float32), "fp16", overflow="saturate")
    assert_same_bits(r, np.array([65504, -65504, 65504, -65504, np.nan], np.float32))
    assert np.isnan(r[4])
    r = halfsim.round(np.array([1e6, -1e6, np.inf], np.float32), "fp16", rounding="toward-zero")
    assert list(r) == [65504, -65504, np.inf]  # IEEE: toward-zero overflows to max, inf stays inf
    r = halfsim.round(np.array([1e6, -1e6], np.float32), "fp16", rounding="up")
    assert list(r) == [np.inf, -65504]
    r = halfsim.round(np.array([464, 464.01, 1e4, np.inf], np.float32), "fp8-e4m3")
    assert r[0] == 448 and np.isnan(r[1:]).all()
    r = halfsim.round(np.array([1e4, -np.inf], np.float32), "fp8-e4m3", overflow="saturate")
    assert list(r) == [448, -448]
    z = halfsim.round(np.array([-0.0, 0.0, -1e-30], np.float32), "fp16")
    assert list(np.signbit(z)) == [True, False, True] and not z.any()
    f = halfsim.round(np.array([2.0**-24 * 0.75, -(2.0**-15)], np.float32), "fp16", subnormals="ftz")
    assert list(f) == [0.0, 0.0] and np.signbit(f[1])


# ------------------------------------------------------------------ stochastic rounding

def test_stochastic_unbiased_and_neighbours():
    n = 1_000_000
    cases = [("fp16", 1 + 0.3 * 2.0**-10, 2.0**-10), ("bf16", -(3 + 0.7 * 2.0**-6), 2.0**-6),
             ("fp8-e4m3", 0.01 * 2.0**-9 + 2.0**-7, 2.0**-9), ("fp16", 2.0**-24 * 0.5, 2.0**-24),
             ("e3m2", 5.2, 1.0)]
    for name, v, ulp in cases:
        x = np.full(n, v, np.float32)
        v = float(x[0])
        r = halfsim.round(x, name, rounding="stochastic", seed=7).astype(np.float64)
        lo, hi = math.floor(v / ulp) * ulp, math.floor(v / ulp) * ulp + ulp
        assert np.isin(r, [lo, hi]).all()
        p = (v - lo) / ulp
        sigma = ulp * math.sqrt(p * (1 - p) / n)
        assert abs(r.mean() - v) < 3 * sigma, (name, r.mean() - v, sigma)


def test_stochastic_results_are_the_two_neighbours_on_random_values():
    rng = np.random.default_rng(5)
    for name, E, M, fn in [("fp16", 5, 10, False), ("bf16", 8, 7, False), ("fp8-e4m3", 4, 3, True)]:
        x = samples(E, M, fn, 300, rng)
        x = x[np.isfinite(x) & (np.abs(x) < halfsim.format(name).max)]
        r = halfsim.round(x, name, rounding="stochastic", seed=3)
        dn = np.array([oracle(float(v), E, M, fn, "down") for v in x], np.float32)
        up = np.array([oracle(float(v), E, M, fn, "up") for v in x], np.float32)
        assert ((r == dn) | (r == up)).all()


def test_stochastic_reproducible():
    x = np.random.default_rng(6).standard_normal(100_000).astype(np.float32)
    a = halfsim.round(x, "bf16", rounding="stochastic", seed=11)
    b = halfsim.round(x, "bf16", rounding="stochastic", seed=11)
    c = halfsim.round(x, "bf16", rounding="stochastic", seed=12)
    assert_same_bits(a, b)
    assert (a != c).mean() > 0.1
    # Element i's random number depends only on (seed, i): serial and parallel kernels agree.
    assert_same_bits(halfsim.round(x[:5000], "bf16", rounding="stochastic", seed=11), a[:5000])
    assert_same_bits(halfsim.round(x.astype(np.float64), "bf16", rounding="stochastic", seed=11), a)


# ------------------------------------------------------------------ encode / decode

@pytest.mark.parametrize("name", list(REF_DTYPES))
def test_encode_decode_match_ml_dtypes(name):
    dt, ct = REF_DTYPES[name], CODE_DTYPES[name]
    codes = np.arange(1 << (8 * np.dtype(dt).itemsize), dtype=np.uint64).astype(ct)
    vals = codes.view(dt).astype(np.float32)
    dec = halfsim.decode(codes, name)
    assert_same_bits(dec, vals)
    nan = np.isnan(vals)
    enc = halfsim.encode(vals, name)
    assert enc.dtype == ct
    assert (enc[~nan] == codes[~nan]).all()
    x = probes(name)
    with np.errstate(invalid="ignore", over="ignore"):
        want = x.astype(dt).view(ct)
    got = halfsim.encode(x, name)
    if name == "fp16":  # numpy keeps NaN payloads; ours (and ml_dtypes') are canonical
        keep = ~np.isnan(x) | (x.view(np.uint32) & 0x7FFFFF == 0x400000)
        got, want = got[keep], want[keep]
    assert (got == want).all()


@pytest.mark.parametrize("name, E, M", [("e3m2", 3, 2), ("e2m1", 2, 1), ("tf32", 8, 10), ("e6m9", 6, 9),
                                        ("e4m3fn", 4, 3)])
def test_encode_decode_custom_roundtrip(name, E, M):
    f = halfsim.format(name)
    nb = 1 + E + M
    codes = np.arange(min(1 << nb, 1 << 16), dtype=np.int64)
    if nb > 16:  # tf32: a sample of the 2**19 codes
        codes = np.random.default_rng(8).integers(0, 1 << nb, 70000)
    vals = halfsim.decode(codes, name)
    assert F.is_representable(vals, name).all()
    enc = halfsim.encode(vals, name)
    assert enc.dtype == (np.uint8 if nb <= 8 else np.uint16 if nb <= 16 else np.uint32)
    nan = np.isnan(vals)
    assert (enc[~nan] == codes[~nan]).all()
    # Decode by hand from the fields, independently of the implementation.
    bias = 2 ** (E - 1) - 1
    for c, v in zip(codes[:300].tolist(), vals[:300].tolist()):
        s, e, m = c >> (E + M), (c >> M) & (2**E - 1), c & (2**M - 1)
        fn = name.endswith("fn")
        if e == 2**E - 1 and (not fn or m == 2**M - 1):
            assert (math.isinf(v) and m == 0 and not fn) or math.isnan(v)
            continue
        want = (m * 2.0 ** (1 - bias - M)) if e == 0 else (1 + m / 2**M) * 2.0 ** (e - bias)
        assert v == (-want if s else want)
    if name == "tf32":
        x = np.random.default_rng(9).standard_normal(1000).astype(np.float32)
        r = halfsim.round(x, "tf32")
        assert (halfsim.encode(x, "tf32") == r.view(np.uint32) >> 13).all()


def test_is_representable():
    x = np.array([1.0, 1 + 2.0**-10, 1 + 2.0**-11, 65504, 65520, np.inf, np.nan, 2.0**-24, 2.0**-25], np.float32)
    assert list(F.is_representable(x, "fp16")) == [True, True, False, True, False, True, True, True, False]
    assert list(F.is_representable(np.array([448.0, 480.0, np.inf]), "fp8-e4m3")) == [True, False, False]


# ------------------------------------------------------------------ ulp distance

def test_ulp_distance_hand_cases():
    u = halfsim.ulp_distance
    h = halfsim.format("fp16")
    assert u(1.0, 1 + 2.0**-10, "fp16") == 1
    assert u(1.0, 2.0, "fp16") == 1024
    assert u(0.0, -0.0, "fp16") == 0
    assert u(-(2.0**-24), 2.0**-24, "fp16") == 2
    assert u(h.max, np.inf, "fp16") == 1
    assert u(-np.inf, np.inf, "fp8-e5m2") == 2 * 124
    assert u(448.0, -448.0, "fp8-e4m3") == 2 * 126
    one = np.float32(1)
    assert u(one, np.nextafter(one, np.float32(2))) == 1
    assert u(np.float32(-1.5), np.float32(1.5), "e3m2") == 2 * 14  # 1.5 is code 0b011_10
    assert u(1.0 + 2.0**-11, 1.0, "fp16") == 0.5  # between grid points: fractional
    assert np.isnan(u(np.nan, 1.0))
    d = u(np.array([1.0, 2.0], np.float32), np.float32(1.0), "bf16")
    assert d.shape == (2,) and list(d) == [0, 128]


@pytest.mark.parametrize("name", ["fp16", "fp8-e4m3"])
def test_ulp_distance_against_sorted_value_count(name):
    v = all_values(name)
    grid = np.unique(np.concatenate([v[~np.isnan(v)], [0.0]]))  # -0 and +0 collapse
    rng = np.random.default_rng(10)
    a, b = rng.choice(grid, 20000), rng.choice(grid, 20000)
    want = np.abs(np.searchsorted(grid, a) - np.searchsorted(grid, b))
    assert (halfsim.ulp_distance(a, b, name) == want).all()


# ------------------------------------------------------------------ rounding with event counts
@pytest.mark.parametrize("name", sorted(REF_DTYPES))
@pytest.mark.parametrize("inplace", [False, True])
def test_round_count_against_references(name, inplace):
    """The precision plan's one-pass round-and-count kernel (fp16 through F16C where the CPU
    has it, the bit-manipulation kernel otherwise), in place and into a separate array: values
    as ml_dtypes/numpy round them, NaNs as the signed quiet NaN without payload, and the event
    counts recomputed from the reference results."""
    from halfsim.kernels.events import round_count
    from halfsim.precision import _overflow_threshold
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 1 << 32, 200_000, dtype=np.uint64).astype(np.uint32)  # NaN payloads included
    x = np.concatenate([probes(name), bits.view(np.float32), rng.standard_normal(100_003).astype(np.float32)])
    f = halfsim.format(name)
    th, strict = _overflow_threshold(f)
    want = ref_round(x, name)
    nan = np.isnan(x)
    want[nan] = np.where(np.signbit(x[nan]), -np.float32(np.nan), np.float32(np.nan))
    src = x.copy()
    dst = src if inplace else np.empty_like(src)
    counts = round_count(src, dst, F._params(f), th, strict)
    assert np.array_equal(dst.view(np.uint32), want.view(np.uint32))
    with np.errstate(invalid="ignore"):
        big = int(np.count_nonzero(np.isfinite(x) & ~np.isfinite(want)))
        under = int(np.count_nonzero((x != 0) & ~nan & (want == 0)))
    assert counts == (int(nan.sum()), big, under)
    if not inplace:
        assert np.array_equal(src.view(np.uint32), x.view(np.uint32))


@pytest.mark.skipif(not __import__("halfsim.kernels.halfcvt", fromlist=["HW_F16C"]).HW_F16C,
                    reason="the 8-lane fp16 kernel needs F16C")
def test_fp16_round_count_vector_kernel_equals_scalar_kernel_at_every_tail_length():
    """The 8-lane fp16 round-and-count kernel (vector part plus scalar tail) against the
    scalar loop it replaces, on NaN payloads of both signs, infinities, the overflow boundary,
    subnormals and signed zeros, for every length modulo 8."""
    from halfsim.kernels import events
    rng = np.random.default_rng(11)
    special = np.array([0x7FC00000, 0xFFC00001, 0x7F800001, 0xFF812345, 0x7F800000, 0xFF800000, 0, 0x80000000],
                       np.uint32).view(np.float32)
    edges = np.float32([65504, 65519.99, 65520, -65520, 1e-8, -1e-8, 2.0 ** -25, -(2.0 ** -25), 3 * 2.0 ** -26])
    x = np.concatenate([special, edges, rng.integers(0, 1 << 32, 5000, dtype=np.uint64).astype(np.uint32).view(np.float32),
                        (rng.standard_normal(5000) * np.exp2(rng.integers(-30, 20, 5000))).astype(np.float32)])
    for off in range(8):
        v, s = x[off:].copy(), x[off:].copy()
        assert events._f16_count_inplace_vec(v) == events._f16_count_inplace(s)
        assert np.array_equal(v.view(np.uint32), s.view(np.uint32))
