"""Recurrent ops: RNN, GRU, LSTM.

Each direction precomputes X·W^T for all timesteps in one ctx.matmul, then steps through time
with H·R^T per step through ctx.matmul; gate pre-activations, activations, cell and hidden
states go through ctx.round after every step so a low-precision cell is emulated step-rounded.
sequence_lens follows ORT: outputs beyond a batch row's length are zero, Y_h/Y_c hold the
last valid step (zero for a length of 0), and a reverse direction runs backwards within each
row's own length."""
from __future__ import annotations

from typing import Callable

import numpy as np
from numba import njit

from ..errors import ExecutionError, ModelError
from .registry import op, quiet

# ---------------------------------------------------------------- activations ---------------


@njit(cache=True)
def _sigmoid_nb(x, out):
    for i in range(x.size):
        v = np.float64(x[i])
        if v >= 0:
            out[i] = 1.0 / (1.0 + np.exp(-v))
        else:
            e = np.exp(v)
            out[i] = e / (1.0 + e)


@njit(cache=True)
def _tanh_nb(x, out):
    for i in range(x.size):
        out[i] = np.tanh(np.float64(x[i]))


@njit(cache=True, nogil=True)
def _lstm_gates_nb(pre, c, bias, peep, clip, use_clip, coupled, h_out, c_out):
    """One fused LSTM step after the matmuls, default activations (sigmoid, tanh, tanh):
    pre (B, 4H) = x·W^T + h·R^T in gate order i, o, f, c; bias (4H,) and peep (3H,) may be
    zeros. Each elementwise step rounds to the storage type, activations are computed in
    float64 and rounded once, as the unfused numpy cell does."""
    B = pre.shape[0]
    H = pre.shape[1] // 4
    for b in range(B):
        for j in range(H):
            cv = c[b, j]
            p_i = pre[b, j] + peep[j] * cv + bias[j]
            p_f = pre[b, 2 * H + j] + peep[2 * H + j] * cv + bias[2 * H + j]
            p_c = pre[b, 3 * H + j] + bias[3 * H + j]
            if use_clip:
                p_i = min(max(p_i, -clip), clip)
                p_f = min(max(p_f, -clip), clip)
                p_c = min(max(p_c, -clip), clip)
            i = c.dtype.type(_sig1(np.float64(p_i)))
            if coupled:
                f = c.dtype.type(1) - i
            else:
                f = c.dtype.type(_sig1(np.float64(p_f)))
            g = c.dtype.type(np.tanh(np.float64(p_c)))
            cn = f * cv + i * g
            p_o = pre[b, H + j] + peep[H + j] * cn + bias[H + j]
            if use_clip:
                p_o = min(max(p_o, -clip), clip)
            o = c.dtype.type(_sig1(np.float64(p_o)))
            c_out[b, j] = cn
            h_out[b, j] = o * c.dtype.type(np.tanh(np.float64(cn)))


@njit(cache=True, nogil=True)
def _sig1(v):
    if v >= 0:
        return 1.0 / (1.0 + np.exp(-v))
    e = np.exp(v)
    return e / (1.0 + e)


def _fast(kernel, x):
    """Run an elementwise kernel in one call: numpy's per-ufunc overhead dominates the small
    per-step gate arrays. Computed in float64 and rounded once."""
    x = np.ascontiguousarray(x)
    out = np.empty_like(x)
    kernel(x.reshape(-1), out.reshape(-1))  # 1-D only: one compiled signature per dtype
    return out


# Below this many elements per step the numpy forms are used: numba's first call maps ~45 MB
# of LLVM, three times the whole footprint of a streaming model such as DTLN, to save ~50 us.
NUMBA_MIN = 4096


