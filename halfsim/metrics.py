"""Distance metrics between a candidate and a reference array (the contract's names).

Non-finite values: elements where the candidate is NaN/inf and the reference does not hold the
same non-finite value are counted in `nonfinite`; if there are any, every distance is inf (a
prediction that turned finite numbers into NaN is infinitely far off). Elements that are the
same non-finite value on both sides (NaN inputs propagating) are left out of the distances."""
from __future__ import annotations

from typing import Callable

import numpy as np

from .errors import HalfsimError

METRICS = ("max_abs", "max_rel", "rel_l2", "cosine", "top1", "max_ulp")


def _pair(a, b) -> tuple[np.ndarray, np.ndarray, int]:
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise HalfsimError(f"shapes differ: {list(a.shape)} against {list(b.shape)}")
    a64 = a.astype(np.float64, copy=False).ravel()
    b64 = b.astype(np.float64, copy=False).ravel()
    fa, fb = np.isfinite(a64), np.isfinite(b64)
    same_nf = (~fa) & (~fb) & ((a64 == b64) | (np.isnan(a64) & np.isnan(b64)))
    bad = int(np.count_nonzero(~(fa & fb) & ~same_nf))
    keep = fa & fb
    return a64[keep], b64[keep], bad


def nonfinite(a, b) -> int:
    return _pair(a, b)[2]


def max_abs(a, b) -> float:
    x, y, bad = _pair(a, b)
    if bad:
        return float("inf")
    return float(np.max(np.abs(x - y))) if x.size else 0.0


def max_rel(a, b) -> float:
    """max |a - b| / |b| over elements; where b == 0 the denominator is the smallest normal
    float32, so a nonzero value against an exact zero counts as a huge relative error."""
    x, y, bad = _pair(a, b)
    if bad:
        return float("inf")
    if not x.size:
        return 0.0
    den = np.maximum(np.abs(y), np.finfo(np.float32).tiny)
    return float(np.max(np.abs(x - y) / den))


def rel_l2(a, b) -> float:
    """||a - b||_2 / ||b||_2 (0 when both are zero, inf when only the reference is)."""
    x, y, bad = _pair(a, b)
    if bad:
        return float("inf")
    num = float(np.linalg.norm(x - y))
    den = float(np.linalg.norm(y))
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


def cosine(a, b) -> float:
    """1 - cosine similarity (0 for identical directions; two zero vectors count as identical)."""
    x, y, bad = _pair(a, b)
    if bad:
        return float("inf")
    nx, ny = float(np.linalg.norm(x)), float(np.linalg.norm(y))
    if nx == 0.0 and ny == 0.0:
        return 0.0
    if nx == 0.0 or ny == 0.0:
        return 1.0
    return float(max(0.0, 1.0 - float(np.dot(x, y)) / (nx * ny)))


def top1(a, b) -> float:
    """Fraction of rows (all axes but the last) whose argmax differs."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise HalfsimError(f"shapes differ: {list(a.shape)} against {list(b.shape)}")
    if a.ndim == 0 or a.size == 0:
        return 0.0
    ra = a.reshape(-1, a.shape[-1]).astype(np.float64)
    rb = b.reshape(-1, b.shape[-1]).astype(np.float64)
    # NaN in a row makes its argmax meaningless: count the row as changed unless identical.
    ia = np.where(np.isnan(ra).any(1), -1, np.argmax(np.nan_to_num(ra, nan=0.0), axis=1))
    ib = np.where(np.isnan(rb).any(1), -1, np.argmax(np.nan_to_num(rb, nan=0.0), axis=1))
    return float(np.mean(ia != ib))


def max_ulp(a, b, fmt="fp32") -> float:
    """Largest distance in units in the last place of `fmt` (fp32 by default)."""
    from .formats import ulp_distance
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    x, y, bad = _pair(a, b)
    if bad:
        return float("inf")
    if not x.size:
        return 0.0
    return float(np.max(ulp_distance(x.astype(np.float32), y.astype(np.float32), fmt)))


_FUNCS: dict[str, Callable] = {
    "max_abs": max_abs, "max_rel": max_rel, "rel_l2": rel_l2, "cosine": cosine,
    "top1": top1, "max_ulp": max_ulp,
}


def get(name: str) -> Callable:
    try:
        return _FUNCS[name]
    except KeyError:
        raise HalfsimError(f"unknown metric {name!r} (choose from {', '.join(METRICS)})") from None


def all_metrics(a, b) -> dict:
    """The contract's per-output record: every distance plus the nonfinite count."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.dtype.kind not in "fc" or b.dtype.kind not in "fc":
        diff = int(np.count_nonzero(a != b)) if a.shape == b.shape else a.size
        d = float(diff > 0)
        return {"max_abs": d, "max_rel": d, "rel_l2": d, "cosine": d, "max_ulp": d, "nonfinite": 0,
                "mismatched": diff}
    return {"max_abs": max_abs(a, b), "max_rel": max_rel(a, b), "rel_l2": rel_l2(a, b),
            "cosine": cosine(a, b), "max_ulp": max_ulp(a, b), "nonfinite": nonfinite(a, b)}
