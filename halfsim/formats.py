"""Number formats and rounding: fp32, fp16, bf16, tf32, fp8-e4m3 (OCP "fn"), fp8-e5m2 and any
custom eXmY, emulated in float32 carriers.

`round(x, fmt)` returns a float32 array that holds only values representable in `fmt`. The work
is done by numba kernels on the float32 bit patterns (halfsim.kernels.rounding). float64 input is
rounded once, directly from its own bits: ml_dtypes rounds float64 through float32 first and so
double-rounds; we do not.

NaN results are the quiet NaN with the input's sign and no payload (as ml_dtypes produces),
except for fp32 itself, which keeps the input NaN (quieted).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np

from .errors import HalfsimError

__all__ = ["Format", "format", "round", "round_array", "round_into", "encode", "decode",
           "ulp_distance", "is_representable", "FORMATS"]

@dataclass(frozen=True)
class Format:
    """A binary floating-point format: 1 sign bit, `ebits` exponent bits, `mbits` stored mantissa
    bits. has_inf=True is IEEE style (top exponent reserved for inf/NaN); has_inf=False is the
    OCP "fn" style (top exponent holds normals, NaN only with an all-ones mantissa)."""
    name: str
    ebits: int
    mbits: int
    bias: int
    has_inf: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.ebits, (int, np.integer)) and 2 <= self.ebits <= 8):
            raise HalfsimError(f"format {self.name!r}: exponent bits {self.ebits} out of range 2..8")
        if not (isinstance(self.mbits, (int, np.integer)) and 1 <= self.mbits <= 23):
            raise HalfsimError(f"format {self.name!r}: mantissa bits {self.mbits} out of range 1..23")
        if self.emin < -126 or self.emax > 127:
            raise HalfsimError(f"format {self.name!r}: bias {self.bias} puts exponents outside float32's range")

    @property
    def bits(self) -> int:
        return 1 + self.ebits + self.mbits

    @property
    def emin(self) -> int:
        """Unbiased exponent of the smallest normal."""
        return 1 - self.bias

    @property
    def emax(self) -> int:
        """Unbiased exponent of the largest finite value."""
        top = (1 << self.ebits) - 1
        return (top - 1 if self.has_inf else top) - self.bias

    @property
    def max(self) -> float:
        # fn formats give up the all-ones mantissa of the top binade to NaN.
        frac = 2.0 - 2.0 ** (-self.mbits if self.has_inf else 1 - self.mbits)
        return math.ldexp(frac, self.emax)

    @property
    def min_normal(self) -> float:
        return math.ldexp(1.0, self.emin)

    @property
    def min_subnormal(self) -> float:
        return math.ldexp(1.0, self.emin - self.mbits)

    @property
    def eps(self) -> float:
        return math.ldexp(1.0, -self.mbits)

    def __str__(self) -> str:
        return self.name


def _ieee(name: str, e: int, m: int) -> Format:
    return Format(name, e, m, (1 << (e - 1)) - 1, True)


FP32 = _ieee("fp32", 8, 23)
FP16 = _ieee("fp16", 5, 10)
BF16 = _ieee("bf16", 8, 7)
TF32 = _ieee("tf32", 8, 10)
FP8_E4M3 = Format("fp8-e4m3", 4, 3, 7, False)
FP8_E5M2 = _ieee("fp8-e5m2", 5, 2)

FORMATS: dict[str, Format] = {f.name: f for f in (FP32, FP16, BF16, TF32, FP8_E4M3, FP8_E5M2)}
_ALIASES = {
    "fp32": FP32, "float32": FP32, "float": FP32, "f32": FP32,
    "fp16": FP16, "float16": FP16, "half": FP16, "f16": FP16,
    "bf16": BF16, "bfloat16": BF16,
    "tf32": TF32, "tensorfloat32": TF32,
    "fp8-e4m3": FP8_E4M3, "e4m3": FP8_E4M3, "fp8-e4m3fn": FP8_E4M3, "e4m3fn": FP8_E4M3,
    "float8-e4m3fn": FP8_E4M3,
    "fp8-e5m2": FP8_E5M2, "e5m2": FP8_E5M2, "float8-e5m2": FP8_E5M2,
}
_CUSTOM = re.compile(r"e(\d+)m(\d+)(fn)?")


def format(fmt: Union[str, Format]) -> Format:
    """The Format for a name ("fp16", "bf16", "fp8-e4m3", "e5m10", "e4m3fn", ...) or a Format."""
    if isinstance(fmt, Format):
        return fmt
    if not isinstance(fmt, str):
        raise HalfsimError(f"format must be a name or a Format, not {type(fmt).__name__}")
    key = fmt.strip().lower().replace("_", "-")
    if key in _ALIASES:
        return _ALIASES[key]
    mt = _CUSTOM.fullmatch(key)
    if mt is None:
        raise HalfsimError(f"unknown format {fmt!r} (use fp32, fp16, bf16, tf32, fp8-e4m3, fp8-e5m2 "
                           "or eXmY with X in 2..8 and Y in 1..23)")
    e, m, fn = int(mt.group(1)), int(mt.group(2)), bool(mt.group(3))
    if not 2 <= e <= 8:
        raise HalfsimError(f"format {fmt!r}: exponent bits {e} out of range 2..8")
    if not 1 <= m <= 23:
        raise HalfsimError(f"format {fmt!r}: mantissa bits {m} out of range 1..23")
    return Format(key, e, m, (1 << (e - 1)) - 1, not fn)


# ---------------------------------------------------------------- kernel parameters

class _Params:
    """Integers the kernels need for a format, computed once per format."""
    __slots__ = ("m", "emin", "maxbits", "maxbits64", "has_inf", "s", "be_min", "minnorm",
                 "down_scale", "up_scale", "half_m1", "identity", "fp16")

    def __init__(self, f: Format):
        self.m, self.emin, self.has_inf = f.mbits, f.emin, int(f.has_inf)
        self.maxbits = int(np.array(f.max, np.float32).view(np.uint32))
        self.maxbits64 = int(np.array(f.max, np.float64).view(np.int64))
        self.s = 23 - f.mbits
        self.minnorm = (f.emin + 127) << 23
        # E=8 formats share float32's subnormal quantum: the integer path covers them whole
        # (be_min 0), and the subnormal path must not multiply by float32 subnormals.
        e8 = f.emin == -126
        self.be_min = 0 if e8 else f.emin + 127
        self.down_scale = np.float32(1 if e8 else math.ldexp(1.0, f.emin - f.mbits))
        self.up_scale = np.float32(1 if e8 else math.ldexp(1.0, f.mbits - f.emin))
        self.half_m1 = (1 << self.s >> 1) - 1 if self.s > 0 else 0
        self.identity = f.ebits == 8 and f.mbits == 23 and f.bias == 127 and f.has_inf
        self.fp16 = f.ebits == 5 and f.mbits == 10 and f.bias == 15 and f.has_inf  # IEEE binary16: F16C applies


_PARAMS: dict[Format, _Params] = {}


def _params(f: Format) -> _Params:
    p = _PARAMS.get(f)
    if p is None:
        p = _PARAMS[f] = _Params(f)
    return p


_ROUNDING = {"nearest-even": 0, "nearest": 0, "rne": 0, "toward-zero": 1, "rtz": 1, "truncate": 1,
             "up": 2, "toward-inf": 2, "down": 3, "toward-neg-inf": 3, "stochastic": 4}
_SUBNORMALS = {"keep": (0, 0), "ftz": (0, 1), "daz": (1, 0), "ftz+daz": (1, 1), "daz+ftz": (1, 1)}
_OVERFLOW = {None: 0, "natural": 0, "inf": 1, "saturate": 2}
_PARALLEL_MIN = 1 << 16


def _kernels():
    # Imported on first use: importing halfsim must not load numba's compiled kernels.
    from .kernels import rounding
    return rounding


_NOKEY = np.uint64(0)


def _run32(src: np.ndarray, dst: np.ndarray, p: _Params, mode: int, daz: int, ftz: int, ov: int,
           key: np.uint64) -> None:
    k = _kernels()
    fn = k.round32_parallel if src.size >= _PARALLEL_MIN else k.round32_serial
    fn(src, dst, p.m, p.s, p.be_min, p.minnorm, p.down_scale, p.maxbits, p.has_inf, mode, daz, ftz, ov, key)


def _as_float(x: Any, what: str = "x") -> np.ndarray:
    """float32 or float64 ndarray from x; integer, bool, complex, object input is refused."""
    a = np.asarray(x)
    dt = a.dtype
    if dt == np.float32 or dt == np.float64:
        return a
    if dt == np.float16:
        return a.astype(np.float32)
    if dt.kind == "V" and (dt.name == "bfloat16" or dt.name.startswith("float")):
        return a.astype(np.float32)  # ml_dtypes' narrow floats are all exact in float32
    raise HalfsimError(f"{what} must be a floating-point array (float16/32/64 or bfloat16), not {dt}")


# ---------------------------------------------------------------- rounding

def round_into(x: np.ndarray, fmt: Format, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Hot-loop rounding: nearest-even, subnormals kept, IEEE overflow. x must be a float32
    ndarray (anything else goes through round_array); out, when given, is a float32 array of
    x's shape and may be x itself. For fp32 the result is x itself when out is None."""
    p = _PARAMS.get(fmt) or _params(format(fmt))
    if type(x) is not np.ndarray or x.dtype != np.float32:
        r = round_array(x, fmt)
        if out is None:
            return r
        out[...] = r
        return out
    if p.identity:
        if out is None:
            return x
        if out is not x:
            np.copyto(out, x)
        return out
    if out is None:
        out = np.empty_like(x)
    src = x.reshape(-1) if x.flags.c_contiguous else np.ascontiguousarray(x).reshape(-1)
    if out.flags.c_contiguous:
        dst = out.reshape(-1).view(np.uint32)
        tmp = None
    else:
        tmp = np.empty(x.size, np.float32)
        dst = tmp.view(np.uint32)
    k = _kernels()
    fn = k.rne32_parallel if src.size >= _PARALLEL_MIN else k.rne32_serial
    fn(src, dst, p.s, p.half_m1, int(p.s > 0), p.be_min, p.up_scale, p.down_scale, p.maxbits, p.has_inf)
    if tmp is not None:
        out[...] = tmp.reshape(x.shape)
    return out