def _sigmoid(x, a, b):
    if x.dtype in (np.float32, np.float64):
        if x.size >= NUMBA_MIN:
            return _fast(_sigmoid_nb, x)
        v = x.astype(np.float64)  # the kernel's arithmetic: float64, rounded once
        e = np.exp(-np.abs(v))
        return np.where(v >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)
    e = np.exp(-np.abs(x))  # never overflows
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def _tanh(x, a, b):
    if x.dtype in (np.float32, np.float64):
        if x.size >= NUMBA_MIN:
            return _fast(_tanh_nb, x)
        return np.tanh(x.astype(np.float64)).astype(x.dtype)
    return np.tanh(x)


def _elu(x, a, b):
    return np.where(x >= 0, x, a * np.expm1(np.minimum(x, 0))).astype(x.dtype, copy=False)


_ACTS: dict[str, tuple[Callable, bool, bool]] = {
    # name: (fn(x, alpha, beta), uses alpha, uses beta)
    "relu": (lambda x, a, b: np.maximum(x, 0).astype(x.dtype, copy=False), False, False),
    "tanh": (_tanh, False, False),
    "sigmoid": (_sigmoid, False, False),
    "affine": (lambda x, a, b: a * x + b, True, True),
    "leakyrelu": (lambda x, a, b: np.where(x >= 0, x, a * x).astype(x.dtype, copy=False), True, False),
    "thresholdedrelu": (lambda x, a, b: np.where(x > a, x, 0).astype(x.dtype, copy=False), True, False),
    "scaledtanh": (lambda x, a, b: a * np.tanh(b * x), True, True),
    "hardsigmoid": (lambda x, a, b: np.clip(a * x + b, 0, 1).astype(x.dtype, copy=False), True, True),
    "elu": (_elu, True, False),
    "softsign": (lambda x, a, b: x / (1 + np.abs(x)), False, False),
    "softplus": (lambda x, a, b: np.logaddexp(np.zeros((), x.dtype), x), False, False),
}
# ORT's defaults when activation_alpha/beta run out; everything else defaults to 0.
_DEFAULTS = {"leakyrelu": (0.01, 0.0), "hardsigmoid": (0.2, 0.5), "elu": (1.0, 0.0)}


def _activations(names, alphas, betas, per_dir: list[str], num_dir: int, op_type: str):
    """Per-direction lists of f(x) callables. Alphas/betas are consumed in list order by the
    activations that take them (as ORT does)."""
    names = list(names) if names else per_dir * num_dir
    if len(names) == len(per_dir) and num_dir == 2:
        names = names * 2
    if len(names) != len(per_dir) * num_dir:
        raise ModelError(f"{op_type}: expected {len(per_dir) * num_dir} activations, got {len(names)}")
    alphas, betas = list(alphas or []), list(betas or [])
    fns = []
    for nm in names:
        key = nm.lower()
        if key not in _ACTS:
            raise ModelError(f"{op_type}: unsupported activation {nm!r}")
        fn, ua, ub = _ACTS[key]
        da, db = _DEFAULTS.get(key, (0.0, 0.0))
        a = (alphas.pop(0) if alphas else da) if ua else 0.0
        b = (betas.pop(0) if betas else db) if ub else 0.0
        fns.append(lambda x, fn=fn, a=a, b=b: fn(x, a, b))
    k = len(per_dir)
    return [fns[d * k:(d + 1) * k] for d in range(num_dir)]


# ---------------------------------------------------------------- shared driver --------------


def _check(X, W, R, num_dir, gates, hidden_size, op_type):
    if X.ndim != 3:
        raise ExecutionError(f"{op_type}: X must have rank 3, got shape {list(X.shape)}")
    H = R.shape[-1] if hidden_size is None else int(hidden_size)
    if W.shape != (num_dir, gates * H, X.shape[2]):
        raise ExecutionError(f"{op_type}: W has shape {list(W.shape)}, expected {[num_dir, gates * H, X.shape[2]]}")
    if R.shape != (num_dir, gates * H, H):
        raise ExecutionError(f"{op_type}: R has shape {list(R.shape)}, expected {[num_dir, gates * H, H]}")
    return H


