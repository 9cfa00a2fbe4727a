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
  and we do the same (see U8S8_SATURATES).
- The int32 accumulators are scaled by float32(a_scale * w_scale) (per tensor or per column)
  and the H·R product is added to the X·W one; the gates then run in float32 with MLAS's
  rational sigmoid and tanh (fused multiply-adds emulated exactly).
ORT splits the batch across threads for the recurrent GEMM when batch > 4 (or >= 2 with
hidden_size <= 256); each part then gets its own H scale. We model one thread."""
from __future__ import annotations

import math
import platform

import numpy as np
from numba import njit

from ..errors import ExecutionError, ModelError
from .quant import dynamic_quant_params, quantize
from .recurrent import _ACTS, _DEFAULTS, _lengths, _num_dir, _reverse_index
from .registry import MS_DOMAIN, op

# ---------------------------------------------------------------- MLAS activations ----------


@njit(cache=True)
def _fma32(a, b, c):
    """float32 fma(a, b, c) from float64 arithmetic: a*b is exact in float64; the sum is made
    correctly rounded to float32 by fixing the one double-rounding case (a float32 tie)."""
    p = a * b
    s = p + c
    bb = s - p
    err = (p - (s - bb)) + (c - bb)  # s + err == p + c exactly (TwoSum)
    r = np.float64(np.float32(s))
    if err != 0.0:
        d = s - r
        if d != 0.0:
            e = math.frexp(s)[1]
            if abs(d) == math.ldexp(1.0, e - 25) and (err > 0.0) == (d > 0.0):
                r = r + 2.0 * d  # the exact sum lies past the tie: the other neighbour
    return r


# MlasLogisticConstants / MlasTanhConstants (Eigen's rational approximations).
_LOG_C = np.array([-18.0, 18.0, 4.37031012579801e-11, 1.15627324459942e-07, 6.08574864600143e-05,
                   8.51377133304701e-03, 2.48287947061529e-01, 6.10247389755681e-13, 5.76102136993427e-09,
                   6.29106785017040e-06, 1.70198817374094e-03, 1.16817656904453e-01, 9.93151921023180e-01],
                  np.float32).astype(np.float64)
_TANH_C = np.array([-9.0, 9.0, -2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11,
                    5.12229709037114e-08, 1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03,
                    1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03],
                   np.float32).astype(np.float64)


@njit(cache=True)
def _logistic_nb(x, out, k):
    # MlasLogisticKernelFma3: clamp, p(x²)·x / q(x²) + 0.5, floored at 0.
    for i in range(x.size):
        v = min(k[1], max(k[0], np.float64(x[i])))
        v2 = np.float64(np.float32(v * v))
        p = _fma32(v2, k[2], k[3])
        for j in range(4, 7):
            p = _fma32(v2, p, k[j])
        q = _fma32(v2, k[7], k[8])
        for j in range(9, 13):
            q = _fma32(v2, q, k[j])
        p = np.float64(np.float32(v * p))
        y = np.float64(np.float32(p / q))
        out[i] = max(0.0, np.float64(np.float32(y + 0.5)))


@njit(cache=True)
def _tanh_nb(x, out, k):
    # MlasTanhKernelFma3: clamp to [-9, 9], p(x²)·x / q(x²).
    for i in range(x.size):
        v = min(k[1], max(k[0], np.float64(x[i])))
        v2 = np.float64(np.float32(v * v))
        p = _fma32(v2, k[2], k[3])
        for j in range(4, 9):
            p = _fma32(v2, p, k[j])
        q = _fma32(v2, k[9], k[10])
        for j in range(11, 13):
            q = _fma32(v2, q, k[j])
        p = np.float64(np.float32(v * p))
        out[i] = np.float32(p / q)


def _mlas(kernel, consts):
    def fn(x, a, b):
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.empty_like(x)
        kernel(x.reshape(-1), out.reshape(-1), consts)
        return out
    return fn


# ORT's LSTM runs sigmoid and tanh through MLAS and relu as max(x, 0); the other activations
# are scalar float functors, approximated here by the plain LSTM's versions.
_EXACT = {"sigmoid": _mlas(_logistic_nb, _LOG_C), "tanh": _mlas(_tanh_nb, _TANH_C),
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


@njit(cache=True)
def _u8s8_pairs(a, b):
    """sum over k of a[m, k]·b[k, n] with every adjacent pair (k = 2j, 2j+1) summed and
    saturated to int16 first: AVX2's vpmaddubsw, which MLAS's u8·s8 kernel is built on."""
    M, K = a.shape
    N = b.shape[1]
    out = np.zeros((M, N), np.int64)
    for m in range(M):
        for j in range(0, K, 2):
            a0 = np.int32(a[m, j])
            a1 = np.int32(a[m, j + 1]) if j + 1 < K else np.int32(0)
            for n in range(N):
                s = a0 * np.int32(b[j, n])
                if j + 1 < K:
                    s += a1 * np.int32(b[j + 1, n])
                out[m, n] += min(32767, max(-32768, s))
    return out


def _u8s8_saturates() -> bool:
    """Whether this host's MLAS multiplies u8·s8 with vpmaddubsw (AVX2 or AVX512BW without
    VNNI/AMX), which saturates each adjacent product pair to int16. VNNI, AMX and ARM kernels
    are exact. ORT's results for int8 weights differ between the two kinds of CPU."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((ln.split(":", 1)[1].split() for ln in fh if ln.startswith("flags")), [])
    except OSError:
        return True  # no way to tell: AVX2 without VNNI is the common case
    return "avx2" in flags and not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags)