def round_array(x: Any, fmt: Union[str, Format], rounding: str = "nearest-even",
                subnormals: str = "keep", overflow: Optional[str] = None,
                seed: Optional[int] = None) -> np.ndarray:
    """General rounding behind `round` (see there); positional form for internal callers."""
    f = format(fmt)
    try:
        mode = _ROUNDING[rounding]
    except (KeyError, TypeError):
        raise HalfsimError(f"unknown rounding {rounding!r} (use nearest-even, toward-zero, up, down "
                           "or stochastic)") from None
    try:
        daz, ftz = _SUBNORMALS[subnormals]
    except (KeyError, TypeError):
        raise HalfsimError(f"unknown subnormals {subnormals!r} (use keep, ftz, daz or ftz+daz)") from None
    try:
        ov = _OVERFLOW[overflow]
    except (KeyError, TypeError):
        raise HalfsimError(f"unknown overflow {overflow!r} (use None, 'inf' or 'saturate')") from None
    a = _as_float(x)
    key = np.uint64(0)
    k = _kernels()
    if mode == 4:
        if seed is None:
            seed = int(np.random.SeedSequence().entropy) & 0xFFFFFFFFFFFFFFFF
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 1 << 64:
            raise HalfsimError(f"seed must be an integer in [0, 2**64), not {seed!r}")
        key = k.seed_key(int(seed))
    p = _params(f)
    if a.dtype == np.float32:
        if mode == 0 and daz == 0 and ftz == 0 and ov != 2:
            return round_into(a, f) if not p.identity else a.copy()
        out = np.empty(a.shape, np.float32)
        _run32(np.ascontiguousarray(a).reshape(-1), out.reshape(-1).view(np.uint32), p, mode, daz, ftz, ov, key)
        return out
    src = np.ascontiguousarray(a).reshape(-1).view(np.int64)
    res = np.empty(src.size, np.int64)
    k.round64_serial(src, res, p.m, p.emin, p.maxbits64, p.has_inf, mode, daz, ftz, ov, key)
    return res.view(np.float64).astype(np.float32).reshape(a.shape)  # exact: results fit float32