def _num_dir(direction: str, op_type: str) -> int:
    if direction not in ("forward", "reverse", "bidirectional"):
        raise ModelError(f"{op_type}: unknown direction {direction!r}")
    return 2 if direction == "bidirectional" else 1


def _lengths(seq_lens, T, B, op_type):
    if seq_lens is None:
        return None
    lens = np.asarray(seq_lens).astype(np.int64).reshape(-1)
    if lens.shape != (B,):
        raise ExecutionError(f"{op_type}: sequence_lens has shape {list(np.shape(seq_lens))}, expected [{B}]")
    if (lens < 0).any() or (lens > T).any():
        raise ExecutionError(f"{op_type}: sequence_lens values must lie in [0, {T}]")
    return None if (lens == T).all() else lens


def _reverse_index(T: int, lens) -> np.ndarray:
    """time index [T, B] reversing each batch row within its own length (an involution)."""
    if lens is None:
        return np.arange(T - 1, -1, -1)[:, None]
    t = np.arange(T)[:, None]
    return np.where(t < lens[None, :], lens[None, :] - 1 - t, t)


def _run(ctx, op_type, X, W, R, B, seq_lens, init_states, direction, layout, hidden_size,
         gates, cell, n_states):
    """Shared driver. cell(ctx, d, xw_t, states) -> new states (hidden first).
    Returns Y [T, D, B, H] (or layout 1) and the final states [D, B, H] each."""
    num_dir = _num_dir(direction, op_type)
    if layout not in (0, 1):
        raise ModelError(f"{op_type}: layout must be 0 or 1, got {layout}")
    if layout == 1:
        X = X.transpose(1, 0, 2)
        init_states = [None if s is None else s.transpose(1, 0, 2) for s in init_states]
    H = _check(X, W, R, num_dir, gates, hidden_size, op_type)
    T, Bn, I = X.shape
    dt = X.dtype
    lens = _lengths(seq_lens, T, Bn, op_type)
    Y = np.zeros((T, num_dir, Bn, H), dtype=dt)
    finals = [np.zeros((num_dir, Bn, H), dtype=dt) for _ in range(n_states)]
    for d in range(num_dir):
        reverse = direction == "reverse" or d == 1
        Xd = X
        if reverse:
            ridx = _reverse_index(T, lens)
            Xd = X[ridx, np.arange(Bn)[None, :]] if lens is not None else X[::-1]
        # X·W^T for every timestep at once.
        xw = ctx.matmul(np.ascontiguousarray(Xd).reshape(T * Bn, I), _wt(ctx, W[d])).reshape(T, Bn, gates * H)
        states = []
        for k in range(n_states):
            s = init_states[k] if k < len(init_states) else None
            if s is None:
                states.append(np.zeros((Bn, H), dtype=dt))
            else:
                if s.shape != (num_dir, Bn, H):
                    raise ExecutionError(f"{op_type}: initial state has shape {list(s.shape)}, "
                                         f"expected {[num_dir, Bn, H]}")
                states.append(np.asarray(s[d], dtype=dt))
        Bd = None if B is None else B[d]
        Yd = Y[:, d]
        t_end = T if lens is None else int(lens.max(initial=0))
        for t in range(t_end):
            new = cell(ctx, d, xw[t], states, Bd)
            if lens is None:
                states = new
                Yd[t] = new[0]
            else:
                active = (t < lens)[:, None]
                states = [np.where(active, n, s) for n, s in zip(new, states)]
                Yd[t] = np.where(active, new[0], 0)
        if lens is not None:
            # ORT zeroes the final state of an empty sequence rather than passing initial_h on.
            states = [np.where((lens == 0)[:, None], 0, s).astype(dt, copy=False) for s in states]
        if reverse:
            Y[:, d] = Yd[ridx, np.arange(Bn)[None, :]] if lens is not None else Yd[::-1]
        for k in range(n_states):
            finals[k][d] = states[k]
    if layout == 1:
        Y = Y.transpose(2, 0, 1, 3)
        finals = [f.transpose(1, 0, 2) for f in finals]
    return (np.ascontiguousarray(Y), *[np.ascontiguousarray(f) for f in finals])


