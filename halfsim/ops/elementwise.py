"""Elementwise ops: arithmetic, math functions, activations, comparisons, logic, Cast.

Half-precision inputs (float16, bfloat16) of non-trivial math are computed in a float32
carrier and cast back once, as ORT's CPU EP does (it wraps them in Cast->fp32->Cast); the
precision plan decides the node's real compute format through ctx.round and its output
rounding. Composite activations (Gelu, Mish, HardSwish, ...) call ctx.round after each
step of their ONNX function body so that a decomposed-precision plan can round there."""
from __future__ import annotations

import math
import re

import numba
import numpy as np
import scipy.special as _sp

from ..errors import ExecutionError, HalfsimError, ModelError
from .registry import op, quiet

try:  # onnx itself depends on ml_dtypes; keep the import soft anyway
    import ml_dtypes as _mld
    _HALF = {np.dtype(np.float16), np.dtype(_mld.bfloat16)}
    _FP8 = {np.dtype(getattr(_mld, n)) for n in ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz")
            if hasattr(_mld, n)}
except ImportError:  # pragma: no cover
    _mld = None
    _HALF = {np.dtype(np.float16)}
    _FP8 = set()

_NARROW = _HALF | _FP8


# -- helpers shared by the reduce / norm / contrib families --------------------------------
def up(x: np.ndarray) -> np.ndarray:
    """float32 carrier for narrow float types; other dtypes unchanged."""
    return x.astype(np.float32) if x.dtype in _NARROW else x


