"""QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear: per-tensor, per-axis and blocked
(opset 21) forms; integer (u)int4/8/16/int32 and float8 quantized types.

Arithmetic follows ORT's MLAS kernels: quantize = saturate(round_half_even(x / scale) + zp)
with the division in float32; dequantize = float(x - zp) * scale."""
from __future__ import annotations

import ml_dtypes
import numpy as np
from numba import njit

from ..errors import ExecutionError, ModelError
from ..graph import np_dtype
from .registry import op

_FLOAT8 = {np.dtype(t) for t in (ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e4m3fnuz,
                                  ml_dtypes.float8_e5m2, ml_dtypes.float8_e5m2fnuz)}
_E5M2 = np.dtype(ml_dtypes.float8_e5m2)
_INT4 = {np.dtype(ml_dtypes.int4), np.dtype(ml_dtypes.uint4)}


def _int_range(dt: np.dtype) -> tuple[int, int]:
    info = ml_dtypes.iinfo(dt) if dt in _INT4 else np.iinfo(dt)
    return int(info.min), int(info.max)


def _is_int(dt: np.dtype) -> bool:
    return dt in _INT4 or dt.kind in "iu"


def _param_shape(p: np.ndarray, x: np.ndarray, axis: int, block_size: int, what: str) -> np.ndarray:
    """Broadcastable form of a scale / zero point: scalar, per-axis 1-D, or blocked N-D."""
    if p.ndim == 0 or (p.size == 1 and block_size == 0 and p.ndim <= 1):
        return p.reshape(())
    ax = axis + x.ndim if axis < 0 else axis
    if not 0 <= ax < x.ndim:
        raise ExecutionError(f"{what}: axis {axis} is out of range for rank {x.ndim}")
    if block_size > 0:
        if p.ndim != x.ndim:
            raise ExecutionError(f"{what}: blocked scale must have rank {x.ndim}, got {list(p.shape)}")
        if p.shape[ax] != -(-x.shape[ax] // block_size):
            raise ExecutionError(f"{what}: scale shape {list(p.shape)} does not fit block_size {block_size} on {list(x.shape)}")
        return np.repeat(p, block_size, axis=ax)[tuple(slice(0, n) for n in x.shape)]
    if p.ndim != 1 or p.shape[0] != x.shape[ax]:
        raise ExecutionError(f"{what}: scale of shape {list(p.shape)} does not fit axis {axis} of {list(x.shape)}")
    shape = [1] * x.ndim
    shape[ax] = p.shape[0]
    return p.reshape(shape)


def quantize(x: np.ndarray, scale, zp, qdtype, saturate: int = 1) -> np.ndarray:
    """saturate(round_half_even(x / scale) + zp) in qdtype; `scale`/`zp` already broadcastable."""
    qdtype = np.dtype(qdtype)
    v = x.astype(np.float32) / np.asarray(scale).astype(np.float32)
    if qdtype in _FLOAT8:
        if zp is not None:
            v = v + np.asarray(zp).astype(np.float32)
        if saturate:
            # Clamp to the largest finite value, infinities included (as ORT does for all
            # four formats; the spec table maps inf to NaN for the fnuz ones). NaN stays NaN.
            mx = np.float32(ml_dtypes.finfo(qdtype).max)
            v = np.clip(v, -mx, mx)
        return v.astype(qdtype)
    lo, hi = _int_range(qdtype)
    z = np.float32(0) if zp is None else np.asarray(zp).astype(np.float32)
    if qdtype == np.int32:  # float32 cannot hold int32's max: clamp in float64 before the cast
        v = np.rint(x.astype(np.float64) / np.asarray(scale).astype(np.float32)) + z
    else:
        v = np.rint(v) + z
        lo, hi = np.float32(lo), np.float32(hi)
    # fmax: a NaN quotient becomes the lowest code, as MLAS's maxps clamp makes it (numpy's cast
    # of NaN warns and is platform-defined).
    return np.minimum(np.fmax(v, lo), hi).astype(qdtype)


def _out_dtype(zp, output_dtype: int) -> np.dtype:
    if zp is not None:
        if output_dtype and np_dtype(output_dtype) != zp.dtype:
            raise ModelError("QuantizeLinear: output_dtype differs from the zero point's type")
        return zp.dtype
    return np_dtype(output_dtype) if output_dtype else np.dtype(np.uint8)


def _quantize_linear(x, y_scale, y_zero_point, axis, saturate, block_size, output_dtype):
    if x.dtype.kind != "f" and x.dtype.name != "bfloat16" and x.dtype != np.int32:
        raise ExecutionError(f"QuantizeLinear: unsupported input type {x.dtype}")
    qdt = _out_dtype(y_zero_point, output_dtype)
    if not (_is_int(qdt) or qdt in _FLOAT8):
        raise ModelError(f"QuantizeLinear: unsupported quantized type {qdt}")
    s = _param_shape(y_scale, x, axis, block_size, "QuantizeLinear")
    z = None if y_zero_point is None else _param_shape(y_zero_point, x, axis, block_size, "QuantizeLinear")
    if z is not None and qdt in _FLOAT8 and np.any(z.astype(np.float32) != 0):
        raise ExecutionError("QuantizeLinear: float8 zero points must be 0")
    return quantize(x, s, z, qdt, saturate)


@op("QuantizeLinear", since=10)
def quantize_linear_10(ctx, x, y_scale, y_zero_point=None):
    return _quantize_linear(x, y_scale, y_zero_point, 1, 1, 0, 0)


@op("QuantizeLinear", since=13)
def quantize_linear_13(ctx, x, y_scale, y_zero_point=None, *, axis=1):
    return _quantize_linear(x, y_scale, y_zero_point, axis, 1, 0, 0)


@op("QuantizeLinear", since=19)
def quantize_linear_19(ctx, x, y_scale, y_zero_point=None, *, axis=1, saturate=1):
    return _quantize_linear(x, y_scale, y_zero_point, axis, saturate, 0, 0)


@op("QuantizeLinear", since=21)
def quantize_linear_21(ctx, x, y_scale, y_zero_point=None, *, axis=1, saturate=1, block_size=0, output_dtype=0,
                       precision=0):
    # `precision` (opset 23) names the division's type; float32 is what ORT uses for fp32/fp16 inputs.
    return _quantize_linear(x, y_scale, y_zero_point, axis, saturate, block_size, output_dtype)


def _dequantize_linear(x, x_scale, x_zero_point, axis, block_size, output_dtype):
    if not (_is_int(x.dtype) or x.dtype in _FLOAT8):
        raise ExecutionError(f"DequantizeLinear: unsupported input type {x.dtype}")
    out_dt = np_dtype(output_dtype) if output_dtype else x_scale.dtype
    s = _param_shape(x_scale, x, axis, block_size, "DequantizeLinear").astype(np.float32)
    if x.dtype in _FLOAT8:
        v = x.astype(np.float32)
    else:
        v = x.astype(np.int32)
        if x_zero_point is not None:
            v = v - _param_shape(x_zero_point, x, axis, block_size, "DequantizeLinear").astype(np.int32)
        v = v.astype(np.float32)
    return (v * s).astype(out_dt)


@op("DequantizeLinear", since=10)
def dequantize_linear_10(ctx, x, x_scale, x_zero_point=None):
    return _dequantize_linear(x, x_scale, x_zero_point, 1, 0, 0)


@op("DequantizeLinear", since=13)
def dequantize_linear_13(ctx, x, x_scale, x_zero_point=None, *, axis=1):
    return _dequantize_linear(x, x_scale, x_zero_point, axis, 0, 0)


@op("DequantizeLinear", since=21)
def dequantize_linear_21(ctx, x, x_scale, x_zero_point=None, *, axis=1, block_size=0, output_dtype=0):
    return _dequantize_linear(x, x_scale, x_zero_point, axis, block_size, output_dtype)


def dynamic_quant_params(x: np.ndarray) -> tuple[np.float32, np.uint8]:
    """uint8 scale and zero point from the range of x widened to include 0 (ORT's rule)."""
    return _quant_params(x)[:2]


def _quant_params(x: np.ndarray) -> tuple[np.float32, np.uint8, bool]:
    """dynamic_quant_params, and whether x is free of NaN and inf."""
    if not x.size:
        return np.float32(1), np.uint8(0), True
    mn, mx = x.min(), x.max()
    if not (np.isfinite(mn) and np.isfinite(mx)):  # NaN or inf: ORT's MLAS range (ops/specials.py)
        from .specials import quant_params_u8
        scale, zp = quant_params_u8(x)
        return scale, np.uint8(zp), False
    return (*_range_params(mn, mx), True)


def _range_params(mn, mx) -> tuple[np.float32, np.uint8]:
    lo = np.float32(min(0.0, float(mn)))
    hi = np.float32(max(0.0, float(mx)))
    if hi == lo:  # all zeros: ORT reports scale 1, zero point 0
        return np.float32(1), np.uint8(0)
    scale = np.float32((hi - lo) / np.float32(255))
    zp = np.clip(np.float32(0) - lo / scale, np.float32(0), np.float32(255))
    return np.float32(scale), np.uint8(np.rint(zp))


@njit(cache=True, nogil=True, error_model="numpy")
def _quantize_u8_nb(x, scale, zp, out):
    # quantize(x, scale, zp, uint8) in one vectorized pass: the same float32 operations.
    for i in range(x.size):
        out[i] = np.uint8(min(np.float32(255.0), max(np.float32(0.0), np.rint(x[i] / scale) + zp)))


# Below this many elements the numpy form: numba's first call maps ~45 MB of LLVM (see
# recurrent.NUMBA_MIN), not worth it for a streaming model's few hundred values.
_DQL_NUMBA_MIN = 1 << 14


@op("DynamicQuantizeLinear", since=11)
def dynamic_quantize_linear(ctx, x):
    if x.dtype != np.float32:
        raise ExecutionError(f"DynamicQuantizeLinear needs float32 input, got {x.dtype}")
    scale, zp, finite = _quant_params(x)
    if finite and x.size >= _DQL_NUMBA_MIN:
        # one pass instead of numpy's five (divide, rint, add, clamp, cast); NaN and inf take
        # quantize's MLAS clamp
        y = np.empty(x.shape, np.uint8)
        _quantize_u8_nb(np.ascontiguousarray(x).reshape(-1), scale, np.float32(zp), y.reshape(-1))
    else:
        y = quantize(x, scale, np.uint8(zp), np.uint8)
    return y, np.asarray(scale, np.float32), np.asarray(zp, np.uint8)