def _wt(ctx, w: np.ndarray) -> np.ndarray:
    """w^T for x @ w^T. Plain fp32 hands BLAS the transposed view (it transposes in the
    kernel); copying every weight on every call cost more than the recurrence on 1-step models."""
    return w.T if ctx.plain else np.ascontiguousarray(w.T)


def _clip(x, clip, biased: bool = False):
    """A gate's pre-activation clamp as ORT's LSTM and GRU do it (rnn_helpers): with a bias input
    `clip_add_bias`, std::min(clip, x) then std::max(-clip, x) with clip FLT_MAX when unset, so
    a NaN becomes +clip and the gate saturates; without one, NaN passes. (RNN clamps otherwise.)"""
    if biased:
        x = np.fmin(x, x.dtype.type(_FLT_MAX if clip is None else clip))  # NaN -> the bound
        return x if clip is None else np.maximum(x, -clip)
    return x if clip is None else np.clip(x, -clip, clip)


_FLT_MAX = float(np.finfo(np.float32).max)


def _any_nan(outs) -> bool:
    return any(o is not None and o.dtype.kind == "f" and np.isnan(o).any() for o in outs)


# ---------------------------------------------------------------- RNN ------------------------


def _rnn(ctx, X, W, R, B, sequence_lens, initial_h, activation_alpha, activation_beta, activations,
         clip, direction, hidden_size, layout):
    num_dir = _num_dir(direction, "RNN")
    acts = _activations(activations, activation_alpha, activation_beta, ["Tanh"], num_dir, "RNN")
    Rt = [_wt(ctx, R[d]) for d in range(num_dir)]
    H = R.shape[-1]
    bias = None if B is None else B[:, :H] + B[:, H:]

    started = set() if initial_h is None else None

    def cell(ctx, d, xw, states, bd):
        if started is not None and d not in started:
            # ORT's first step without initial_h has no h.R^T product (0 * inf would be NaN)
            started.add(d)
            pre = xw + xw.dtype.type(0)
        else:
            pre = xw + ctx.matmul(states[0], Rt[d])
        if bd is not None:
            pre = pre + bd
        pre = ctx.round(_clip(pre, clip))
        return [ctx.round(acts[d][0](pre))]

    Y, Yh = _run(ctx, "RNN", X, W, R, bias, sequence_lens, [initial_h], direction, layout, hidden_size,
                 1, cell, 1)
    return Y, Yh


@op("RNN", since=7)
def rnn7(ctx, X, W, R, B=None, sequence_lens=None, initial_h=None, *, activation_alpha=None,
         activation_beta=None, activations=None, clip=None, direction="forward", hidden_size=None):
    return _rnn(ctx, X, W, R, B, sequence_lens, initial_h, activation_alpha, activation_beta, activations,
                clip, direction, hidden_size, 0)


@op("RNN", since=14)
def rnn14(ctx, X, W, R, B=None, sequence_lens=None, initial_h=None, *, activation_alpha=None,
          activation_beta=None, activations=None, clip=None, direction="forward", hidden_size=None, layout=0):
    return _rnn(ctx, X, W, R, B, sequence_lens, initial_h, activation_alpha, activation_beta, activations,
                clip, direction, hidden_size, layout)


# ---------------------------------------------------------------- GRU ------------------------