def round(x: Any, fmt: Union[str, Format], *, rounding: str = "nearest-even", subnormals: str = "keep",
          overflow: Optional[str] = None, seed: Optional[int] = None) -> np.ndarray:
    """Round x to the format `fmt`; returns a new float32 array of x's shape.

    rounding: "nearest-even" (default), "toward-zero", "up" (toward +inf), "down" (toward -inf),
      "stochastic" (rounds up with probability proportional to the distance; the random number of
      element i is a hash of (seed, i), so results are reproducible and independent of threading;
      seed=None draws a fresh seed).
    subnormals: "keep"; "ftz" flushes results below the format's smallest normal to signed zero
      (after rounding, so a value that rounds up to min_normal survives); "daz" treats inputs
      below the format's smallest normal as zero; "ftz+daz" both.
    overflow: None = IEEE rules: nearest and stochastic go to inf, directed modes give max unless
      they round away from zero; formats without inf (fp8-e4m3) give NaN where IEEE gives inf,
      as ml_dtypes does. "inf": every overflow goes to inf (NaN without inf). "saturate": clamp
      to +-max, infinities included. NaN stays NaN (quiet, signed).
    x: float32, float64 (rounded once from float64, never through float32), float16 or ml_dtypes
      floats. Integer, bool and object arrays raise ValueError.
    """
    return round_array(x, fmt, rounding, subnormals, overflow, seed)


