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


# ---------------------------------------------------------------------------- attention
def _softmax(ctx, s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / ctx.sum(e, axis=-1, keepdims=True)


def _key_mask(mask, B, S, T, P, filter_value, dtype):
    """Additive mask (B, 1, S, T) from an ORT mask_index / key_padding_mask, or None."""
    if mask is None:
        return None
    m = np.asarray(mask)
    keep: np.ndarray
    if m.ndim == 1 and m.shape[0] == B:  # valid key length per batch (right padding)
        keep = np.arange(T)[None, None, :] < m.astype(np.int64)[:, None, None]
    elif m.ndim == 1 and m.shape[0] == 2 * B:  # end and start positions
        j = np.arange(T)[None, None, :]
        keep = (j < m[:B].astype(np.int64)[:, None, None]) & (j >= m[B:].astype(np.int64)[:, None, None])
    elif m.ndim == 2 and m.shape == (B, T):
        keep = (m > 0)[:, None, :]
    elif m.ndim == 3 and m.shape == (B, S, T):
        keep = m > 0
    else:
        raise ExecutionError(f"attention mask of shape {list(m.shape)} is not supported (batch {B}, "
                             f"sequence {S}, total {T})")
    keep = np.broadcast_to(keep, (B, S, T))
    return np.where(keep, dtype.type(0), dtype.type(filter_value))[:, None, :, :]


def _attend(ctx, q, k, v, scale, add_mask, causal, attention_bias, filter_value, P):
    """q: (B, N, S, H), k: (B, N, T, H), v: (B, N, T, Hv) -> (B, S, N*Hv)."""
    B, N, S, H = q.shape
    T = k.shape[2]
    dt = q.dtype
    s = ctx.matmul(q, k.swapaxes(-1, -2)) * dt.type(scale)
    if add_mask is not None:
        s = s + add_mask
    if causal:
        future = np.arange(T)[None, :] > (np.arange(S)[:, None] + P)
        s = s + np.where(future, dt.type(filter_value), dt.type(0))
    if attention_bias is not None:
        s = s + attention_bias.astype(dt)
    o = ctx.matmul(_softmax(ctx, s).astype(dt, copy=False), v)  # (B, N, S, Hv)
    return o.transpose(0, 2, 1, 3).reshape(B, S, N * v.shape[-1])


def _heads(x: np.ndarray, n: int) -> np.ndarray:
    B, S, D = x.shape
    if D % n:
        raise ExecutionError(f"hidden size {D} is not divisible by num_heads {n}")
    return x.reshape(B, S, n, D // n).transpose(0, 2, 1, 3)


@op("Attention", since=1, domain=MS_DOMAIN)
def attention(ctx, x, weights, bias=None, mask_index=None, past=None, attention_bias=None, past_sequence_length=None,
              *, num_heads, do_rotary=0, mask_filter_value=-10000.0, past_present_share_buffer=0,
              qkv_hidden_sizes=None, rotary_embedding_dim=0, scale=0.0, unidirectional=0):
    if do_rotary or past_present_share_buffer:
        raise ExecutionError("Attention: do_rotary and past_present_share_buffer are not supported")
    if x.ndim != 3 or weights.ndim != 2 or weights.shape[0] != x.shape[2]:
        raise ExecutionError(f"Attention: input {list(x.shape)} and weights {list(weights.shape)} do not fit")
    dq, dk, dv = (qkv_hidden_sizes or [weights.shape[1] // 3] * 3)
    if dq + dk + dv != weights.shape[1] or dq != dk:
        raise ExecutionError(f"Attention: qkv_hidden_sizes {[dq, dk, dv]} do not fit weights {list(weights.shape)}")
    qkv = fmatmul(ctx, x, weights)
    if bias is not None:
        qkv = qkv + bias
    q, k, v = (_heads(t, num_heads) for t in (qkv[..., :dq], qkv[..., dq:dq + dk], qkv[..., dq + dk:]))
    P = 0
    if past is not None:
        P = past.shape[3]
        k = np.concatenate([past[0], k], axis=2)
        v = np.concatenate([past[1], v], axis=2)
    B, _, S, H = q.shape
    T = k.shape[2]
    sc = scale if scale else 1.0 / np.sqrt(H)
    mask = _key_mask(mask_index, B, S, T, P, mask_filter_value, x.dtype)
    out = _attend(ctx, q, k, v, sc, mask, unidirectional, attention_bias, mask_filter_value, P)
    present = np.stack([k, v]) if past is not None or len(ctx.node.outputs) > 1 else None
    return out, present


@op("MultiHeadAttention", since=1, domain=MS_DOMAIN)
def multi_head_attention(ctx, query, key=None, value=None, bias=None, key_padding_mask=None, attention_bias=None,
                         past_key=None, past_value=None, past_sequence_length=None, cache_indirection=None, *,
                         num_heads, mask_filter_value=-10000.0, scale=0.0, unidirectional=0):
    if query.ndim != 3 or key is None or value is None:
        raise ExecutionError("MultiHeadAttention: only separate 3-D query with key and value is supported")
    if cache_indirection is not None:
        raise ExecutionError("MultiHeadAttention: cache_indirection is not supported")
    if len(ctx.node.outputs) > 3 and ctx.node.outputs[3]:
        raise ExecutionError("MultiHeadAttention: the qk output is not supported")
    D = query.shape[2]
    if key.ndim == 3:
        dk, dv = key.shape[2], value.shape[2]
        q, k, v = query, key, value
        if bias is not None:
            q, k, v = q + bias[:D], k + bias[D:D + dk], v + bias[D + dk:D + dk + dv]
        k, v = _heads(k, num_heads), _heads(v, num_heads)
    elif key.ndim == 4 and value.ndim == 4:  # already (B, N, L, H)
        q = query + bias[:D] if bias is not None else query
        k, v = key, value
    else:
        raise ExecutionError(f"MultiHeadAttention: key of shape {list(key.shape)} is not supported")
    q = _heads(q, num_heads)
    P = 0
    if past_key is not None and past_value is not None:
        P = past_key.shape[2]
        k = np.concatenate([past_key, k], axis=2)
        v = np.concatenate([past_value, v], axis=2)
    B, _, S, H = q.shape
    T = k.shape[2]
    sc = scale if scale else 1.0 / np.sqrt(H)
    mask = _key_mask(key_padding_mask, B, S, T, P, mask_filter_value, query.dtype)
    out = _attend(ctx, q, k, v, sc, mask, unidirectional, attention_bias, mask_filter_value, P)
    return out, np.ascontiguousarray(k), np.ascontiguousarray(v)