def _gru(ctx, X, W, R, B, sequence_lens, initial_h, activation_alpha, activation_beta, activations,
         clip, direction, hidden_size, linear_before_reset, layout):
    num_dir = _num_dir(direction, "GRU")
    acts = _activations(activations, activation_alpha, activation_beta, ["Sigmoid", "Tanh"], num_dir, "GRU")
    H = R.shape[-1]
    Rzr = [_wt(ctx, R[d, :2 * H]) for d in range(num_dir)]
    Rh = [_wt(ctx, R[d, 2 * H:]) for d in range(num_dir)]
    lbr = bool(linear_before_reset)
    # Per direction: bias of z|r (W and R summed), of h from W, of h from R.
    bias = None
    if B is not None:
        bias = [(B[d, :2 * H] + B[d, 3 * H:5 * H], B[d, 2 * H:3 * H], B[d, 5 * H:]) for d in range(num_dir)]

    def cell(ctx, d, xw, states, bd):
        h = states[0]
        f, g = acts[d]
        zr = xw[:, :2 * H] + ctx.matmul(h, Rzr[d])
        if bd is not None:
            zr = zr + bd[0]
        zr = ctx.round(_clip(zr, clip, bd is not None))
        z = ctx.round(f(zr[:, :H]))
        r = ctx.round(f(zr[:, H:]))
        if lbr:
            lin = ctx.matmul(h, Rh[d])
            if bd is not None:
                lin = ctx.round(lin + bd[2])
            pre = xw[:, 2 * H:] + ctx.round(r * lin)
            if bd is not None:
                pre = pre + bd[1]
        else:
            pre = xw[:, 2 * H:] + ctx.matmul(ctx.round(r * h), Rh[d])
            if bd is not None:
                pre = pre + (bd[1] + bd[2])
        pre = ctx.round(_clip(pre, clip, bd is not None))
        hh = ctx.round(g(pre))
        return [ctx.round((1 - z) * hh + z * h)]

    Y, Yh = _run(ctx, "GRU", X, W, R, bias, sequence_lens, [initial_h], direction, layout, hidden_size,
                 3, cell, 1)
    return Y, Yh


@op("GRU", since=7)
def gru7(ctx, X, W, R, B=None, sequence_lens=None, initial_h=None, *, activation_alpha=None,
         activation_beta=None, activations=None, clip=None, direction="forward", hidden_size=None,
         linear_before_reset=0):
    return _gru(ctx, X, W, R, B, sequence_lens, initial_h, activation_alpha, activation_beta, activations,
                clip, direction, hidden_size, linear_before_reset, 0)


@op("GRU", since=14)
def gru14(ctx, X, W, R, B=None, sequence_lens=None, initial_h=None, *, activation_alpha=None,
          activation_beta=None, activations=None, clip=None, direction="forward", hidden_size=None,
          linear_before_reset=0, layout=0):
    return _gru(ctx, X, W, R, B, sequence_lens, initial_h, activation_alpha, activation_beta, activations,
                clip, direction, hidden_size, linear_before_reset, layout)


# ---------------------------------------------------------------- LSTM -----------------------


def _lstm_full_length(ctx, X, W, R, Rt, bias, initial_h, initial_c, direction, num_dir, hidden_size, cell):
    """_run for LSTM without sequence_lens in layout 0 (streaming models: one step per
    call), without its per-call index and mask arrays: the same cell calls, same results."""
    H = _check(X, W, R, num_dir, 4, hidden_size, "LSTM")
    T, Bn, I = X.shape
    dt = X.dtype
    init = []
    for s in (initial_h, initial_c):
        if s is not None and s.shape != (num_dir, Bn, H):
            raise ExecutionError(f"LSTM: initial state has shape {list(s.shape)}, expected {[num_dir, Bn, H]}")
        init.append(s)
    Y = np.empty((T, num_dir, Bn, H), dtype=dt)
    Yh, Yc = np.zeros((num_dir, Bn, H), dtype=dt), np.zeros((num_dir, Bn, H), dtype=dt)
    for d in range(num_dir):
        xw = ctx.matmul(np.ascontiguousarray(X).reshape(T * Bn, I), _wt(ctx, W[d])).reshape(T, Bn, 4 * H)
        states = [np.zeros((Bn, H), dtype=dt) if s is None else np.asarray(s[d], dtype=dt) for s in init]
        bd = None if bias is None else bias[d]
        for t in (range(T - 1, -1, -1) if direction == "reverse" or d == 1 else range(T)):
            states = cell(ctx, d, xw[t], states, bd)
            Y[t, d] = states[0]
        Yh[d], Yc[d] = states
    return Y, Yh, Yc


