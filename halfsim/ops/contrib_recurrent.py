"""com.microsoft DynamicQuantizeLSTM: an LSTM with 8-bit W and R whose activations are
quantized to uint8 on the fly, as ORT's CPU kernel runs it.

ORT's numerics, reproduced bit for bit (on an AVX2/FMA x86 CPU):
- X·W: all steps at once. The rows X[:max(sequence_lens)] (every batch row, padding included)
  get one uint8 scale and zero point: range widened to include 0, scale = (max - min) / 255,
  zero point = round_half_even(clamp(-min / scale, 0, 255)), q = sat(rint(x / scale) + zp).
- H·R: per step, the previous step's hidden rows of the whole batch get their own scale and
  zero point. A finished row contributes 0 when Y is an output (its Y row was zeroed) and its
  last h when it is not (ORT then steps in the Y_h buffer).
- uint8 × uint8 products are exact. uint8 × int8 ones are exact on VNNI/AMX/ARM hosts; on
  AVX2 hosts without VNNI each adjacent pair of products saturates to int16 (vpmaddubsw),
  and we do the same (kernels/u8s8.py).
- The int32 accumulators are scaled by float32(a_scale * w_scale) (per tensor or per column)
  and the H·R product is added to the X·W one; the gates then run in float32 with MLAS's
  rational sigmoid and tanh (fused multiply-adds emulated exactly).
ORT splits the batch across threads for the recurrent GEMM when batch > 4 (or >= 2 with
hidden_size <= 256); each part then gets its own H scale. We model one thread."""
from __future__ import annotations

import numpy as np
from numba import njit

from ..errors import ExecutionError, ModelError
from ..kernels import mlas
from ..kernels.conv import run_split
from ..kernels.u8s8 import _EMPTY_I8, U8S8_SATURATES, _acc_row, _row, packed_pairs, u8s8_matmul
from .quant import dynamic_quant_params, quantize
from .recurrent import _ACTS, _DEFAULTS, _lengths, _num_dir, _reverse_index
from .registry import MS_DOMAIN, op

# ---------------------------------------------------------------- MLAS activations ----------


def _mlas(kernel):
    def fn(x, a, b):
        return kernel(x)
    return fn


# ORT's LSTM runs sigmoid and tanh through MLAS and relu as max(x, 0); the other activations
# are scalar float functors, approximated here by the plain LSTM's versions.
_EXACT = {"sigmoid": _mlas(mlas.logistic), "tanh": _mlas(mlas.tanh),
          "relu": lambda x, a, b: np.maximum(x, np.float32(0))}


def _act_fns(names, alphas, betas, num_dir):
    """Per direction (f, g, h) callables; alpha/beta consumed in order by the activations
    that take them, with ORT's defaults."""
    names = list(names) if names else ["Sigmoid", "Tanh", "Tanh"] * num_dir
    if len(names) != 3 * num_dir:
        raise ModelError(f"DynamicQuantizeLSTM: expected {3 * num_dir} activations, got {len(names)}")
    alphas, betas = list(alphas or []), list(betas or [])
    fns = []
    for nm in names:
        key = nm.lower()
        if key not in _ACTS:
            raise ModelError(f"DynamicQuantizeLSTM: unsupported activation {nm!r}")
        fn, ua, ub = _ACTS[key]
        da, db = _DEFAULTS.get(key, (0.0, 0.0))
        a = np.float32(alphas.pop(0) if alphas else da) if ua else np.float32(0)
        b = np.float32(betas.pop(0) if betas else db) if ub else np.float32(0)
        fn = _EXACT.get(key, fn)
        fns.append(lambda x, fn=fn, a=a, b=b: fn(x, a, b).astype(np.float32, copy=False))
    return [fns[3 * d:3 * d + 3] for d in range(num_dir)]


# ---------------------------------------------------------------- quantized GEMM -------------