def is_representable(x: Any, fmt: Union[str, Format]) -> np.ndarray:
    """True where x is exactly a value of fmt. NaN counts as representable (every format has a
    NaN); infinities only in formats with infinities."""
    f = format(fmt)
    a = _as_float(x)
    r = round_array(a, f)
    with np.errstate(invalid="ignore"):
        ok = r.astype(a.dtype) == a
    return ok | (np.isnan(a) & np.isnan(r))


# ---------------------------------------------------------------- bit patterns

def _code_dtype(f: Format) -> type:
    return np.uint8 if f.bits <= 8 else np.uint16 if f.bits <= 16 else np.uint32


def _magnitude_codes(r: np.ndarray, f: Format) -> np.ndarray:
    """Encoding without the sign bit (int64) of |r|, r float32 values of f (no NaN)."""
    u = r.view(np.uint32).astype(np.int64) & 0x7FFFFFFF
    m = f.mbits
    be = u >> 23
    normal = (be - 127 + f.bias) << m | ((u & 0x7FFFFF) >> (23 - m))
    # Below min_normal: the integer number of 2**(emin-m) quanta (exact in float64).
    small = np.abs(r) < np.float32(f.min_normal)
    sub = np.ldexp(np.where(small, np.abs(r), 0).astype(np.float64), m - f.emin).astype(np.int64)
    code = np.where(small, sub, normal)
    if f.has_inf:
        code = np.where(u == 0x7F800000, ((1 << f.ebits) - 1) << m, code)
    return code


