"""ONNX Runtime's CPU sigmoid and tanh (MLAS), bit for bit, vectorized.

    from halfsim.kernels.mlas import logistic, tanh, logistic_f32, tanh_f32

ORT's CPU Sigmoid and Tanh ops, and the gates of its LSTM/GRU kernels, do not call libm: MLAS
evaluates Eigen's odd rational approximations on the clamped input in float32, with fused
multiply-adds for the Horner steps (x86 FMA3 kernels). The formula, in float32, one rounding
per operation:

    sigmoid: v = clamp(x, -18, 18); s = v*v; p = v * horner_fma(s, alpha); q = horner_fma(s, beta)
             y = max(0, p / q + 0.5)
    tanh:    v = clamp(x, -9, 9);   s = v*v; p = v * horner_fma(s, alpha); q = horner_fma(s, beta)
             y = p / q

The clamps are x86 max/min with the constant first, so a NaN input passes through as NaN.
Results can differ from libm by a few ulps (e.g. sigmoid(-17) is not the exact 4.1e-8), which
is why emulating ORT needs this rather than numpy.

logistic / tanh work on whole float32 arrays (loops LLVM vectorizes 8 lanes wide on AVX2, with
the fma as the llvm.fma intrinsic: one instruction on FMA hosts, a correctly rounded libm call
elsewhere), split across the kernel threads when large. logistic_f32 / tanh_f32 are the
scalar forms, callable from other @njit kernels (fused recurrent steps)."""
from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

from .conv import run_split


@intrinsic
def _fma(typingctx, a, b, c):
    """float32 fused multiply-add a*b + c with one rounding (llvm.fma.f32)."""
    if not (a == types.float32 and b == types.float32 and c == types.float32):
        return None

    def codegen(context, builder, signature, args):
        return builder.fma(args[0], args[1], args[2])

    return types.float32(types.float32, types.float32, types.float32), codegen


# MLAS's constants (MlasLogisticConstants, MlasTanhConstants), rounded to float32 as MLAS stores
# them: clamp bounds, numerator and denominator coefficients from the highest power down.
_f = np.float32
_LOG_LO, _LOG_HI = _f(-18.0), _f(18.0)
_LOG_P = (_f(4.37031012579801e-11), _f(1.15627324459942e-07), _f(6.08574864600143e-05),
          _f(8.51377133304701e-03), _f(2.48287947061529e-01))
_LOG_Q = (_f(6.10247389755681e-13), _f(5.76102136993427e-09), _f(6.29106785017040e-06),
          _f(1.70198817374094e-03), _f(1.16817656904453e-01), _f(9.93151921023180e-01))
_TANH_LO, _TANH_HI = _f(-9.0), _f(9.0)
_TANH_P = (_f(-2.76076847742355e-16), _f(2.00018790482477e-13), _f(-8.60467152213735e-11),
           _f(5.12229709037114e-08), _f(1.48572235717979e-05), _f(6.37261928875436e-04),
           _f(4.89352455891786e-03))
_TANH_Q = (_f(1.19825839466702e-06), _f(1.18534705686654e-04), _f(2.26843463243900e-03),
           _f(4.89352518554385e-03))
_ZERO, _HALF = _f(0.0), _f(0.5)


@njit(inline="always")
def _clamp(x, lo, hi):
    # x86 maxps(lo, x) then minps(hi, v): the second operand wins ties and NaNs, so NaN stays NaN.
    v = lo if lo > x else x
    return hi if hi < v else v


@njit(inline="always")
def _odd_ratio(v, p, q):
    """v * P(v*v) / Q(v*v), each polynomial by fused Horner steps (MLAS's order)."""
    s = v * v
    num = p[0]
    for j in range(1, len(p)):
        num = _fma(s, num, p[j])
    den = q[0]
    for j in range(1, len(q)):
        den = _fma(s, den, q[j])
    return (v * num) / den


@njit(cache=True, inline="always", error_model="numpy")
def logistic_f32(x):
    """MLAS sigmoid of one float32 (numba-callable)."""
    y = _odd_ratio(_clamp(np.float32(x), _LOG_LO, _LOG_HI), _LOG_P, _LOG_Q) + _HALF
    return _ZERO if _ZERO > y else y


@njit(cache=True, inline="always", error_model="numpy")
def tanh_f32(x):
    """MLAS tanh of one float32 (numba-callable)."""
    return _odd_ratio(_clamp(np.float32(x), _TANH_LO, _TANH_HI), _TANH_P, _TANH_Q)


@njit(cache=True, nogil=True, error_model="numpy")
def _logistic_range(x, out, lo, hi):
    # Zero-based loop over slices: LLVM vectorizes it (a loop from lo measured 4x slower).
    xs, os_ = x[lo:hi], out[lo:hi]
    for i in range(xs.size):
        os_[i] = logistic_f32(xs[i])


@njit(cache=True, nogil=True, error_model="numpy")
def _tanh_range(x, out, lo, hi):
    xs, os_ = x[lo:hi], out[lo:hi]
    for i in range(xs.size):
        os_[i] = tanh_f32(xs[i])


def _apply(loop, x: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if out is None:
        out = np.empty_like(x)
    elif out.shape != x.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError("out must be a C-contiguous float32 array of the input's shape")
    n = x.size
    # ~0.6 ns per element serially: split across the kernel threads from 256k elements
    # (~0.15 ms) on, where waking a helper costs much less than the work it takes.
    run_split(loop, (x.reshape(-1), out.reshape(-1)), n, n, min_work=1 << 18)
    return out


def logistic(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """ORT CPU Sigmoid of a float32 array, bit-exact (out may be x itself for in place)."""
    return _apply(_logistic_range, x, out)


def tanh(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """ORT CPU Tanh of a float32 array, bit-exact (out may be x itself for in place)."""
    return _apply(_tanh_range, x, out)