def _lean_step(pre: np.ndarray, c: np.ndarray, bd, H: int, coupled: bool) -> tuple[np.ndarray, np.ndarray]:
    """One plain-fp32 LSTM step after the matmuls (pre = x.W^T + h.R^T, gates i, o, f, c), in
    place on `pre` with the arithmetic of halfsim's own small-array Sigmoid and Tanh ops:
    sigmoid = 1 / (1 + exp(-x)) and np.tanh in the storage type (numpy's SIMD loops; the
    float64 forms rounded once cost ~3x more per step, streaming models run one step a call),
    the three sigmoid gates (contiguous) in one pass. Returns (h, c)."""
    with quiet():
        if bd is not None:
            pre += bd
        ifo = pre[:, :3 * H]
        np.negative(ifo, out=ifo)
        np.exp(ifo, out=ifo)  # overflow to inf gives 1 / inf = 0
        ifo += ifo.dtype.type(1)
        np.reciprocal(ifo, out=ifo)
        i = pre[:, :H]
        g = np.tanh(pre[:, 3 * H:], out=pre[:, 3 * H:])
        g *= i
        c_new = (1 - i) * c if coupled else pre[:, 2 * H:3 * H] * c
        c_new += g
        h = np.tanh(c_new)
        h *= pre[:, H:2 * H]
    return h, c_new