def down(y: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Back to the op's output dtype (no copy when already there); 0-d stays an array."""
    if y.dtype != dtype:
        y = np.asarray(y).astype(dtype)
    return np.asarray(y)


def is_float(x: np.ndarray) -> bool:
    return x.dtype.kind == "f" or x.dtype in _NARROW


_F32 = np.dtype(np.float32)


def _float_unary(fn):
    """Wrap a float32/float64 ufunc-style function: narrow floats go through float32."""
    def impl(ctx, x):
        with quiet():
            return down(fn(up(x)), x.dtype)

    def fp32(ctx, x):
        # fp32 schedules run under quiet_run: a float32 tensor goes straight to fn, which is
        # all that up/down/quiet() amount to there (~1 us of a streaming model's ~2 us step).
        return fn(x) if x.dtype is _F32 else impl(ctx, x)
    impl.specialize = lambda node, consts: fp32
    return impl


def _check_int_div(b: np.ndarray, what: str) -> None:
    if b.dtype.kind in "iu" and not np.all(b):
        raise ExecutionError(f"{what}: integer division by zero")


# numpy's clip ufunc is max(x, lo) then min(., hi) in one pass, with NaN propagated and
# lo > hi giving hi, like ORT; unlike np.maximum (whose scalar-operand loop is not SIMD in
# numpy 2.x: measured 3-4x slower) it also keeps -0.0 as ORT does. Float32/64 only: the
# half-precision loops are slow either way and their -0.0 behaviour is left as it was.
_F32_64 = (np.dtype(np.float32), np.dtype(np.float64))
try:
    from numpy._core.umath import clip as clip_ufunc
except ImportError:  # pragma: no cover  (numpy 1.x)
    from numpy.core.umath import clip as clip_ufunc


# -- fast float32 kernels -------------------------------------------------------------------
_f = np.float32


@numba.njit(cache=True, fastmath={"contract"})
def _erf32_kernel(x, out):  # pragma: no cover  (compiled)
    # erff with max error < 1 ulp (checked against float64 erf on a dense grid); scipy's scalar
    # cephes loop is 4x slower on the large activations of transformer models.
    for i in range(x.size):
        a = x[i]
        t = abs(a)
        s = a * a
        if t > _f(0.927734375):
            r = _f(-1.72853470e-5) * t + _f(3.83197126e-4)
            u = _f(-3.88396438e-3) * t + _f(2.42546219e-2)
            r = r * s + u
            r = r * t + _f(-1.06777877e-1)
            r = r * t + _f(-6.34846687e-1)
            r = r * t + _f(-1.28717512e-1)
            r = r * t - t
            r = _f(1.0) - math.exp(r)
            out[i] = r if a >= 0 else -r
        else:
            r = _f(-5.96761703e-4)
            r = r * s + _f(4.99119423e-3)
            r = r * s + _f(-2.67681349e-2)
            r = r * s + _f(1.12819925e-1)
            r = r * s + _f(-3.76125336e-1)
            r = r * s + _f(1.28379166e-1)
            out[i] = r * a + a


def erf(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.float32 and x.size >= 4096:
        xc = np.ascontiguousarray(x)
        out = np.empty_like(xc)
        _erf32_kernel(xc.reshape(-1), out.reshape(-1))
        return out
    return _sp.erf(x)


# From this many float32 elements on, Sigmoid runs ORT's own MLAS form (bit-exact with ORT,
# one vectorized pass instead of numpy's four: 1.8x less CPU, split across threads). Smaller
# tensors stay in numpy so that small streaming models never start numba (~70 MB resident);
# both agree to a few ulps. Tanh stays np.tanh (SIMD already, only 1.3x slower than MLAS):
# magika's two large Tanh would otherwise be its only numba use and double its memory.
_MLAS_MIN = 16384


def sigmoid(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.float32 and x.size >= _MLAS_MIN:
        from ..kernels.mlas import logistic
        return logistic(x)
    if x.dtype == np.float32:
        # 1 / (1 + exp(-x)) in place on one fresh array: exp overflow gives 1/inf = 0, no NaN
        y = np.negative(x)
        if type(y) is not np.ndarray:  # a 0-d input gives a scalar
            y = np.asarray(y)
        np.exp(y, out=y)
        y += _f(1)
        return np.reciprocal(y, out=y)
    return _sp.expit(x)


# -- binary arithmetic ----------------------------------------------------------------------
@op("Add", since=7)
def add(ctx, a, b):
    with quiet():
        return np.add(a, b)


@op("Sub", since=7)
def sub(ctx, a, b):
    with quiet():
        return np.subtract(a, b)


@op("Mul", since=7)
def mul(ctx, a, b):
    with quiet():
        return np.multiply(a, b)


# What these ops are under quiet_run, for the fp32 schedules to call without the op's frame.
add.direct, sub.direct, mul.direct = np.add, np.subtract, np.multiply


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # C++ integer division truncates toward zero; numpy floor-divides.
    with quiet():
        q = np.floor_divide(a, b)
        if a.dtype.kind == "i":
            fix = (np.remainder(a, b) != 0) & ((a < 0) != (b < 0))
            q = np.add(q, fix.astype(q.dtype), out=q if q.ndim else None)
    return np.asarray(q, dtype=a.dtype)


@op("Div", since=7)
def div(ctx, a, b):
    if a.dtype.kind in "iu":
        _check_int_div(b, "Div")
        return _int_div(a, b)
    with quiet():
        return np.divide(a, b)


@op("Mod", since=10)
def mod(ctx, a, b, *, fmod=0):
    if a.dtype.kind in "iu":
        _check_int_div(b, "Mod")
        with quiet():
            return np.fmod(a, b) if fmod else np.mod(a, b)
    with quiet():
        # fmod=0 is only defined for integers before opset 28; Python-style mod for floats
        return down(np.fmod(up(a), up(b)) if fmod else np.mod(up(a), up(b)), a.dtype)


@op("Pow", since=7)
def pow_(ctx, x, y):
    with quiet():
        if is_float(x):
            xf = up(x)
            if y.size == 1 and y.reshape(-1)[0] == 0.5:
                # numpy's pow takes sqrt for a scalar 0.5; C's pow (ORT) gives +0 for -0 and +inf
                # for -inf: sqrt of x + 0 (-0 + 0 = +0), then -inf patched when the minimum says so
                r = np.sqrt(np.add(xf, xf.dtype.type(0)))
                if xf.size and not xf.min() > -np.inf:  # NaN min: look too
                    r[np.isneginf(xf)] = np.inf
                return down(r, x.dtype)
            return down(np.power(xf, y.astype(xf.dtype, copy=False)), x.dtype)
        # Integer base: C++ std::pow in double, then a truncating conversion.
        r = np.power(x.astype(np.float64), y.astype(np.float64))
        return _float_to_int(r, x.dtype)


# -- unary math -----------------------------------------------------------------------------
@op("Neg", since=6)
def neg(ctx, x):
    return np.negative(x)


@op("Abs", since=6)
def abs_(ctx, x):
    return np.abs(x)


@op("Sign", since=9)
def sign(ctx, x):
    return np.sign(x)


@op("Reciprocal", since=6)
def reciprocal(ctx, x):
    with quiet():
        return down(np.reciprocal(up(x)), x.dtype)


@op("Ceil", since=6)
def ceil(ctx, x):
    return np.ceil(x)


@op("Floor", since=6)
def floor(ctx, x):
    return np.floor(x)


@op("Round", since=11)
def round_(ctx, x):
    return np.round(x)  # half to even, as ONNX specifies


for _name, _since, _fn in [
    ("Sqrt", 6, np.sqrt), ("Exp", 6, np.exp), ("Log", 6, np.log), ("Sin", 7, np.sin), ("Cos", 7, np.cos),
    ("Tan", 7, np.tan), ("Asin", 7, np.arcsin), ("Acos", 7, np.arccos), ("Atan", 7, np.arctan),
    ("Sinh", 9, np.sinh), ("Cosh", 9, np.cosh), ("Asinh", 9, np.arcsinh), ("Acosh", 9, np.arccosh),
    ("Atanh", 9, np.arctanh), ("Erf", 9, erf), ("Tanh", 6, np.tanh), ("Sigmoid", 6, sigmoid),
]:
    op(_name, since=_since)(_float_unary(_fn))


@op("IsNaN", since=9)
def isnan(ctx, x):
    return np.isnan(up(x))


@op("IsInf", since=10)
def isinf(ctx, x, *, detect_negative=1, detect_positive=1):
    x = up(x)
    if detect_negative and detect_positive:
        return np.isinf(x)
    if detect_positive:
        return np.isposinf(x)
    if detect_negative:
        return np.isneginf(x)
    return np.zeros(x.shape, dtype=bool)


# -- activations ----------------------------------------------------------------------------
@op("Relu", since=6)
def relu(ctx, x):
    if x.dtype in _F32_64:
        return clip_ufunc(x, x.dtype.type(0), x.dtype.type(np.inf))
    return np.maximum(x, np.zeros((), x.dtype))


@op("LeakyRelu", since=6)
def leaky_relu(ctx, x, *, alpha=0.01):
    xf = up(x)
    a = xf.dtype.type(alpha)
    with quiet():
        if 0 <= alpha <= 1:  # branch-free: np.where is slow on unpredictable masks
            return down(np.maximum(xf, xf * a), x.dtype)
        return down(np.where(xf < 0, xf * a, xf), x.dtype)


@op("PRelu", since=7)
def prelu(ctx, x, slope):
    xf = up(x)
    sl = up(slope)
    with quiet():
        if is_float(x) and np.isfinite(sl).all():  # branch-free form (np.where is slow)
            y = np.minimum(xf, xf.dtype.type(0)) * sl
            y += np.maximum(xf, xf.dtype.type(0))
            return down(y, x.dtype)
        return down(np.where(xf < 0, xf * sl, xf), x.dtype)


@op("ThresholdedRelu", since=10)
def thresholded_relu(ctx, x, *, alpha=1.0):
    xf = up(x)
    return down(np.where(xf > xf.dtype.type(alpha), xf, xf.dtype.type(0)), x.dtype)


@op("Elu", since=6)
def elu(ctx, x, *, alpha=1.0):
    xf = up(x)
    with quiet():
        neg = ctx.round(np.expm1(xf)) * xf.dtype.type(alpha)
        return down(np.where(xf < 0, ctx.round(neg), xf), x.dtype)


@op("Selu", since=6)
def selu(ctx, x, *, alpha=1.6732632423543772848170429916717, gamma=1.0507009873554804934193349852946):
    xf = up(x)
    t = xf.dtype.type
    with quiet():
        neg = ctx.round(ctx.round(np.expm1(xf)) * t(alpha))
        return down(ctx.round(np.where(xf <= 0, neg, xf)) * t(gamma), x.dtype)


@op("Celu", since=12)
def celu(ctx, x, *, alpha=1.0):
    xf = up(x)
    t = xf.dtype.type
    with quiet():
        neg = ctx.round(ctx.round(np.expm1(ctx.round(xf / t(alpha)))) * t(alpha))
        return down(np.where(xf < 0, neg, xf), x.dtype)


@op("HardSigmoid", since=6)
def hard_sigmoid(ctx, x, *, alpha=0.2, beta=0.5):
    xf = up(x)
    t = xf.dtype.type
    y = ctx.round(ctx.round(xf * t(alpha)) + t(beta))
    return down(np.clip(y, t(0), t(1)), x.dtype)


@op("HardSwish", since=14)
def hard_swish(ctx, x):
    xf = up(x)
    t = xf.dtype.type
    with quiet():
        hs = np.clip(ctx.round(ctx.round(xf * t(1 / 6)) + t(0.5)), t(0), t(1))
        return down(xf * hs, x.dtype)


@op("Softplus", since=1)
def softplus(ctx, x):
    # log(1 + exp(x)) without overflow: logaddexp(x, 0)
    xf = up(x)
    with quiet():
        return down(np.logaddexp(xf, xf.dtype.type(0)), x.dtype)


@op("Softsign", since=1)
def softsign(ctx, x):
    xf = up(x)
    with quiet():
        return down(xf / ctx.round(np.abs(xf) + xf.dtype.type(1)), x.dtype)


@op("Mish", since=18)
def mish(ctx, x):
    xf = up(x)
    with quiet():
        sp = ctx.round(np.logaddexp(xf, xf.dtype.type(0)))
        return down(xf * ctx.round(np.tanh(sp)), x.dtype)


_SQRT1_2 = 1 / math.sqrt(2)
_SQRT2_PI = math.sqrt(2 / math.pi)


def gelu_erf(ctx, xf: np.ndarray) -> np.ndarray:
    t = xf.dtype.type
    if ctx.prec is None:  # identity plan: nothing to round, so work in place on one array
        y = erf(xf * t(_SQRT1_2))
        y += t(1)
        y *= t(0.5)  # before the product with x: 0.5 * x * 2 must not overflow
        y *= xf
        return y
    e = ctx.round(erf(ctx.round(xf * t(_SQRT1_2))))
    return ctx.round(xf * t(0.5)) * ctx.round(e + t(1))


def gelu_tanh(ctx, xf: np.ndarray) -> np.ndarray:
    t = xf.dtype.type
    if ctx.prec is None:  # identity plan: in place on one array
        y = xf * xf
        y *= t(0.044715)
        y *= xf
        y += xf
        y *= t(_SQRT2_PI)
        np.tanh(y, out=y)
        y += t(1)
        y *= t(0.5)  # before the product with x: 0.5 * x * 2 must not overflow
        y *= xf
        return y
    cube = ctx.round(ctx.round(xf * xf) * xf)
    inner = ctx.round(ctx.round(xf + ctx.round(cube * t(0.044715))) * t(_SQRT2_PI))
    return ctx.round(xf * t(0.5)) * ctx.round(np.tanh(inner) + t(1))


@op("Gelu", since=20)
def gelu(ctx, x, *, approximate="none"):
    if approximate not in ("none", "tanh"):
        raise ModelError(f"Gelu: unknown approximate={approximate!r} (expected 'none' or 'tanh')")
    xf = up(x)
    with quiet():
        return down((gelu_tanh if approximate == "tanh" else gelu_erf)(ctx, xf), x.dtype)


@op("Shrink", since=9)
def shrink(ctx, x, *, bias=0.0, lambd=0.5):
    xf = up(x) if is_float(x) else x.astype(np.float64)
    t = xf.dtype.type
    y = np.where(xf < -t(lambd), xf + t(bias), np.where(xf > t(lambd), xf - t(bias), t(0)))
    return down(y, x.dtype) if is_float(x) else _float_to_int(y, x.dtype)


# -- Clip and variadic ----------------------------------------------------------------------
def _nan_bound(b, fill):
    """ORT ignores a NaN Clip bound (its max/min keep x on an unordered pair): +-inf instead."""
    return np.asarray(fill, b.dtype) if is_float(b) and b.size == 1 and np.isnan(b) else b


@op("Clip", since=6)
def clip6(ctx, x, *, min=-3.4028234663852886e38, max=3.4028234663852886e38):
    xf = up(x)
    t = xf.dtype.type
    min, max = (-np.inf if np.isnan(min) else min), (np.inf if np.isnan(max) else max)
    if xf.dtype in _F32_64:
        return down(clip_ufunc(xf, t(min), t(max)), x.dtype)
    return down(np.minimum(np.maximum(xf, t(min)), t(max)), x.dtype)


@op("Clip", since=11)
def clip11(ctx, x, lo=None, hi=None):
    # max(x, lo) then min(., hi): NaN propagates and lo > hi yields hi. A missing bound is the
    # type's lowest/highest finite value, so ORT clips infinities even then.
    if lo is None or hi is None:
        info = np.finfo(x.dtype) if is_float(x) else np.iinfo(x.dtype)
    lo = np.asarray(info.min, dtype=x.dtype) if lo is None else (lo.reshape(()) if lo.size == 1 else lo)
    hi = np.asarray(info.max, dtype=x.dtype) if hi is None else (hi.reshape(()) if hi.size == 1 else hi)
    lo, hi = _nan_bound(lo, -np.inf), _nan_bound(hi, np.inf)
    if x.dtype in _F32_64:
        return clip_ufunc(x, lo, hi)
    y = np.maximum(x, lo)
    return np.minimum(y, hi, out=y if y.shape == np.broadcast_shapes(y.shape, np.shape(hi)) else None)


def clip_bounds(node, const, dtype) -> tuple | None:
    """A Clip node's (lo, hi) as 0-d arrays of `dtype`, for fusers that apply it in place: from
    its attributes (opset < 11) or its optional bound inputs, looked up by `const(name)`
    (missing: the dtype's lowest/highest finite value, as clip11). None when a bound input is
    not a one-element constant of that dtype."""
    dtype = np.dtype(dtype)
    if node.opset < 11:
        return (_nan_bound(np.asarray(node.attrs.get("min", -3.4028234663852886e38), dtype), -np.inf),
                _nan_bound(np.asarray(node.attrs.get("max", 3.4028234663852886e38), dtype), np.inf))
    bounds = []
    for k, default in ((1, np.finfo(dtype).min), (2, np.finfo(dtype).max)):
        name = node.inputs[k] if len(node.inputs) > k else ""
        if not name:
            bounds.append(np.asarray(default, dtype))
            continue
        v = const(name)
        if not isinstance(v, np.ndarray) or v.size != 1 or v.dtype != dtype:
            return None
        bounds.append(_nan_bound(v.reshape(()), np.inf if k == 2 else -np.inf))
    return tuple(bounds)


def _fold(fn, xs):
    if not xs:
        raise ModelError("variadic op needs at least one input")
    r = xs[0]
    for v in xs[1:]:
        r = fn(r, v)
    return r


@op("Max", since=8)
def max_(ctx, *xs):
    r = _fold(np.maximum, xs)
    return r.copy() if r is xs[0] else r


@op("Min", since=8)
def min_(ctx, *xs):
    r = _fold(np.minimum, xs)
    return r.copy() if r is xs[0] else r


@op("Sum", since=8)
def sum_(ctx, *xs):
    if is_float(xs[0]):
        r = _fold(lambda a, b: ctx.round(np.add(a, b)), [up(v) for v in xs])
    else:
        r = _fold(np.add, xs)
    return down(r.copy() if r is xs[0] else r, xs[0].dtype)


@op("Mean", since=8)
def mean_(ctx, *xs):
    r = _fold(lambda a, b: ctx.round(np.add(a, b)), [up(v) for v in xs])
    return down(r / r.dtype.type(len(xs)), xs[0].dtype)


# -- logic, bits, comparisons ---------------------------------------------------------------
@op("BitShift", since=11)
def bitshift(ctx, x, y, *, direction):
    if direction == "LEFT":
        return np.left_shift(x, y)
    if direction == "RIGHT":
        return np.right_shift(x, y)
    raise ModelError(f"BitShift: direction must be LEFT or RIGHT, got {direction!r}")


op("BitwiseAnd", since=18)(lambda ctx, a, b: np.bitwise_and(a, b))
op("BitwiseOr", since=18)(lambda ctx, a, b: np.bitwise_or(a, b))
op("BitwiseXor", since=18)(lambda ctx, a, b: np.bitwise_xor(a, b))
op("BitwiseNot", since=18)(lambda ctx, x: np.invert(x))
op("And", since=7)(lambda ctx, a, b: np.logical_and(a, b))
op("Or", since=7)(lambda ctx, a, b: np.logical_or(a, b))
op("Xor", since=7)(lambda ctx, a, b: np.logical_xor(a, b))
op("Not", since=1)(lambda ctx, x: np.logical_not(x))


def _cmp(fn):
    def impl(ctx, a, b):
        return np.asarray(fn(a, b), dtype=bool)
    return impl


for _name, _since, _fn in [("Equal", 7, np.equal), ("Less", 7, np.less), ("Greater", 7, np.greater),
                           ("LessOrEqual", 12, np.less_equal), ("GreaterOrEqual", 12, np.greater_equal)]:
    op(_name, since=_since)(_cmp(_fn))


@op("Where", since=9)
def where(ctx, cond, x, y):
    return np.where(cond, x, y)


# -- Dropout (inference) --------------------------------------------------------------------
@op("Dropout", since=7)
def dropout7(ctx, x, *, ratio=0.5):
    # ORT's inference kernel for opsets 7-11 writes an all-zero mask (from 12 on: all True)
    return x.copy(), np.zeros(x.shape, dtype=x.dtype)


@op("Dropout", since=10)
def dropout10(ctx, x, *, ratio=0.5):
    return x.copy(), np.zeros(x.shape, dtype=bool)


@op("Dropout", since=12)
def dropout12(ctx, x, ratio=None, training_mode=None, *, seed=None):
    if training_mode is not None and bool(np.asarray(training_mode).reshape(-1)[0]):
        r = 0.5 if ratio is None else float(np.asarray(ratio).reshape(-1)[0])
        if r != 0:
            raise ModelError("Dropout with training_mode=True is not supported (halfsim runs inference)")
    return x.copy(), np.ones(x.shape, dtype=bool)


# -- Cast -----------------------------------------------------------------------------------
_I32_MIN = np.int64(-2 ** 31)
_I64_MIN = np.iinfo(np.int64).min


def _cvt32(xf: np.ndarray) -> np.ndarray:
    """x86 cvttsd2si to int32 (returned as int64): NaN and out-of-range give INT32_MIN."""
    ok = (xf > -2147483649.0) & (xf < 2147483648.0)
    r = np.where(ok, xf, 0.0).astype(np.int64)
    r[~ok] = _I32_MIN
    return r


def _cvt64(xf: np.ndarray) -> np.ndarray:
    """x86 cvttsd2si to int64: NaN and out-of-range give INT64_MIN."""
    ok = (xf >= -9.223372036854775808e18) & (xf < 9.223372036854775808e18)
    r = np.where(ok, xf, 0.0).astype(np.int64)
    r[~ok] = _I64_MIN
    return r


def _float_to_int(x: np.ndarray, dt: np.dtype) -> np.ndarray:
    """Float -> integer conversion as ORT's x86 build does it: truncate toward zero;
    narrow targets wrap the int32 conversion; NaN/overflow follow the cvtt instructions.
    (C++ leaves the out-of-range cases undefined; these are what ORT's binary produces.)"""
    dt = np.dtype(dt)
    src = x.dtype
    if x.size and (dt.itemsize <= 4 or dt.kind == "i"):
        lo, hi = np.min(x), np.max(x)  # NaN makes both NaN and fails the test below
        if -2147483648.0 < lo and hi < 2147483647.0 and (dt.kind == "i" or lo > -1.0):
            # every value in range: plain truncation, then the wrap of an int32/int64 conversion
            return x.astype(np.int64 if dt.itemsize > 4 else np.int32).astype(dt, copy=False)
    xf = np.asarray(x, dtype=np.float64)
    bits = dt.itemsize * 8
    with quiet():
        if dt == np.int64:
            r = _cvt64(xf)
        elif dt == np.uint64:
            hi = xf >= 9.223372036854775808e18
            r = np.where(hi, _cvt64(xf - 9.223372036854775808e18) ^ _I64_MIN, _cvt64(xf)).view(np.uint64)
        elif dt == np.uint32 and src == np.float64:
            r = _cvt64(xf)
            r = np.where(np.isnan(xf) | (xf == -np.inf), 2 ** 31, np.where(xf == np.inf, 0, r))
        elif dt == np.uint32:
            hi = xf >= 2147483648.0
            r = np.where(hi, _cvt32(xf - 2147483648.0) ^ _I32_MIN, _cvt32(xf))
        elif bits <= 32:
            r = _cvt32(xf)
        else:  # pragma: no cover
            raise ModelError(f"cannot cast to {dt}")
        return np.asarray(r.astype(dt))


_FLOAT_RE = re.compile(r"\s*[+-]?(?:inf(?:inity)?|nan|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)", re.I)
_INT_RE = re.compile(r"\s*[+-]?\d+")


def _parse_float(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        pass
    t = s.strip()
    if t.lower().lstrip("+-").startswith("0x"):
        try:
            return float.fromhex(t)
        except ValueError:
            pass
    m = _FLOAT_RE.match(s)  # strtod: the longest numeric prefix
    if not m:
        raise ExecutionError(f"Cast: string {s!r} is not a number")
    return float(m.group(0))


def _parse_int(s: str) -> int:
    m = _INT_RE.match(s)
    if not m:
        raise ExecutionError(f"Cast: string {s!r} is not an integer")
    return int(m.group(0))


def _fmt_float(v: float) -> str:
    if v != v:
        return "NaN"
    if math.isinf(v):
        return "INF" if v > 0 else "-INF"
    return "%.8g" % v


def _to_string(x: np.ndarray) -> np.ndarray:
    flat = x.reshape(-1)
    if x.dtype == np.bool_:
        out = ["1" if v else "0" for v in flat]
    elif x.dtype.kind in "iu":
        out = [str(int(v)) for v in flat]
    elif x.dtype.kind in "OUS":
        out = [v.decode() if isinstance(v, bytes) else str(v) for v in flat]
    else:
        out = [_fmt_float(float(v)) for v in flat.astype(np.float64)]
    return np.array(out, dtype=object).reshape(x.shape)


def _from_string(x: np.ndarray, dt: np.dtype) -> np.ndarray:
    flat = [v.decode() if isinstance(v, bytes) else str(v) for v in x.reshape(-1)]
    if dt.kind == "f" or dt in _NARROW:
        r = np.array([_parse_float(s) for s in flat], dtype=np.float64)
        return cast_array(r.astype(np.float32) if dt != np.float64 else r, dt).reshape(x.shape)
    if dt == np.bool_:
        return np.array([_parse_int(s) != 0 for s in flat], dtype=bool).reshape(x.shape)
    vals = [_parse_int(s) for s in flat]
    bits = dt.itemsize * 8
    # stoll/stoull then a wrapping conversion to the target width
    r = np.array([v & ((1 << 64) - 1) for v in vals], dtype=np.uint64)
    if dt.kind == "i":
        r = r.view(np.int64)
    return r.astype(dt).reshape(x.shape) if bits <= 64 else r


def _fp8_max(dt: np.dtype) -> float:
    return float(_mld.finfo(dt).max)


def cast_array(x: np.ndarray, dt, saturate: int = 1) -> np.ndarray:
    """ONNX Cast of `x` to numpy dtype `dt` with ORT's CPU semantics."""
    dt = np.dtype(dt)
    src = x.dtype
    if src.kind in "OUS":
        return _from_string(x, dt)
    if dt.kind == "O":
        return _to_string(x)
    if dt == src:
        return x.copy()
    if dt == np.bool_:
        return np.not_equal(x, 0) if src != np.bool_ else x.copy()
    if dt in _FP8:
        xf = x.astype(np.float32) if src != np.float64 else x
        if saturate:  # inf and out-of-range finite values clamp to the largest finite value
            m = _fp8_max(dt)
            xf = np.clip(xf, -m, m)
        return xf.astype(dt)
    if dt.kind in "iu" and (src.kind == "f" or src in _NARROW):
        return _float_to_int(x.astype(np.float32) if src in _NARROW else x, dt)
    if src in _NARROW and dt in _NARROW:
        return x.astype(np.float32).astype(dt)
    with quiet():
        return x.astype(dt)


def _onnx_np_dtype(to: int) -> np.dtype:
    from ..graph import np_dtype
    return np_dtype(to)


@op("Cast", since=6)
def cast(ctx, x, *, to):
    return cast_array(x, _onnx_np_dtype(to))


@op("Cast", since=19)
def cast19(ctx, x, *, to, saturate=1):
    return cast_array(x, _onnx_np_dtype(to), saturate)


def _specialize_cast(node, consts):
    """The target dtype looked up once (the lookup cost as much as a small tensor's cast)."""
    try:
        dt = _onnx_np_dtype(node.attrs["to"])
    except Exception:  # missing or unknown: the op reports it when it runs
        return None
    saturate = node.attrs.get("saturate", 1)

    def fn(ctx, x, **attrs):
        return cast_array(x, dt, saturate)
    return fn


cast.specialize = cast19.specialize = _specialize_cast


@op("CastLike", since=15)
def castlike(ctx, x, target):
    return cast_array(x, target.dtype)


@op("CastLike", since=19)
def castlike19(ctx, x, target, *, saturate=1):
    return cast_array(x, target.dtype, saturate)


__all__ = ["up", "down", "is_float", "cast_array", "gelu_erf", "gelu_tanh", "HalfsimError"]
