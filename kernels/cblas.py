"""numpy's own OpenBLAS sgemm, called through ctypes: strided operands (ld > row length) and
beta = 1 accumulation, which np.matmul cannot express without copies. ctypes releases the GIL
for the whole call, so tiles of one op run on the kernel threads without re-entering Python
inside BLAS. It is the library kernels/blas.py holds at one thread during a run.

Only ILP64 builds with a known symbol are bound (numpy >= 2 wheels: scipy_cblas_sgemm64_);
anywhere else `sgemm()` returns None and callers keep their numpy path."""
from __future__ import annotations

import ctypes
from typing import Callable

_ROW_MAJOR, _NO_TRANS = 101, 111
_SYMBOLS = ("scipy_cblas_sgemm64_", "cblas_sgemm64_")  # 64-bit integer interfaces only
_fn: list = []  # [bound function or None] once looked up
_addr: list = []  # [the bound symbol's address, 0 when none] once looked up


def sgemm() -> Callable | None:
    """A function f(M, N, K, a_ptr, lda, b_ptr, ldb, beta, c_ptr, ldc) computing, row-major and
    untransposed, C = A @ B + beta * C on float32 buffers given by address; None when numpy's
    BLAS offers no bindable ILP64 sgemm."""
    if not _fn:
        _fn.append(_bind())
    return _fn[0]


def sgemm_address() -> int:
    """The address of the same ILP64 cblas_sgemm (for nogil numba drivers that call it
    through a function pointer: kernels/convtile.py), or 0 when there is none."""
    if not _addr:
        f = _lookup()
        _addr.append(ctypes.cast(f, ctypes.c_void_p).value or 0 if f is not None else 0)
    return _addr[0]


def _lookup():
    """The ctypes function of numpy's ILP64 cblas_sgemm, or None."""
    from .blas import _blas_controllers
    for ctl in _blas_controllers():
        if getattr(ctl, "internal_api", "") != "openblas":
            continue
        try:
            lib = ctypes.CDLL(ctl.filepath)
        except OSError:
            continue
        for name in _SYMBOLS:
            f = getattr(lib, name, None)
            if f is None:
                continue
            i64, ptr = ctypes.c_int64, ctypes.c_void_p
            f.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, i64, i64, i64, ctypes.c_float, ptr, i64, ptr, i64,
                          ctypes.c_float, ptr, i64]
            f.restype = None
            return f
    return None


def _bind() -> Callable | None:
    f = _lookup()
    if f is None:
        return None

    def call(M, N, K, a, lda, b, ldb, beta, c, ldc, _f=f):
        _f(_ROW_MAJOR, _NO_TRANS, _NO_TRANS, M, N, K, 1.0, a, lda, b, ldb, beta, c, ldc)
    return call