def _lstm(ctx, X, W, R, B, sequence_lens, initial_h, initial_c, P, activation_alpha, activation_beta,
          activations, clip, direction, hidden_size, input_forget, layout, general: bool = False):
    def fast(outs):
        # The fast paths let a NaN pre-activation through where ORT's biased clamp saturates
        # the gate (_clip). A NaN anywhere reaches the final h or c, so a NaN state with a bias
        # reruns the call on the general cell.
        if B is not None and _any_nan(outs[1:]):
            return _lstm(ctx, X, W, R, B, sequence_lens, initial_h, initial_c, P, activation_alpha, activation_beta,
                         activations, clip, direction, hidden_size, input_forget, layout, general=True)
        return outs

    num_dir = _num_dir(direction, "LSTM")
    H = R.shape[-1]
    Rt = [_wt(ctx, R[d]) for d in range(num_dir)]
    bias = None if B is None else B[:, :4 * H] + B[:, 4 * H:]
    if P is not None and P.shape != (num_dir, 3 * H):
        raise ExecutionError(f"LSTM: P has shape {list(P.shape)}, expected {[num_dir, 3 * H]}")
    coupled = bool(input_forget)
    default_acts = [a.lower() for a in (activations or [])] in ([], ["sigmoid", "tanh", "tanh"] * num_dir)
    batch = X.shape[0] if layout == 1 else X.shape[1]
    if not general and ctx.plain and default_acts and X.dtype in (np.float32, np.float64) and batch * H >= NUMBA_MIN // 4:
        # Fused step: numpy's per-call overhead on the small gate arrays dominated.
        dt = X.dtype
        zb = np.zeros(4 * H, dt)
        zp = np.zeros(3 * H, dt)
        use_clip = clip is not None
        clipv = float(clip) if use_clip else 0.0
        peeps = [zp if P is None else np.ascontiguousarray(P[d], dtype=dt) for d in range(num_dir)]

        def fused(ctx, d, xw, states, bd):
            h, c = states
            pre = xw + ctx.matmul(h, Rt[d])
            hn, cn = np.empty(h.shape, dt), np.empty(h.shape, dt)
            _lstm_gates_nb(pre, np.ascontiguousarray(c, dtype=dt), zb if bd is None else np.ascontiguousarray(bd, dtype=dt),
                           peeps[d], clipv, use_clip, coupled, hn, cn)
            return [hn, cn]
        return fast(_run(ctx, "LSTM", X, W, R, bias, sequence_lens, [initial_h, initial_c], direction, layout,
                         hidden_size, 4, fused, 2))

    if not general and ctx.identity and default_acts and P is None and clip is None and X.dtype in (np.float32, np.float64):
        # Plain fp32 below the numba size: _lean_step, the three sigmoid gates (i, o, f:
        # contiguous) in one pass, ~3x fewer numpy calls per step; streaming models run one
        # step per call.
        def lean(ctx, d, xw, states, bd):
            h, c = states
            return list(_lean_step(xw + ctx.matmul(h, Rt[d]), c, bd, H, coupled))
        if sequence_lens is None and layout == 0:
            return fast(_lstm_full_length(ctx, X, W, R, Rt, bias, initial_h, initial_c, direction, num_dir,
                                          hidden_size, lean))
        return fast(_run(ctx, "LSTM", X, W, R, bias, sequence_lens, [initial_h, initial_c], direction, layout,
                         hidden_size, 4, lean, 2))

    acts = _activations(activations, activation_alpha, activation_beta, ["Sigmoid", "Tanh", "Tanh"],
                        num_dir, "LSTM")

    def cell(ctx, d, xw, states, bd):
        h, c = states
        f, g, hf = acts[d]
        pre = xw + ctx.matmul(h, Rt[d])  # gates i, o, f, c
        p_i = pre[:, :H]
        p_o = pre[:, H:2 * H]
        p_f = pre[:, 2 * H:3 * H]
        p_c = pre[:, 3 * H:]
        if P is not None:
            p_i = p_i + P[d, :H] * c
            p_f = p_f + P[d, 2 * H:] * c
        if bd is not None:
            p_i = p_i + bd[:H]
            p_f = p_f + bd[2 * H:3 * H]
            p_c = p_c + bd[3 * H:]
        i = ctx.round(f(ctx.round(_clip(p_i, clip, bd is not None))))
        if coupled:
            fg = ctx.round(1 - i)
        else:
            fg = ctx.round(f(ctx.round(_clip(p_f, clip, bd is not None))))
        cc = ctx.round(g(ctx.round(_clip(p_c, clip, bd is not None))))
        c_new = ctx.round(fg * c + i * cc)
        if P is not None:
            p_o = p_o + P[d, H:2 * H] * c_new
        if bd is not None:
            p_o = p_o + bd[H:2 * H]
        o = ctx.round(f(ctx.round(_clip(p_o, clip, bd is not None))))
        h_new = ctx.round(o * ctx.round(hf(c_new)))
        return [h_new, c_new]

    return _run(ctx, "LSTM", X, W, R, bias, sequence_lens, [initial_h, initial_c], direction, layout,
                hidden_size, 4, cell, 2)


@op("LSTM", since=7)
def lstm7(ctx, X, W, R, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None, *,
          activation_alpha=None, activation_beta=None, activations=None, clip=None, direction="forward",
          hidden_size=None, input_forget=0):
    return _lstm(ctx, X, W, R, B, sequence_lens, initial_h, initial_c, P, activation_alpha, activation_beta,
                 activations, clip, direction, hidden_size, input_forget, 0)


@op("LSTM", since=14)
def lstm14(ctx, X, W, R, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None, *,
           activation_alpha=None, activation_beta=None, activations=None, clip=None, direction="forward",
           hidden_size=None, input_forget=0, layout=0):
    return _lstm(ctx, X, W, R, B, sequence_lens, initial_h, initial_c, P, activation_alpha, activation_beta,
                 activations, clip, direction, hidden_size, input_forget, layout)