def encode(x: Any, fmt: Union[str, Format]) -> np.ndarray:
    """Raw bit patterns of x in fmt (x is rounded to nearest-even first; representable values are
    unchanged): uint8 for formats of up to 8 bits, uint16 up to 16, uint32 above, the pattern in
    the low 1+E+M bits. NaN encodes as the quiet NaN with the input's sign (S.1..1.10..0; S.1111.111
    for fp8-e4m3), as ml_dtypes does."""
    f = format(fmt)
    r = round_array(x, f)
    m, e = f.mbits, f.ebits
    nan = np.isnan(r)
    rr = np.where(nan, np.float32(0), r)
    code = _magnitude_codes(rr, f)
    nan_code = ((1 << (e + m)) - 1) if not f.has_inf else (((1 << e) - 1) << m) | (1 << (m - 1))
    code = np.where(nan, nan_code, code)
    code |= (r.view(np.uint32).astype(np.int64) >> 31) << (e + m)
    return code.astype(_code_dtype(f))


def decode(bits: Any, fmt: Union[str, Format]) -> np.ndarray:
    """float32 values of raw bit patterns of fmt (see encode). NaN patterns decode to the quiet
    float32 NaN with their sign."""
    f = format(fmt)
    b = np.asarray(bits)
    if b.dtype.kind not in "ui":
        raise HalfsimError(f"bits must be an integer array, not {b.dtype}")
    b = b.astype(np.int64)
    if b.size and (b.min() < 0 or b.max() >> f.bits):
        raise HalfsimError(f"bit pattern out of range for {f.name} ({f.bits} bits)")
    m, e = f.mbits, f.ebits
    neg = (b >> (e + m)) & 1
    ef = (b >> m) & ((1 << e) - 1)
    mf = b & ((1 << m) - 1)
    top = (1 << e) - 1
    mag = np.where(ef == 0, np.ldexp(mf.astype(np.float64), f.emin - m),
                   np.ldexp((mf | (1 << m)).astype(np.float64), ef - f.bias - m))
    if f.has_inf:
        mag = np.where(ef == top, np.where(mf == 0, np.inf, np.nan), mag)
    else:
        mag = np.where((ef == top) & (mf == (1 << m) - 1), np.nan, mag)
    return np.where(neg == 1, -mag, mag).astype(np.float32)


def ulp_distance(a: Any, b: Any, fmt: Union[str, Format] = "fp32") -> np.ndarray:
    """Distance between a and b counted in representable values of fmt (float64 array).

    Each value maps to a monotone ordinal: the magnitude of its encoding, negated for negative
    values, so +0 and -0 are both 0 and adjacent values are 1 apart. Values between two
    representable neighbours get a fractional ordinal (linear within that ulp), so distances
    between representable values are integers. Infinity is one past max (fp16 max to inf is 1);
    finite values beyond max are placed linearly up to that point. NaN in a or b gives NaN.
    """
    f = format(fmt)
    x, y = np.broadcast_arrays(_as_float(a, "a"), _as_float(b, "b"))
    with np.errstate(invalid="ignore"):
        return np.abs(_ordinal(x, f) - _ordinal(y, f))


def _ordinal(x: np.ndarray, f: Format) -> np.ndarray:
    nan = np.isnan(x)
    ax = np.abs(np.where(nan, 0, x)).astype(np.float64)
    lo = round_array(ax, f, "toward-zero", "keep", "saturate")  # largest value <= |x|, capped at max
    ordv = _magnitude_codes(lo, f).astype(np.float64)
    lo64 = lo.astype(np.float64)
    # The ulp of lo's binade (subnormal quantum below min_normal, max's ulp beyond max).
    ex = np.frexp(lo64)[1] - 1  # exact floor(log2) for lo > 0; 0 goes to the subnormal quantum
    q = np.ldexp(1.0, np.maximum(ex, f.emin) - f.mbits)
    with np.errstate(invalid="ignore"):
        frac = np.minimum((ax - lo64) / q, 1.0)
    frac = np.where(np.isinf(ax), 1.0, frac)
    o = ordv + frac
    o = np.where(np.signbit(x), -o, o)
    return np.where(nan, np.nan, o)
