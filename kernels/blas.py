"""BLAS threading for fp32 runs: OpenBLAS is held at one thread while a model runs and large
matmuls are split into single-threaded BLAS calls shared out by run_split's work stealing.

Why: on a machine with more runnable threads than cores, OpenBLAS's own threads wait for
each other at every GEMM; measured on the shared 2-core box, a conv model ran 10-30x slower
with two OpenBLAS threads than with one, while ORT (work stealing) kept its time. Splitting
ourselves keeps both cores busy when they are free and degrades to the calling thread alone
when they are not. Without threadpoolctl installed the limit is a no-op (plain OpenBLAS)."""
from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from typing import Iterator

import numpy as np

from .conv import run_split, threads

_MIN_WORK = 1 << 23  # multiply-adds below which one BLAS call beats dispatching chunks (measured)
_lock = threading.Lock()
_depth = 0
_saved: list = []
_controllers = None


def _blas_controllers() -> list:
    global _controllers
    if _controllers is None:
        try:
            from threadpoolctl import ThreadpoolController
            _controllers = [c for c in ThreadpoolController().lib_controllers if c.user_api == "blas"]
        except Exception:  # not installed, or a BLAS it cannot drive: leave BLAS as it is
            _controllers = []
    return _controllers


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """BLAS at one thread inside the block (re-entrant and thread-safe: the first entrant
    sets it, the last one out restores the previous count)."""
    global _depth
    with _lock:
        if _depth == 0:
            ctl = _blas_controllers()
            _saved[:] = [(c, c.get_num_threads()) for c in ctl]
            for c, n in _saved:
                if n != 1:
                    c.set_num_threads(1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                for c, n in _saved:
                    if n != 1:
                        c.set_num_threads(n)
                _saved.clear()


# Written through out=: numpy hands BLAS the strided block of `out` (ldc = N), no copy.
def _rows(a, b, out, lo, hi):
    np.matmul(a[..., lo:hi, :], b, out=out[..., lo:hi, :])


def _cols(a, b, out, lo, hi):
    np.matmul(a, b[..., lo:hi], out=out[..., lo:hi])


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """np.matmul, split over output rows (or columns when there are fewer rows) on the
    kernel threads when large. Each output element is the same single BLAS dot product
    as in one call, up to the BLAS kernel's blocking."""
    if a.ndim < 2 or b.ndim < 2:
        return np.matmul(a, b)
    if a.ndim > 2 and b.ndim == 2 and math.prod(a.shape[:-2]) > 1 and a.flags.c_contiguous \
            and a.shape[-1] == b.shape[0]:
        # [..., M, K] @ [K, N] is one [prod(...) * M, K] GEMM: numpy would call BLAS once per
        # leading index (transformer activations [batch, seq, K]: 1.5x slower).
        return matmul(a.reshape(-1, a.shape[-1]), b).reshape(a.shape[:-1] + b.shape[-1:])
    M, K = a.shape[-2:]
    N = b.shape[-1]
    mnk = M * N * K
    # Cheap exits before the batch shape: the broadcast batch is at most the product of both.
    if mnk * math.prod(a.shape[:-2]) * math.prod(b.shape[:-2]) < _MIN_WORK or b.shape[-2] != K:
        return np.matmul(a, b)
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    work = mnk * math.prod(batch)
    if work < _MIN_WORK or threads() <= 1:
        return np.matmul(a, b)
    out = np.empty(batch + (M, N), dtype=np.result_type(a.dtype, b.dtype))
    if M >= N:
        run_split(_rows, (a, b, out), M, work)
    else:
        run_split(_cols, (a, b, out), N, work)
    return out