def _specialize_lstm(node, consts: dict):
    """fp32 schedules: an LSTM with constant W, R (and B), default activations, no peepholes,
    clip or sequence_lens gets its summed bias and weight views once per model and a direct
    time loop (streaming models call it once per frame with T = 1: the per-call set-up of the
    general driver was ~25 us of ~60). Same matmuls and step arithmetic as the `lean` path,
    so the same bits; other inputs (large batch, other dtypes) go to the op itself."""
    ins, a = node.inputs, node.attrs
    W, R, B = consts.get(1), consts.get(2), consts.get(3)

    def given(i):
        return len(ins) > i and bool(ins[i])
    if W is None or R is None or (given(3) and B is None) or given(4) or given(7):
        return None
    if a.get("clip") is not None or a.get("layout", 0) != 0 or a.get("activation_alpha") or a.get("activation_beta"):
        return None
    direction = a.get("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        return None
    nd = 2 if direction == "bidirectional" else 1
    acts = [x.lower() for x in (a.get("activations") or [])]
    if acts not in ([], ["sigmoid", "tanh", "tanh"] * nd):
        return None
    dt = W.dtype
    if not isinstance(W, np.ndarray) or dt not in (np.float32, np.float64) or R.dtype != dt or W.ndim != 3 \
            or (B is not None and B.dtype != dt):
        return None
    H = R.shape[-1]
    I = W.shape[2]
    if (a.get("hidden_size") is not None and int(a["hidden_size"]) != H) or W.shape != (nd, 4 * H, I) \
            or R.shape != (nd, 4 * H, H) or (B is not None and B.shape != (nd, 8 * H)):
        return None  # the op reports it
    from ..kernels.blas import _MIN_WORK as _SPLIT_MIN_WORK, matmul
    base = node.impl.fn
    Wt = [W[d].T for d in range(nd)]  # the views _wt hands BLAS under plain fp32
    Rt = [R[d].T for d in range(nd)]
    bias = None if B is None else B[:, :4 * H] + B[:, 4 * H:]
    coupled = bool(a.get("input_forget", 0))
    backward = [direction == "reverse" or d == 1 for d in range(nd)]

    def lstm(ctx, X, W_, R_, B_=None, sequence_lens=None, initial_h=None, initial_c=None, P=None, **attrs):
        if (not ctx.identity or X.dtype != dt or X.ndim != 3 or X.shape[2] != I or sequence_lens is not None
                or X.shape[1] * H >= NUMBA_MIN // 4):
            return base(ctx, X, W_, R_, B_, sequence_lens, initial_h, initial_c, P, **attrs)
        T, Bn = X.shape[:2]
        state_shape = (nd, Bn, H)
        for s in (initial_h, initial_c):
            if s is not None and (s.shape != state_shape or s.dtype != dt):
                return base(ctx, X, W_, R_, B_, sequence_lens, initial_h, initial_c, P, **attrs)
        Y = np.empty((T, nd, Bn, H), dtype=dt)
        Yh, Yc = np.empty(state_shape, dtype=dt), np.empty(state_shape, dtype=dt)  # every row written below
        x2 = np.ascontiguousarray(X).reshape(T * Bn, I)
        # Below the split size the split matmul is np.matmul itself: call it directly.
        mm = np.matmul if T * Bn * I * 4 * H < _SPLIT_MIN_WORK else matmul
        for d in range(nd):
            xw = mm(x2, Wt[d]).reshape(T, Bn, 4 * H)
            h = np.zeros((Bn, H), dtype=dt) if initial_h is None else initial_h[d]
            c = np.zeros((Bn, H), dtype=dt) if initial_c is None else initial_c[d]
            r, bd = Rt[d], None if bias is None else bias[d]
            for t in (range(T - 1, -1, -1) if backward[d] else range(T)):
                h, c = _lean_step(xw[t] + np.matmul(h, r), c, bd, H, coupled)
                Y[t, d] = h
            Yh[d], Yc[d] = h, c
        if bias is not None and _any_nan((Yh, Yc)):  # a NaN gate ORT saturates (_lstm's fast())
            return base(ctx, X, W_, R_, B_, sequence_lens, initial_h, initial_c, P, **attrs)
        return Y, Yh, Yc
    return lstm


lstm7.specialize = lstm14.specialize = _specialize_lstm
