"""com.microsoft activation and normalization ops that ORT's transformer optimizer writes into
exported models: Gelu, FastGelu, BiasGelu, QuickGelu, SkipLayerNormalization,
SkipSimplifiedLayerNormalization. (LayerNormalization and SimplifiedLayerNormalization live in
the default domain in ORT, see norm.py.)"""
from __future__ import annotations

import numpy as np
import scipy.special as _sp

from .elementwise import down, gelu_erf, gelu_tanh, up
from .norm import layer_norm
from .registry import MS_DOMAIN, op


@op("Gelu", since=1, domain=MS_DOMAIN)
def ms_gelu(ctx, x):
    xf = up(x)
    with np.errstate(all="ignore"):
        return down(gelu_erf(ctx, xf), x.dtype)


@op("BiasGelu", since=1, domain=MS_DOMAIN)
def ms_bias_gelu(ctx, a, b):
    af = up(a)
    with np.errstate(all="ignore"):
        return down(gelu_erf(ctx, ctx.round(af + up(b))), a.dtype)


@op("FastGelu", since=1, domain=MS_DOMAIN)
def ms_fast_gelu(ctx, x, bias=None):
    xf = up(x)
    with np.errstate(all="ignore"):
        if bias is not None:
            xf = ctx.round(xf + up(bias))
        return down(gelu_tanh(ctx, xf), x.dtype)


@op("QuickGelu", since=1, domain=MS_DOMAIN)
def ms_quick_gelu(ctx, x, *, alpha=1.702):
    xf = up(x)
    with np.errstate(all="ignore"):
        s = ctx.round(_sp.expit(ctx.round(xf * xf.dtype.type(alpha))))
        return down(xf * s, x.dtype)


def _skip_sum(ctx, x, skip, bias):
    s = up(x) + up(skip)
    if bias is not None:
        s = ctx.round(s) + up(bias)
    return ctx.round(s)


@op("SkipLayerNormalization", since=1, domain=MS_DOMAIN)
def ms_skip_layernorm(ctx, x, skip, gamma, beta=None, bias=None, *, epsilon=1e-12):
    s = _skip_sum(ctx, x, skip, bias)
    y, mean, inv = layer_norm(ctx, s, gamma, beta, -1, epsilon, 1)
    return down(y, x.dtype), mean, inv, down(s, x.dtype)


@op("SkipSimplifiedLayerNormalization", since=1, domain=MS_DOMAIN)
def ms_skip_simplified_layernorm(ctx, x, skip, gamma, bias=None, *, epsilon=1e-12):
    s = _skip_sum(ctx, x, skip, bias)
    y, _, inv = layer_norm(ctx, s, gamma, None, -1, epsilon, 1, simplified=True)
    # ORT writes no mean for the simplified form; zeros keep a consumer of that output running
    return down(y, x.dtype), np.zeros(inv.shape, inv.dtype), inv, down(s, x.dtype)
