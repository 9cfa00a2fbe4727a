"""Float32 Sigmoid as ORT's CPU EP computes it (the MLAS rational form of kernels/mlas.py)
over [lo, hi) ranges, so that run_split can share a large tensor between threads (the loop
is nogil). Bit-exact with ORT, one pass instead of numpy's four (negate, exp, add, reciprocal)."""
from __future__ import annotations

import numpy as np
from numba import njit

from .conv import run_split
from .mlas import logistic_f32


@njit(cache=True, nogil=True, error_model="numpy")
def _logistic_range(x, out, lo, hi):
    # Zero-based loop over slices: LLVM vectorizes it (a loop from lo measured 4x slower).
    xs, os_ = x[lo:hi], out[lo:hi]
    for i in range(xs.size):
        os_[i] = logistic_f32(xs[i])


def logistic(x: np.ndarray) -> np.ndarray:
    """ORT CPU Sigmoid of a float32 array (a new array), split across kernel threads when large."""
    xc = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty(xc.shape, np.float32)
    n = xc.size
    # ~0.6 ns per element serially: split from 256k elements (~0.15 ms) on, where waking a
    # helper thread costs much less than the work it takes.
    run_split(_logistic_range, (xc.reshape(-1), out.reshape(-1)), n, n, min_work=1 << 18)
    return out