def _qparams(scale, zp, d, nd, n4, what):
    """Direction d's weight scale (scalar, or [4H] per column) and zero point, as ORT reads
    them: per-column zero points must be one value (0 for int8) and the first is used."""
    scale = np.asarray(scale, np.float32)
    zp = np.asarray(zp)
    for a, nm in ((scale, "scale"), (zp, "zero_point")):
        if a.ndim not in (1, 2) or a.shape[0] != nd or (a.ndim == 2 and a.shape[1] != n4):
            raise ExecutionError(f"DynamicQuantizeLSTM: {what}_{nm} has shape {list(a.shape)}, expected "
                                 f"[{nd}] or [{nd}, {n4}]")
    if zp.ndim == 2 and ((zp != zp.reshape(-1)[0]).any() or (zp.dtype == np.int8 and zp.any())):
        raise ExecutionError(f"DynamicQuantizeLSTM: per-column {what}_zero_point must be constant "
                             f"(zero for int8)")
    return scale[d], int(zp[d].reshape(-1)[0])


class _QWeight:
    """One direction's 8-bit weight [K, N] with its zero point."""

    def __init__(self, w, zp):
        self.w, self.zp = np.ascontiguousarray(w), zp
        self.colsum = w.astype(np.int64).sum(0)
        # Exact kernels (u8·u8 always): (A - za)(W - zw) in float64 BLAS is exact (|sum| < 2**53).
        exact = w.dtype == np.uint8 or not U8S8_SATURATES
        self.centered = w.astype(np.float64) - zp if exact else None
        self.packed = packed_pairs(self.w) if not exact else _EMPTY_I8

    def acc(self, qa, za):
        """int32 accumulator of MLAS's (A - za)·(W - zw), as float32 (ORT's int -> float)."""
        if self.centered is not None:
            return ((qa.astype(np.float64) - za) @ self.centered).astype(np.float32)
        return u8s8_matmul(qa, self.w, za, self.zp, self.packed, self.colsum).astype(np.float32)


def _qgemm(a, qw, mult):
    """float32 result of ORT's dynamically quantized GEMM: a (float32 [M, K]) quantized to
    uint8 over its whole extent, times the 8-bit weight, scaled by float32(a_scale * w_scale)."""
    scale, zp = dynamic_quant_params(a)
    qa = quantize(a, scale, zp, np.uint8)
    return qw.acc(qa, int(zp)) * (np.float32(scale) * mult).astype(np.float32)


# ---------------------------------------------------------------- fused recurrence ----------


@njit(cache=True, nogil=True, error_model="numpy")
def _clip_act(x, lim):
    # np.maximum(-lim, np.minimum(lim, x)): NaN propagates, +-inf becomes +-lim.
    if x != x:
        return x
    return max(-lim, min(lim, x))


