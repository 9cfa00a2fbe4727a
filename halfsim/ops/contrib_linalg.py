"""com.microsoft matmul ops that ORT's optimizer and quantizer emit: FusedMatMul,
MatMulIntegerToFloat, DynamicQuantizeMatMul."""
from __future__ import annotations

import numpy as np

from ..errors import ExecutionError
from .linalg import fmatmul, integer_matmul
from .quant import dynamic_quant_params, quantize
from .registry import MS_DOMAIN, op


def _trans(x: np.ndarray, trans_batch: int, trans: int) -> np.ndarray:
    # transBatch moves the leading axis next to the last one: [d0, d1.., dn-2, dn-1] is read
    # as [d1.., dn-2, d0, dn-1] (ORT's MatMul helper); trans then swaps the last two.
    if x.ndim >= 3 and trans_batch:
        x = np.moveaxis(x, 0, -2)
    if x.ndim >= 2 and trans:
        x = x.swapaxes(-1, -2)
    return x


@op("FusedMatMul", since=1, domain=MS_DOMAIN)
def fused_matmul(ctx, a, b, *, alpha=1.0, transA=0, transB=0, transBatchA=0, transBatchB=0):
    y = fmatmul(ctx, _trans(a, transBatchA, transA), _trans(b, transBatchB, transB))
    if alpha != 1.0:
        y = y * np.asarray(alpha, y.dtype)
    return y


def _scaled(acc: np.ndarray, a_scale, b_scale, bias) -> np.ndarray:
    dt = a_scale.dtype
    asc = a_scale.reshape(()) if a_scale.size == 1 else a_scale
    bsc = b_scale.reshape(()) if b_scale.size == 1 else b_scale
    # ORT folds the two scales first, then scales the int32 accumulator.
    y = acc.astype(dt) * (asc * bsc).astype(dt)
    if bias is not None:
        y = y + bias.astype(dt)
    return y


@op("MatMulIntegerToFloat", since=1, domain=MS_DOMAIN)
def matmul_integer_to_float(ctx, a, b, a_scale, b_scale, a_zero_point=None, b_zero_point=None, bias=None):
    acc = integer_matmul(a, b, a_zero_point, b_zero_point).astype(np.int32)
    return _scaled(acc, a_scale, b_scale, bias)


@op("DynamicQuantizeMatMul", since=1, domain=MS_DOMAIN)
def dynamic_quantize_matmul(ctx, a, b, b_scale, b_zero_point=None, bias=None):
    if a.dtype != np.float32:
        raise ExecutionError("DynamicQuantizeMatMul needs float32 A")
    scale, zp = dynamic_quant_params(a)
    qa = quantize(a, scale, zp, np.uint8)
    acc = integer_matmul(qa, b, np.asarray(zp, np.uint8), b_zero_point).astype(np.int32)
    return _scaled(acc, np.asarray(scale, np.float32), b_scale, bias)