U8S8_SATURATES = _u8s8_saturates()


class _QWeight:
    """One direction's 8-bit weight [K, N] with its zero point."""

    def __init__(self, w, zp):
        self.w, self.zp = np.ascontiguousarray(w), zp
        self.colsum = w.astype(np.int64).sum(0)
        # Exact kernels (u8·u8 always): (A - za)(W - zw) in float64 BLAS is exact (|sum| < 2**53).
        exact = w.dtype == np.uint8 or not U8S8_SATURATES
        self.centered = w.astype(np.float64) - zp if exact else None

    def acc(self, qa, za):
        """int32 accumulator of MLAS's (A - za)·(W - zw), as float32 (ORT's int -> float)."""
        if self.centered is not None:
            return ((qa.astype(np.float64) - za) @ self.centered).astype(np.float32)
        K = qa.shape[1]
        raw = _u8s8_pairs(qa, self.w)
        acc = raw - za * self.colsum[None, :] - self.zp * qa.astype(np.int64).sum(1)[:, None] + K * za * self.zp
        return acc.astype(np.float32)


def _qgemm(a, qw, mult):
    """float32 result of ORT's dynamically quantized GEMM: a (float32 [M, K]) quantized to
    uint8 over its whole extent, times the 8-bit weight, scaled by float32(a_scale * w_scale)."""
    scale, zp = dynamic_quant_params(a)
    qa = quantize(a, scale, zp, np.uint8)
    return qw.acc(qa, int(zp)) * (np.float32(scale) * mult).astype(np.float32)


# ---------------------------------------------------------------- the op ---------------------


@op("DynamicQuantizeLSTM", since=1, domain=MS_DOMAIN)
def dynamic_quantize_lstm(ctx, X, W, R, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None,
                          W_scale=None, W_zero_point=None, R_scale=None, R_zero_point=None, *,
                          activation_alpha=None, activation_beta=None, activations=None, clip=None,
                          direction="forward", hidden_size=None, input_forget=0):
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
        if b is not None:
            x = x + b
        return np.maximum(-lim, np.minimum(lim, x))

    Y = np.zeros((T, nd, Bn, H), f32)
    Yh = np.zeros((nd, Bn, H), f32)
    Yc = np.zeros((nd, Bn, H), f32)
    rows = np.arange(Bn)[None, :]
    for d in range(nd):
        reverse = direction == "reverse" or d == 1
        f, g, hf = acts[d]
        w_s, w_zp = _qparams(W_scale, W_zero_point, d, nd, 4 * H, "W")
        r_s, r_zp = _qparams(R_scale, R_zero_point, d, nd, 4 * H, "R")
        wq, rq = _QWeight(W[d], w_zp), _QWeight(R[d], r_zp)
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
        for t in range(t_end):
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
    return Y, Yh, Yc