@njit(cache=True, nogil=True, error_model="numpy")
def _recur_nb(xw, w, wp, zp, colsum, sat, rmult, bias, has_bias, peep, has_peep, lim, coupled,
              lens, t_end, y_out, h, c, Yd):
    """One direction's time loop with ORT's default activations (sigmoid, tanh, tanh), the
    same float32 operations in the same order as the numpy step in dynamic_quantize_lstm.
    wp: w packed by kernels/u8s8.packed_pairs (empty: the pair loop). h, c (B, H) are updated in place; Y rows go to Yd (T, B, H). Returns False (nothing
    reliable written) when h turns non-finite: the caller then reruns the numpy path, whose
    quantization of NaN/inf is numpy's."""
    B, H = h.shape
    N = 4 * H
    f0 = np.float32(0.0)
    one = np.float32(1.0)
    qa = np.empty(H, np.uint8)
    packed = sat and wp.size > 0
    acc = np.empty(-(-N // 16) * 16 if packed else N, np.int32)
    pre = np.empty(N, np.float32)
    for t in range(t_end):
        # dynamic uint8 quantization of the whole batch's h (quant.dynamic_quant_params)
        lo = f0
        hi = f0
        for b in range(B):
            for j in range(H):
                v = h[b, j]
                if not np.isfinite(v):
                    return False
                lo = min(lo, v)
                hi = max(hi, v)
        if hi == lo:
            scale = one
            za = np.float32(0.0)
        else:
            scale = (hi - lo) / np.float32(255.0)
            za = np.rint(min(np.float32(255.0), max(f0, f0 - lo / scale)))
        zi = np.int64(za)
        for b in range(B):
            qsum = np.int64(0)
            for j in range(H):
                q = min(np.float32(255.0), max(f0, np.rint(h[b, j] / scale) + za))
                qa[j] = np.uint8(q)
                qsum += np.int64(qa[j])
            # int32 accumulator of (qa - za)(w - zp): raw products (pairs saturated to int16
            # on AVX2 hosts), then the zero-point corrections
            acc[:] = 0
            if packed:
                _row(qa, w, wp, acc, sat)
            else:
                _acc_row(qa, w, acc, sat)
            corr = np.int64(H) * zi * zp - zp * qsum
            for n in range(N):
                r = np.float32(np.int64(acc[n]) - zi * colsum[n] + corr)
                pre[n] = xw[t, b, n] + r * (scale * rmult[n])
            active = t < lens[b]
            for j in range(H):
                cv = c[b, j]
                pi = pre[j]
                po = pre[H + j]
                pf = pre[2 * H + j]
                pc = pre[3 * H + j]
                if has_peep:
                    pi = pi + cv * peep[j]
                if has_bias:
                    pi = pi + bias[j]
                ig = mlas.logistic_f32(_clip_act(pi, lim))
                if coupled:
                    fg = one - ig
                else:
                    if has_peep:
                        pf = pf + cv * peep[2 * H + j]
                    if has_bias:
                        pf = pf + bias[2 * H + j]
                    fg = mlas.logistic_f32(_clip_act(pf, lim))
                if has_bias:
                    pc = pc + bias[3 * H + j]
                gg = mlas.tanh_f32(_clip_act(pc, lim))
                cn = cv * fg + ig * gg
                if has_peep:
                    po = po + cn * peep[H + j]
                if has_bias:
                    po = po + bias[H + j]
                og = mlas.logistic_f32(_clip_act(po, lim))
                hn = mlas.tanh_f32(cn) * og
                # Row b's h is read only by its own product above (the scale was taken first),
                # so it is updated in place. A finished row keeps c; its h is 0 when Y is an
                # output (ORT steps in Y) and unchanged otherwise.
                if active:
                    c[b, j] = cn
                    Yd[t, b, j] = hn
                    h[b, j] = hn
                else:
                    Yd[t, b, j] = f0
                    if y_out:
                        h[b, j] = f0
    return True


# ---------------------------------------------------------------- the op ---------------------


@op("DynamicQuantizeLSTM", since=1, domain=MS_DOMAIN)
def dynamic_quantize_lstm(ctx, X, W, R, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None,
                          W_scale=None, W_zero_point=None, R_scale=None, R_zero_point=None, *,
                          activation_alpha=None, activation_beta=None, activations=None, clip=None,
                          direction="forward", hidden_size=None, input_forget=0, _prepared=None):
    name = "DynamicQuantizeLSTM"
    if W_scale is None or W_zero_point is None or R_scale is None or R_zero_point is None:
        raise ExecutionError(f"{name}: W/R scales and zero points are required")
    if X.dtype != np.float32:
        raise ExecutionError(f"{name}: X must be float32, got {X.dtype}")
    if W.dtype not in (np.int8, np.uint8) or R.dtype not in (np.int8, np.uint8):
        raise ExecutionError(f"{name}: W and R must be int8 or uint8")
    nd = _num_dir(direction, name)
    if X.ndim != 3:
        raise ExecutionError(f"{name}: X must have rank 3, got shape {list(X.shape)}")
    T, Bn, I = X.shape
    H = int(hidden_size) if hidden_size is not None else R.shape[1]
    if W.shape != (nd, I, 4 * H):
        raise ExecutionError(f"{name}: W has shape {list(W.shape)}, expected {[nd, I, 4 * H]}")
    if R.shape != (nd, H, 4 * H):
        raise ExecutionError(f"{name}: R has shape {list(R.shape)}, expected {[nd, H, 4 * H]}")
    if B is not None and B.shape != (nd, 8 * H):
        raise ExecutionError(f"{name}: B has shape {list(B.shape)}, expected {[nd, 8 * H]}")
    if P is not None and P.shape != (nd, 3 * H):
        raise ExecutionError(f"{name}: P has shape {list(P.shape)}, expected {[nd, 3 * H]}")
    for s in (initial_h, initial_c):
        if s is not None and s.shape != (nd, Bn, H):
            raise ExecutionError(f"{name}: initial state has shape {list(s.shape)}, expected {[nd, Bn, H]}")
    acts = _act_fns(activations, activation_alpha, activation_beta, nd)
    lens = _lengths(sequence_lens, T, Bn, name)
    lens_all = np.full(Bn, T, np.int64) if lens is None else lens
    t_end = int(lens_all.max(initial=0))
    # ORT steps in Y when Y is an output (finished rows zeroed), else in the Y_h buffer.
    y_out = bool(ctx.node.outputs) and ctx.node.outputs[0] != ""
    lim = np.float32(np.finfo(np.float32).max if clip is None else clip)
    coupled = bool(input_forget)
    f32 = np.float32

    def clip_bias(x, b):
        if b is not None:  # ORT's clip_add_bias: std::min first, so a NaN becomes +lim
            return np.maximum(-lim, np.fmin(x + b, lim))
        return np.maximum(-lim, np.minimum(lim, x))

    # One numba loop per direction under plain fp32 with ORT's default activations (exact
    # int32 sums need H * 255**2 < 2**31 on the non-saturating path).
    fused = (ctx.identity and X.dtype == f32
             and (not activations or [a.lower() for a in activations] == ["sigmoid", "tanh", "tanh"] * nd)
             and H * 255 * 255 < 2 ** 31)
    zeros4, zeros3 = np.zeros(4 * H, f32), np.zeros(3 * H, f32)
    Y = np.zeros((T, nd, Bn, H), f32)
    Yh = np.zeros((nd, Bn, H), f32)
    Yc = np.zeros((nd, Bn, H), f32)
    rows = np.arange(Bn)[None, :]
    prepared = _prepared or _prepare(W, R, W_scale, W_zero_point, R_scale, R_zero_point, nd, H)

    def one_direction(d):
        reverse = direction == "reverse" or d == 1
        f, g, hf = acts[d]
        wq, w_s, rq, r_s, r_zp = prepared[d]
        bias = None if B is None else (B[d, :4 * H] + B[d, 4 * H:]).astype(f32)
        bi, bo, bf, bc = (None,) * 4 if bias is None else np.split(bias, 4)
        Xd = X
        if reverse:
            ridx = _reverse_index(T, lens)
            Xd = X[ridx, rows] if lens is not None else X[::-1]
        xw = np.zeros((T, Bn, 4 * H), f32)
        if t_end:
            xw[:t_end] = _qgemm(np.ascontiguousarray(Xd[:t_end]).reshape(-1, I), wq, w_s).reshape(t_end, Bn, 4 * H)
        h = np.zeros((Bn, H), f32) if initial_h is None else initial_h[d].astype(f32)
        c = np.zeros((Bn, H), f32) if initial_c is None else initial_c[d].astype(f32)
        Yd = np.zeros((T, Bn, H), f32)
        if fused and _recur_nb(xw, rq.w, rq.packed, r_zp, rq.colsum, rq.centered is None,
                               np.ascontiguousarray(np.broadcast_to(r_s, (4 * H,)), f32),
                               zeros4 if bias is None else bias, bias is not None,
                               zeros3 if P is None else P[d].astype(f32), P is not None, lim, coupled,
                               lens_all, t_end, y_out, h, c, Yd):
            steps = 0
        else:  # the general path (other activations or precisions, or h became non-finite)
            steps = t_end
            h = np.zeros((Bn, H), f32) if initial_h is None else initial_h[d].astype(f32)
            c = np.zeros((Bn, H), f32) if initial_c is None else initial_c[d].astype(f32)
            Yd[:] = 0
        for t in range(steps):
            pre = xw[t] + _qgemm(h, rq, r_s)
            pi, po, pf, pc = (pre[:, k * H:(k + 1) * H] for k in range(4))
            if P is not None:
                pi = pi + c * P[d, :H]
            i = ctx.round(f(ctx.round(clip_bias(pi, bi))))
            if coupled:
                fg = ctx.round(f32(1) - i)
            else:
                if P is not None:
                    pf = pf + c * P[d, 2 * H:]
                fg = ctx.round(f(ctx.round(clip_bias(pf, bf))))
            gg = ctx.round(g(ctx.round(clip_bias(pc, bc))))
            c_new = ctx.round(c * fg + i * gg)
            if P is not None:
                po = po + c_new * P[d, H:2 * H]
            o = ctx.round(f(ctx.round(clip_bias(po, bo))))
            h_new = ctx.round(hf(c_new) * o)
            active = (t < lens_all)[:, None]
            c = np.where(active, c_new, c)
            Yd[t] = np.where(active, h_new, 0)
            h = Yd[t] if y_out else np.where(active, h_new, h)
        last = np.clip(lens_all - 1, 0, None)
        Yh[d] = np.where((lens_all > 0)[:, None], Yd[last, np.arange(Bn)], 0)
        Yc[d] = np.where((lens_all > 0)[:, None], c, 0)
        if reverse:
            Yd = Yd[ridx, rows] if lens is not None else Yd[::-1]
        Y[:, d] = Yd

    def directions(lo, hi):
        for d in range(lo, hi):
            one_direction(d)
    if fused and nd == 2:  # ORT runs the two directions on two threads too (numba loops are nogil)
        run_split(directions, (), 2, 2 * T * 4 * H * (I + H))
    else:
        directions(0, nd)
    return Y, Yh, Yc


def _prepare(W, R, W_scale, W_zero_point, R_scale, R_zero_point, nd: int, H: int) -> list:
    """Per direction (W as _QWeight, W scale, R as _QWeight, R scale, R zero point)."""
    out = []
    for d in range(nd):
        w_s, w_zp = _qparams(W_scale, W_zero_point, d, nd, 4 * H, "W")
        r_s, r_zp = _qparams(R_scale, R_zero_point, d, nd, 4 * H, "R")
        out.append((_QWeight(W[d], w_zp), w_s, _QWeight(R[d], r_zp), r_s, r_zp))
    return out


def _specialize(node, consts: dict):
    """Constant weights, scales and zero points: their column sums (and centred copies) are
    made once per model instead of on every call (~1 ms per 512x2048 matrix)."""
    if not all(i in consts for i in (1, 2, 8, 9, 10, 11)):
        return None
    W, R = consts[1], consts[2]
    nd = 2 if node.attrs.get("direction", "forward") == "bidirectional" else 1
    H = int(node.attrs["hidden_size"]) if node.attrs.get("hidden_size") is not None else R.shape[1]
    try:
        if W.ndim != 3 or R.shape != (nd, H, 4 * H) or W.shape[0] != nd or W.shape[2] != 4 * H \
                or W.dtype not in (np.int8, np.uint8) or R.dtype not in (np.int8, np.uint8):
            return None  # the op reports it
        prepared = _prepare(W, R, consts[8], consts[9], consts[10], consts[11], nd, H)
    except ExecutionError:
        return None

    def fn(ctx, *args, **attrs):
        return dynamic_quantize_lstm(ctx, *args, _prepared=prepared, **attrs)
    return fn


dynamic_quantize_lstm.specialize = _specialize
