"""The op registry: (domain, op_type) -> implementations keyed by the opset version where
their semantics start. Adding an op is one decorated function in the family module:

    @op("Relu", since=6)
    def relu(ctx, x):
        return np.maximum(x, 0)

Inputs arrive positionally (None for an omitted optional input; variadic inputs as *args),
ONNX attributes as keyword arguments already converted to Python values (ints, floats,
bytes->str, lists, numpy tensors, subgraphs as halfsim Graph objects). Return one array or
a tuple of arrays (None for an omitted optional output). `ctx` is the node's OpContext:
its precision and the accumulate-aware helpers (ctx.matmul, ctx.sum, ...).
"""
from __future__ import annotations

import contextlib
import inspect
import threading
from dataclasses import dataclass
from typing import Callable, ContextManager

import numpy as np
import onnx.defs

from ..errors import UnsupportedOpError

MS_DOMAIN = "com.microsoft"


@dataclass(frozen=True)
class OpImpl:
    domain: str
    op_type: str
    since: int
    fn: Callable
    attr_names: frozenset | None  # None: accepts any attribute (**kwargs)
    # Ops whose float outputs are not new values (Reshape, Gather, ...) are not re-rounded.
    data_movement: bool


_REGISTRY: dict[tuple[str, str], list[OpImpl]] = {}

# ---- floating-point error state --------------------------------------------------------------
# ONNX arithmetic lets inf and NaN propagate silently, so ops compute under numpy's "ignore"
# error state. numpy's errstate costs ~1.3 us per entry, more than a small Add itself; an fp32
# run sets it once for all its ops (quiet_run) and the ops' quiet() is then a no-op. The flag
# is per thread, as numpy's error state is (kernel pool threads keep their own).
_quiet_state = threading.local()
_NO_OP = contextlib.nullcontext()


def quiet() -> ContextManager:
    """np.errstate(all="ignore") for an op's arithmetic, or nothing inside quiet_run."""
    return _NO_OP if getattr(_quiet_state, "on", False) else np.errstate(all="ignore")


class quiet_run:
    """Every op inside runs under np.errstate(all="ignore"), entered once. Re-entrant."""
    __slots__ = ("_err", "_prev")

    def __enter__(self) -> None:
        self._prev = getattr(_quiet_state, "on", False)
        if not self._prev:
            self._err = np.errstate(all="ignore")
            self._err.__enter__()
            _quiet_state.on = True

    def __exit__(self, *exc) -> None:
        if not self._prev:
            _quiet_state.on = False
            self._err.__exit__(*exc)


def op(op_type: str, since: int = 1, domain: str = "", *, data_movement: bool = False):
    """Register `fn` for `op_type` from opset `since` (of `domain`) on."""
    def deco(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        names = [p.name for p in sig.parameters.values() if p.kind == p.KEYWORD_ONLY]
        any_kw = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
        impl = OpImpl(domain, op_type, since, fn, None if any_kw else frozenset(names), data_movement)
        lst = _REGISTRY.setdefault((domain, op_type), [])
        lst[:] = [i for i in lst if i.since != since] + [impl]
        lst.sort(key=lambda i: i.since)
        return fn
    return deco


def _schema_since(op_type: str, opset: int, domain: str) -> int:
    """The since_version of the ONNX schema in force at `opset`; `opset` if onnx does not know it."""
    try:
        return onnx.defs.get_schema(op_type, opset, domain).since_version
    except Exception:
        return opset


def resolve(op_type: str, domain: str, opset: int, node: str = "") -> OpImpl:
    _ensure_loaded()
    dom = "" if domain == "ai.onnx" else domain
    impls = _REGISTRY.get((dom, op_type))
    if not impls:
        raise UnsupportedOpError(op_type, dom, opset, node)
    version = _schema_since(op_type, opset, dom) if dom in ("", MS_DOMAIN) else opset
    best = None
    for impl in impls:
        if impl.since <= version:
            best = impl
    if best is None:
        raise UnsupportedOpError(op_type, dom, opset, node)
    return best


def registered() -> list[tuple[str, str, int]]:
    _ensure_loaded()
    return sorted((i.domain, i.op_type, i.since) for lst in _REGISTRY.values() for i in lst)


_loaded = False


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        from . import _families  # noqa: F401  (imports every family module)
