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

import numpy as np

from .conv import run_split, threads

_MIN_WORK = 1 << 23  # multiply-adds below which one BLAS call beats dispatching chunks (measured)
_lock = threading.Lock()
_depth = 0
_saved: list = []
_controllers = None
_fns = None


def _blas_controllers() -> list:
    global _controllers
    if _controllers is None:
        try:
            from threadpoolctl import ThreadpoolController
            _controllers = [c for c in ThreadpoolController().lib_controllers if c.user_api == "blas"]
        except Exception:  # not installed, or a BLAS it cannot drive: leave BLAS as it is
            _controllers = []
    return _controllers


def _thread_fns() -> list:
    """(get, set) thread-count functions per BLAS: OpenBLAS's own C entry points where
    threadpoolctl found them (threadpoolctl's wrappers cost ~2 us a call, 4 calls a run: a
    tenth of a streaming model's run), else the controller's methods."""
    global _fns
    if _fns is None:
        fns = []
        for c in _blas_controllers():
            get = set_ = None
            if getattr(c, "internal_api", "") == "openblas" and getattr(c, "threading_layer", "") != "openmp":
                sym = getattr(c, "_get_symbol", None)  # applies numpy's scipy_openblas64_ prefix/suffix
                try:
                    get, set_ = sym("openblas_get_num_threads"), sym("openblas_set_num_threads")
                except Exception:
                    get = set_ = None
            if get is None or set_ is None:
                get, set_ = c.get_num_threads, c.set_num_threads
            fns.append((get, set_))
        _fns = fns
    return _fns


class _SingleThreadedBlas:
    """BLAS at one thread inside the block (re-entrant and thread-safe: the first entrant
    sets it, the last one out restores the previous count)."""
    __slots__ = ()

    def __enter__(self) -> None:
        global _depth
        with _lock:
            if _depth == 0:
                _saved[:] = [(set_, n) for get, set_ in _thread_fns() for n in (get(),) if n != 1]
                for set_, _ in _saved:
                    set_(1)
            _depth += 1

    def __exit__(self, *exc) -> None:
        global _depth
        with _lock:
            _depth -= 1
            if _depth == 0:
                for set_, n in _saved:
                    set_(n)
                _saved.clear()


_SINGLE = _SingleThreadedBlas()


def single_threaded_blas() -> _SingleThreadedBlas:
    """A context manager holding BLAS at one thread (see _SingleThreadedBlas)."""
    return _SINGLE


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
