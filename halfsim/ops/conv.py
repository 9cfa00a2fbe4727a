"""Convolutions: Conv, ConvTranspose, ConvInteger, QLinearConv.

Conv is im2col + one batched ctx.matmul (groups are the batch), so every output is one inner
product of length C/group * prod(kernel) in the plan's accumulation format. ConvTranspose is,
for non-plain plans, the equivalent Conv on the stride-dilated input with flipped weights (one
inner product per output again); plain fp32 uses GEMM + col2im, which is faster. Depthwise 2-D
conv in plain fp32 uses a direct numba kernel (im2col would copy the input prod(kernel) times)."""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..errors import ExecutionError, ModelError
from ..kernels import convtile
from ..kernels.conv import run_split, threads
from .linalg import int_matmul, is_float, requantize, sgemm_exact
from .registry import op

_AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")
_TILE_BYTES = 1 << 20  # im2col block size for the tiled fp32 path
_PAR_WORK = 1 << 21  # multiply-adds from which an im2col conv's row tiles go to the kernel threads
_MIN_TILE_COLS = 128  # output columns a parallel conv tile holds at the least
_DRIVER_MIN_WORK = 1 << 14  # multiply-adds from which a 1x1 conv runs as driver tiles (below: numba's call costs ~5 us more)
_POINTWISE_PAR_WORK = 1 << 23  # multiply-adds from which a 1x1 conv's column tiles go to the kernel threads


def _ints(v, n, default, what):
    if v is None or len(v) == 0:
        return [default] * n
    if len(v) != n:
        raise ModelError(f"{what} has {len(v)} values, expected {n}")
    return [int(x) for x in v]


def window_geometry(in_sp, kernel, strides, dilations, pads, auto_pad, *, ceil_mode=0, op_name="Conv"):
    """Output size and (begin, end) pads per spatial axis, as ONNX / ORT define them."""
    nd = len(kernel)
    if auto_pad not in _AUTO_PADS:
        raise ModelError(f"{op_name}: unknown auto_pad {auto_pad!r}")
    strides = _ints(strides, nd, 1, f"{op_name} strides")
    dilations = _ints(dilations, nd, 1, f"{op_name} dilations")
    pads = _ints(pads, 2 * nd, 0, f"{op_name} pads")
    if min(strides) < 1 or min(dilations) < 1 or min(kernel) < 1:
        raise ModelError(f"{op_name}: strides, dilations and kernel_shape must be positive")
    if min(pads) < 0:
        raise ModelError(f"{op_name}: pads must be non-negative")
    out, pb, pe = [], [], []
    for i in range(nd):
        n, k, s, d = int(in_sp[i]), kernel[i], strides[i], dilations[i]
        dk = (k - 1) * d + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            o = -(-n // s)
            total = max(0, (o - 1) * s + dk - n)
            b = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            e = total - b
        else:
            b, e = (0, 0) if auto_pad == "VALID" else (pads[i], pads[i + nd])
            span = n + b + e - dk
            if ceil_mode:
                o = -(-span // s) + 1
                # A window that would start inside the end padding is dropped.
                if (o - 1) * s >= n + b:
                    o -= 1
            else:
                o = span // s + 1
        if o < 0 or (o == 0 and n > 0):
            raise ExecutionError(f"{op_name}: kernel {kernel} does not fit the input {list(in_sp)} with pads {pads}")
        out.append(max(o, 0))
        pb.append(b)
        pe.append(e)
    return out, pb, pe, strides, dilations


def pad_spatial(x: np.ndarray, pb, pe, value=0) -> np.ndarray:
    """Pad (or, for negative pads, crop) the trailing spatial axes."""
    if not any(pb) and not any(pe):
        return x
    if min(pb) < 0 or min(pe) < 0:
        crop = tuple(slice(max(0, -b), x.shape[2 + i] - max(0, -e)) for i, (b, e) in enumerate(zip(pb, pe)))
        x = x[(slice(None), slice(None)) + crop]
        pb = [max(0, b) for b in pb]
        pe = [max(0, e) for e in pe]
        if not any(pb) and not any(pe):
            return x
    shape = x.shape[:2] + tuple(s + b + e for s, b, e in zip(x.shape[2:], pb, pe))
    xp = np.full(shape, value, dtype=x.dtype)
    xp[(slice(None), slice(None)) + tuple(slice(b, b + s) for b, s in zip(pb, x.shape[2:]))] = x
    return xp


def windows(xp: np.ndarray, kernel, out_sp, strides, dilations) -> np.ndarray:
    """Read-only view (N, C, *kernel, *out) of the sliding windows of padded `xp`."""
    st = xp.strides
    sp = st[2:]
    shape = xp.shape[:2] + tuple(kernel) + tuple(out_sp)
    strides = st[:2] + tuple(d * s for d, s in zip(dilations, sp)) + tuple(s * q for s, q in zip(strides, sp))
    if xp.flags.c_contiguous and xp.size:
        # The ndarray constructor over xp's buffer: ~10x cheaper than as_strided, which
        # matters for the many tiny convs of streaming models.
        v = np.ndarray(shape, xp.dtype, xp, 0, strides)
        v.flags.writeable = False
        return v
    return as_strided(xp, shape, strides, writeable=False)


def _conv_float(ctx, x, w, b, group, kernel, out_sp, strides, dilations, pb, pe, wt_cache=None):
    N, C = x.shape[:2]
    M = w.shape[0]
    Cg, Mg = C // group, M // group
    nd = len(kernel)
    K = Cg * math.prod(kernel)
    P = math.prod(out_sp)
    if (ctx.plain and nd == 2 and Cg == 1 and x.dtype in (np.float32, np.float64)
            and math.prod(kernel) > 1 and N * M * P > 0):
        from ..kernels.conv import depthwise2d_call  # numba: compiled on first use
        return depthwise2d_call(x, w, b, out_sp, strides, dilations, pb)
    if (ctx.plain and nd == 2 and group == 1 and x.dtype == np.float32 and w.dtype == np.float32
            and math.prod(kernel) > 1 and N * M * P > 0 and C > 0 and _use_shifted(C, M, kernel, out_sp, strides, dilations)):
        return _conv_shifted(x, _taps_first(w, wt_cache), b, out_sp, dilations, pb)
    if all(k == 1 for k in kernel) and not any(pb) and not any(pe):
        if ctx.plain and P == 1 and group == 1 and all(d == 1 for d in x.shape[2:]):
            # Pointwise conv of a pooled vector (squeeze-excitation gates): one (N, C) x (C, M)
            # GEMM; the batched im2col route costs ~25 us of numpy calls for a few hundred MACs.
            y = np.matmul(x.reshape(N, C), w.reshape(M, C).T)
            if b is not None:
                y += b
            return y.reshape((N, M) + tuple(out_sp))
        if (ctx.plain and group == 1 and all(s == 1 for s in strides) and x.dtype == np.float32
                and w.dtype == np.float32 and x.flags.c_contiguous and N * M * P * C >= _DRIVER_MIN_WORK):
            fptr = _sgemm_address()
            if fptr:
                return _conv_pointwise_driver(fptr, x, w, b, N, M, C, P, out_sp)
        xs = x[(slice(None), slice(None)) + tuple(slice(None, o * s, s) for o, s in zip(out_sp, strides))]
        cols = xs.reshape(N, group, Cg, P)
    else:
        # A strided window view copied by reshape: measured faster than a numba im2col.
        xp = pad_spatial(x, pb, pe)
        if (ctx.plain and nd == 2 and x.dtype == np.float32 and w.dtype == np.float32 and xp.flags.c_contiguous
                and N * M * P * K > 0):
            fptr = _driver_address(out_sp[1])
            if fptr:
                return _conv_im2col_driver(fptr, xp, w, b, N, group, Mg, K, out_sp, kernel, strides, dilations)
        win = windows(xp, kernel, out_sp, strides, dilations)
        rows = max(1, _TILE_BYTES // max(1, N * K * group * math.prod(out_sp[1:]) * x.itemsize))
        if ctx.plain and N * M * P * K >= _PAR_WORK and out_sp[0] > 1 and threads() > 1:
            return _conv_tiles_parallel(win, w, b, N, group, Mg, K, out_sp)
        if ctx.plain and K >= 64 and rows < out_sp[0]:
            # Row tiles keep each column block cache-resident between the copy and its GEMM
            # (measured 5-35% faster on large 3x3 convs); every output is still one dot product.
            wm = w.reshape(group, Mg, K)
            inner = math.prod(out_sp[1:])
            y = np.empty((N, group, Mg, P), dtype=np.result_type(x.dtype, w.dtype))
            for i0 in range(0, out_sp[0], rows):
                i1 = min(out_sp[0], i0 + rows)
                cols = win[(Ellipsis, slice(i0, i1)) + (slice(None),) * (nd - 1)].reshape(N, group, K, (i1 - i0) * inner)
                y[..., i0 * inner:i1 * inner] = ctx.matmul(wm, cols)
            return _add_bias(ctx, y.reshape((N, M) + tuple(out_sp)), b)
        cols = win.reshape(N, group, K, P)
    y = ctx.matmul(w.reshape(group, Mg, K), cols).reshape((N, M) + tuple(out_sp))
    return _add_bias(ctx, y, b)


_SHIFT_MIN_WORK = 1 << 20  # multiply-adds from which the shifted-GEMM conv beats im2col (measured)
_SHIFT_TILE_BYTES = 1 << 19  # one tile's output block (M x rows * Wp floats): stays in L2 across the taps


def _use_shifted(C, M, kernel, out_sp, strides, dilations) -> bool:
    """Stride-1 convs with wide rows. Strided convs would need the input split into stride
    phases first: measured 1.0-1.5x slower than im2col. Each output row carries (KW - 1) * dw
    dropped columns. Against the im2col tile driver (one thread, 3x3, CPU): 0.74x at 104-wide
    rows, 0.80-0.92x at 208/80/40 (64 and 32 channels), 1.0x at 40 with 128 channels, 1.14x
    at 33 (48 -> 192 channels): so from 40-wide rows (the numpy im2col it was first measured
    against lost from 32 on)."""
    if max(strides) > 1 or M * C * math.prod(kernel) * math.prod(out_sp) < _SHIFT_MIN_WORK:
        return False
    return out_sp[1] >= 20 * (kernel[1] - 1) * dilations[1] and _sgemm() is not None


def _sgemm():
    from ..kernels.cblas import sgemm
    return sgemm()


def _sgemm_address() -> int:
    """sgemm's address for the nogil tile drivers; 0 (the numpy/ctypes tiles) when unbound or
    when HALFSIM_NO_CONV_DRIVER is set at the first conv (A/B timing of the two routes)."""
    if not _ADDR:
        from ..kernels.cblas import sgemm_address
        _ADDR.append(0 if os.environ.get("HALFSIM_NO_CONV_DRIVER") else sgemm_address())
    return _ADDR[0]


_ADDR: list = []  # [sgemm's address or 0], looked up once (a lookup per conv cost ~6 us)
_DRIVER_MIN_OW = 8


def _driver_address(ow: int) -> int:
    """_sgemm_address() for maps at least _DRIVER_MIN_OW wide, else 0. Column-vector maps
    (magika's only conv, a 1-D conv exported as (512, 1) with a (5, 1) kernel) measured no
    faster through the driver (39.2 vs 39.6 ms CPU) and it would load numba's LLVM (~50 MB)
    into a model that otherwise never does (peak memory 0.92x -> 2.33x of ORT's)."""
    return _sgemm_address() if ow >= _DRIVER_MIN_OW else 0


_EMPTY32 = np.empty(0, np.float32)


def _taps_first(w: np.ndarray, cache: list | None) -> np.ndarray:
    """Weights (M, C, KH, KW) as (KH, KW, M, C): one contiguous M x C matrix per tap. With a
    cache (constant weights of a specialized Conv) it is made once per weight tensor."""
    if cache is not None and cache[0] is w:
        return cache[1]
    wt = np.ascontiguousarray(w.transpose(2, 3, 0, 1))
    if cache is not None:
        cache[:] = [w, wt]
    return wt


def _conv_shifted(x, wt, b, out_sp, dilations, pb):
    """Plain fp32 stride-1 2-D conv without im2col: y = sum over taps (a, c) of W[:, :, a, c]
    @ (the padded input shifted by the tap), one strided sgemm per tap accumulating with
    beta = 1. In the padded image of width Wp, output (i, j) sits at flat column i * Wp + j
    and tap (a, c) reads the image at that column + a*dh*Wp + c*dw, so every tap's operand is
    the padded image itself at an offset (ldb = its plane size). The Wp - OW columns past each
    row's end are computed and dropped when the block is copied out with the bias. Tiles of
    output rows (per image) run on the kernel threads; ctypes releases the GIL for each sgemm
    and numpy for the copy-out, so a tile holds the GIL only between calls. Each output is a
    sum of per-tap dot products of length C, then the bias (im2col: one dot product of length
    C*KH*KW, then the bias): the same values up to fp32 summation order."""
    sgemm = _sgemm()
    N, C, H, W = x.shape
    KH, KW, M = wt.shape[:3]
    (OH, OW), (dh, dw) = out_sp, dilations
    Hp, Wp = OH + (KH - 1) * dh, OW + (KW - 1) * dw
    # One slack row: the dropped columns of the last output row read past the plane's end.
    xp = np.zeros((N, C, Hp + 1, Wp), dtype=np.float32)
    r1, c1 = min(H, Hp - pb[0]), min(W, Wp - pb[1])
    xp[:, :, pb[0]:pb[0] + r1, pb[1]:pb[1] + c1] = x[:, :, :r1, :c1]
    plane = (Hp + 1) * Wp
    taps = [(wt[a, c].ctypes.data, a * dh * Wp + c * dw) for a in range(KH) for c in range(KW)]
    y = np.empty((N, M, OH, OW), dtype=np.float32)
    bias = None if b is None else np.ascontiguousarray(b, dtype=np.float32).reshape(M, 1, 1)
    rows = max(1, min(OH, _SHIFT_TILE_BYTES // (4 * M * Wp)))
    if threads() > 1:
        rows = max(1, min(rows, -(-OH // -(-2 * threads() // N))))  # >= 2 tiles a thread
        rows = max(rows, -(-_MIN_TILE_COLS // Wp))
    per_image = -(-OH // rows)
    work = N * M * C * KH * KW * OH * OW
    fptr = _driver_address(OW)
    if fptr:
        # One nogil numba call per chunk of tiles (kernels/convtile.py): no GIL between calls.
        offs = np.array([off for _, off in taps], dtype=np.int64)
        bias1 = _EMPTY32 if bias is None else bias.reshape(M)
        run_split(convtile.shifted_tiles, (fptr, xp.reshape(-1), wt.reshape(-1), offs, bias1, y, C, plane, Wp, rows,
                                  per_image), N * per_image, work, min_work=_POINTWISE_PAR_WORK)
        return y
    base = xp.ctypes.data

    def tiles(lo, hi):
        buf = np.empty(M * rows * Wp, dtype=np.float32)
        for t in range(lo, hi):
            n, i0 = divmod(t, per_image)
            i0 *= rows
            i1 = min(OH, i0 + rows)
            L = (i1 - i0) * Wp
            beta = 0.0
            for wa, off in taps:
                sgemm(M, L, C, wa, C, base + 4 * (n * C * plane + off + i0 * Wp), plane, beta, buf.ctypes.data, L)
                beta = 1.0
            blk = buf[:M * L].reshape(M, i1 - i0, Wp)[:, :, :OW]
            if bias is None:
                y[n, :, i0:i1] = blk
            else:
                np.add(blk, bias, out=y[n, :, i0:i1])
    run_split(tiles, (), N * per_image, work, min_work=_PAR_WORK)
    return y


def _tiles(win, wm, bias, y, inner, rows, per_image, lo, hi):
    """Tiles [lo, hi) of a plain fp32 conv; tile t is image t // per_image, output rows
    `rows` * (t % per_image) onward: copy its window block (im2col), multiply it straight
    into its columns of y, add the bias while the block is in cache. numpy releases the GIL
    in all three, so tiles run on the kernel threads."""
    group, K = wm.shape[0], wm.shape[-1]
    OH = win.shape[(win.ndim - 2) // 2 + 2]  # win: (N, C, *kernel, *out)
    rest = (slice(None),) * ((win.ndim - 2) // 2 - 1)
    for t in range(lo, hi):
        n, i0 = divmod(t, per_image)
        i0 *= rows
        i1 = min(OH, i0 + rows)
        cols = win[(n, Ellipsis, slice(i0, i1)) + rest].reshape(group, K, (i1 - i0) * inner)
        out = y[n, ..., i0 * inner:i1 * inner]
        np.matmul(wm, cols, out=out)
        if bias is not None:
            out += bias


def _conv_tiles_parallel(win, w, b, N, group, Mg, K, out_sp):
    """im2col + GEMM over (image, output-row block) tiles shared out on the kernel threads
    (work stealing): a tile's copy, GEMM (single-threaded BLAS) and bias run on one thread,
    so the whole conv, not only its GEMM, uses the cores. Tiles hold ~_TILE_BYTES of columns
    (cache-resident between copy and GEMM, and wide enough for an efficient GEMM). Each
    output is still one BLAS dot product of length K, as in the serial path."""
    inner = math.prod(out_sp[1:])
    y = np.empty((N, group, Mg, math.prod(out_sp)), dtype=np.result_type(win.dtype, w.dtype))
    bias = None if b is None else b.astype(y.dtype, copy=False).reshape(group, Mg, 1)
    rows = _tile_rows(K * group, inner, win.itemsize, N, out_sp[0])
    per_image = -(-out_sp[0] // rows)
    run_split(_tiles, (win, w.reshape(group, Mg, K), bias, y, inner, rows, per_image), N * per_image,
              N * group * Mg * K * math.prod(out_sp), min_work=_PAR_WORK)
    return y.reshape((N, group * Mg) + tuple(out_sp))


def _tile_rows(K, inner, itemsize, N, out_rows) -> int:
    """Output rows per parallel im2col tile: ~_TILE_BYTES of columns (cache-resident between
    copy and GEMM), at least two tiles per thread so that a descheduled helper leaves little
    behind, and no tile narrower than _MIN_TILE_COLS columns (each tile's GEMM re-packs the
    whole weight matrix: narrow tiles of small feature maps cost CPU and gain nothing)."""
    rows = max(1, _TILE_BYTES // max(1, K * inner * itemsize))
    rows = max(1, min(rows, -(-out_rows // -(-2 * threads() // N))))
    return max(rows, -(-_MIN_TILE_COLS // inner))


def _conv_im2col_driver(fptr, xp, w, b, N, group, Mg, K, out_sp, kernel, strides, dilations):
    """Plain fp32 2-D im2col conv as tiles of output rows, each one nogil numba call
    (kernels/convtile.im2col_tiles: window copy, sgemm into y, bias), shared out on the kernel
    threads from _PAR_WORK multiply-adds (as _conv_tiles_parallel). One thread: the same
    tiles serially, ~_TILE_BYTES of columns each (no whole im2col matrix: less memory, and the
    block stays in cache between copy and GEMM; measured faster than the numpy route)."""
    OH, OW = out_sp
    M = group * Mg
    y = np.empty((N, M, OH * OW), dtype=np.float32)
    if threads() > 1 and N * M * K * OH * OW >= _PAR_WORK:
        rows = _tile_rows(K, OW, 4, N, OH)
    else:
        rows = max(1, min(OH, _TILE_BYTES // (4 * K * OW)))
    per_image = -(-OH // rows)
    bias = _EMPTY32 if b is None else np.ascontiguousarray(b, dtype=np.float32)
    run_split(convtile.im2col_tiles, (fptr, xp.reshape(-1), np.ascontiguousarray(w).reshape(M, K), bias, y, xp.shape[1],
                             xp.shape[2], xp.shape[3], group, kernel[0], kernel[1],
                             strides[0], strides[1], dilations[0], dilations[1], OW, rows, per_image),
              N * per_image, N * M * K * OH * OW, min_work=_PAR_WORK)
    return y.reshape(N, M, OH, OW)


def _conv_pointwise_driver(fptr, x, w, b, N, M, C, P, out_sp):
    """Plain fp32 1x1 stride-1 conv (any rank) as column tiles, each one nogil numba call
    (kernels/convtile.pointwise_tiles: sgemm on the input in place, bias), shared out on the
    kernel threads from _POINTWISE_PAR_WORK multiply-adds (the threshold of the split matmul
    this replaces: kernels/blas._MIN_WORK; at 2M, 16x64x208 -> 32 measured 0.51 -> 0.81 ms
    CPU at two threads); tiles hold ~_SHIFT_TILE_BYTES of output (still in cache for the
    bias) and, with threads, >= 2 per thread and >= _MIN_TILE_COLS."""
    y = np.empty((N, M, P), dtype=np.float32)
    cols = max(_MIN_TILE_COLS, _SHIFT_TILE_BYTES // (4 * M))
    work = N * M * C * P
    if threads() > 1 and work >= _POINTWISE_PAR_WORK:
        cols = max(_MIN_TILE_COLS, min(cols, -(-P // -(-2 * threads() // N))))
    cols = min(cols, P)
    per_image = -(-P // cols)
    bias = _EMPTY32 if b is None else np.ascontiguousarray(b, dtype=np.float32)
    run_split(convtile.pointwise_tiles, (fptr, x.reshape(-1), np.ascontiguousarray(w).reshape(M, C), bias, y, C, cols,
                                per_image), N * per_image, work, min_work=_POINTWISE_PAR_WORK)
    return y.reshape((N, M) + tuple(out_sp))


def _add_bias(ctx, y, b):
    if b is None:
        return y
    bb = b.reshape((1, -1) + (1,) * (y.ndim - 2))
    if ctx.plain and y.flags.writeable and y.dtype == b.dtype:
        y += bb
        return y
    return y + bb


def _check_conv(x, w, group, kernel_shape, op_name):
    if x.ndim < 3 or w.ndim != x.ndim:
        raise ExecutionError(f"{op_name}: input {list(x.shape)} and weight {list(w.shape)} must have the same rank >= 3")
    if group < 1 or x.shape[1] % group:
        raise ExecutionError(f"{op_name}: {x.shape[1]} input channels are not divisible by group {group}")
    if kernel_shape and list(kernel_shape) != list(w.shape[2:]):
        raise ExecutionError(f"{op_name}: kernel_shape {list(kernel_shape)} differs from the weight shape {list(w.shape)}")
    return list(w.shape[2:])


def _conv_geometry(x, w, b, auto_pad, dilations, group, kernel_shape, pads, strides):
    kernel = _check_conv(x, w, group, kernel_shape, "Conv")
    if w.shape[1] * group != x.shape[1] or w.shape[0] % group:
        raise ExecutionError(f"Conv: weight {list(w.shape)} does not fit input {list(x.shape)} with group {group}")
    if b is not None and b.shape != (w.shape[0],):
        raise ExecutionError(f"Conv: bias shape {list(b.shape)} is not [{w.shape[0]}]")
    out_sp, pb, pe, st, dl = window_geometry(x.shape[2:], kernel, strides, dilations, pads, auto_pad)
    return kernel, out_sp, st, dl, pb, pe


@op("Conv", since=1)
def conv(ctx, x, w, b=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None,
         strides=None):
    geo = _conv_geometry(x, w, b, auto_pad, dilations, group, kernel_shape, pads, strides)
    return _conv_float(ctx, x, w, b, group, *geo)


def _specialize_conv(node, consts: dict):
    """Constant weight and bias: the checks and window geometry are worked out once per input
    shape (they cost as much as the arithmetic of the tiny convs of streaming models)."""
    if 1 not in consts or (len(node.inputs) > 2 and node.inputs[2] and 2 not in consts):
        return None
    seen: dict = {}
    wt_cache: list = [None, None]

    def fn(ctx, x, w, b=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None,
           strides=None):
        geo = seen.get(x.shape)
        if geo is None:
            geo = seen[x.shape] = _conv_geometry(x, w, b, auto_pad, dilations, group, kernel_shape, pads, strides)
        return _conv_float(ctx, x, w, b, group, *geo, wt_cache=wt_cache)
    return fn


conv.specialize = _specialize_conv


# ---------------------------------------------------------------------------- ConvTranspose
@op("ConvTranspose", since=1)
def conv_transpose(ctx, x, w, b=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None,
                   output_padding=None, output_shape=None, pads=None, strides=None):
    kernel = _check_conv(x, w, group, kernel_shape, "ConvTranspose")
    if w.shape[0] != x.shape[1]:
        raise ExecutionError(f"ConvTranspose: weight {list(w.shape)} does not fit input {list(x.shape)}")
    if auto_pad not in _AUTO_PADS:
        raise ModelError(f"ConvTranspose: unknown auto_pad {auto_pad!r}")
    nd = len(kernel)
    N, C = x.shape[:2]
    Mg = w.shape[1]
    M = Mg * group
    in_sp = list(x.shape[2:])
    st = _ints(strides, nd, 1, "ConvTranspose strides")
    dl = _ints(dilations, nd, 1, "ConvTranspose dilations")
    adj = _ints(output_padding, nd, 0, "ConvTranspose output_padding")
    pads = _ints(pads, 2 * nd, 0, "ConvTranspose pads")
    if output_shape:
        osh = [int(v) for v in output_shape]
        osh = osh[-nd:] if len(osh) in (nd, nd + 2) else None
        if osh is None:
            raise ModelError(f"ConvTranspose: output_shape {list(output_shape)} does not match rank {nd}")
    pb, pe, out_sp = [], [], []
    for i in range(nd):
        dk = (kernel[i] - 1) * dl[i] + 1
        full = (in_sp[i] - 1) * st[i] + adj[i] + dk
        if output_shape or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            o = osh[i] if output_shape else in_sp[i] * st[i]
            total = max(0, full - o)
            # As ORT 1.32 does: the odd pad goes to the end for SAME_UPPER, else to the head
            # (also for an explicit output_shape without auto_pad).
            head = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            pb.append(head)
            pe.append(total - head)
            out_sp.append(o)  # may exceed full: the tail is then bias only
            continue
        elif auto_pad == "VALID":
            pb.append(0)
            pe.append(0)
        else:
            pb.append(pads[i])
            pe.append(pads[i + nd])
        out_sp.append(full - pb[i] - pe[i])
        if out_sp[i] < 0:
            raise ExecutionError(f"ConvTranspose: negative output size for input {list(x.shape)}")
    Cg = C // group
    if not ctx.plain or not is_float(x):
        # Conv over the stride-dilated input with spatially flipped, in/out-swapped weights.
        xu = np.zeros((N, C) + tuple((n - 1) * s + 1 if n else 0 for n, s in zip(in_sp, st)), dtype=x.dtype)
        xu[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in st)] = x
        wc = w.reshape((group, Cg, Mg) + tuple(kernel)).swapaxes(1, 2).reshape((M, Cg) + tuple(kernel))
        wc = np.ascontiguousarray(wc[(slice(None), slice(None)) + (slice(None, None, -1),) * nd])
        cpb = [(k - 1) * d - p for k, d, p in zip(kernel, dl, pb)]
        # End padding such that the conv yields exactly out_sp.
        cpe = [o - 1 + (k - 1) * d + 1 - ((n - 1) * s + 1 if n else 0) - c
               for o, k, d, n, s, c in zip(out_sp, kernel, dl, in_sp, st, cpb)]
        xp = pad_spatial(xu, cpb, cpe)
        cols = windows(xp, kernel, out_sp, [1] * nd, dl).reshape(N, group, Cg * math.prod(kernel), math.prod(out_sp))
        y = ctx.matmul(wc.reshape(group, Mg, -1), cols).reshape((N, M) + tuple(out_sp))
    else:
        # GEMM to columns, then col2im: scatter-add every kernel tap into a buffer.
        K = math.prod(kernel)
        P = math.prod(in_sp)
        # Contiguous: numpy's stacked matmul does not hand a transposed operand to BLAS (its
        # own loop measured 10x slower on the 96x24x6400 GEMM of a 2x2 upsampler).
        wm = np.ascontiguousarray(w.reshape(group, Cg, Mg * K).swapaxes(1, 2))
        cols = ctx.matmul(wm, x.reshape(N, group, Cg, P)).reshape((N, M) + tuple(kernel) + tuple(in_sp))
        if list(kernel) == st and all(d == 1 for d in dl) and out_sp == [n * s for n, s in zip(in_sp, st)] \
                and not any(pb):
            # Stride == kernel (the 2x2/s2 upsamplers of detection heads): the taps tile the
            # output without overlap, so col2im is one strided copy per tap into a fresh
            # buffer (no zero fill, no adds; long inner loops, unlike a transposing copy).
            y6 = np.empty((N, M) + tuple(v for n, k in zip(in_sp, kernel) for v in (n, k)), dtype=cols.dtype)
            for tap in np.ndindex(*kernel):
                y6[(slice(None), slice(None)) + tuple(v for t in tap for v in (slice(None), t))] = \
                    cols[(slice(None), slice(None)) + tap]
            y = y6.reshape((N, M) + tuple(out_sp))
            if b is not None:
                y += b.reshape((1, M) + (1,) * nd).astype(y.dtype, copy=False)
            return y
        buf_sp = [max((n - 1) * s + (k - 1) * d + 1, p + o) for n, s, k, d, p, o in zip(in_sp, st, kernel, dl, pb, out_sp)]
        buf = np.zeros((N, M) + tuple(buf_sp), dtype=cols.dtype)
        for tap in np.ndindex(*kernel):
            sl = tuple(slice(t * d, t * d + (n - 1) * s + 1, s) for t, d, n, s in zip(tap, dl, in_sp, st))
            buf[(slice(None), slice(None)) + sl] += cols[(slice(None), slice(None)) + tap]
        y = buf[(slice(None), slice(None)) + tuple(slice(p, p + o) for p, o in zip(pb, out_sp))]
    if b is not None:
        y = y + b.reshape((1, M) + (1,) * nd)
    return np.ascontiguousarray(y)


# -------------------------------------------------------------------------- integer convs
class _IntWeights:
    """ConvInteger/QLinearConv weights prepared for exact float32 convolution: w - wzp as int32
    (wi) and float32 (wf), max |w - wzp| and the largest per-filter sum of |w - wzp| (every
    partial sum of an output is at most that times max |x - xzp|)."""
    __slots__ = ("wi", "wf", "wmax", "wrow", "wt_cache")

    def __init__(self, w: np.ndarray, w_zero_point) -> None:
        wi = w.astype(np.int32)
        if w_zero_point is not None:
            wz = np.asarray(w_zero_point).astype(np.int32)
            wi = wi - (wz.reshape((-1,) + (1,) * (w.ndim - 1)) if wz.size > 1 else wz.reshape(()))
        self.wi = wi
        self.wf = wi.astype(np.float32)
        self.wmax = int(np.abs(wi).max()) if wi.size else 0
        self.wrow = int(np.abs(wi, dtype=np.int64).reshape(wi.shape[0], -1).sum(axis=1).max()) if wi.size else 0
        self.wt_cache = [None, None]


class _PlainCtx:
    """The fp32 plan's view for exact integer convs run through _conv_float: integer results
    do not depend on any precision policy."""
    plain = True
    matmul = staticmethod(lambda a, b: _split_matmul(a, b))


def _split_matmul(a, b):
    from ..kernels.blas import matmul
    return matmul(a, b)


def _int_conv(x, w, x_zero_point, w_zero_point, group, auto_pad, dilations, kernel_shape, pads, strides, op_name,
              prep: _IntWeights | None = None, geo=None):
    """Exact sum (x - xzp) * (w - wzp) over each window, as int32 or int64 (N, M, *out).
    prep: the weights prepared once (constant weights); geo: _int_geometry's result."""
    kernel, out_sp, pb, pe, st, dl = geo or _int_geometry(x, w, group, auto_pad, dilations, kernel_shape, pads,
                                                        strides, op_name)
    N, C = x.shape[:2]
    M = w.shape[0]
    Cg, Mg = C // group, M // group
    xz = 0 if x_zero_point is None else int(np.asarray(x_zero_point).reshape(-1)[0])
    pw = prep if prep is not None else _IntWeights(w, w_zero_point)
    wi = pw.wi
    K = Cg * math.prod(kernel)
    P = math.prod(out_sp)
    # Subtracting the zero point first makes zero padding equal to padding with the zero point.
    xmax = max(abs(int(x.max()) - xz), abs(int(x.min()) - xz)) if x.size else 0
    # Float32 columns hold the integers exactly; the GEMMs are exact as long as every partial
    # sum stays below 2**24 (sgemm_exact slices K or splits the weights to keep it so), and
    # the range comes from the input, not from a scan of the columns.
    xf = x.astype(np.float32) - np.float32(xz)
    if pw.wrow * xmax < 2 ** 24 and N * M * P > 0:
        # Every partial sum, in any order, is below 2**24: the plain fp32 conv (its nogil tile
        # drivers, depthwise kernel) is exact, and its float32 integers convert exactly.
        y = _conv_float(_PlainCtx, xf, pw.wf, None, group, kernel, out_sp, st, dl, pb, pe, wt_cache=pw.wt_cache)
        return y.astype(np.int32)
    cols = windows(pad_spatial(xf, pb, pe), kernel, out_sp, st, dl).reshape(N, group, K, P)
    y = sgemm_exact(wi.reshape(group, Mg, K), cols, pw.wmax, xmax, K)
    if y is None:
        xi = x.astype(np.int32) - xz
        cols = windows(pad_spatial(xi, pb, pe), kernel, out_sp, st, dl).reshape(N, group, K, P)
        y = int_matmul(wi.reshape(group, Mg, K), cols)
    return y.reshape((N, M) + tuple(out_sp))


def _int_geometry(x, w, group, auto_pad, dilations, kernel_shape, pads, strides, op_name):
    kernel = _check_conv(x, w, group, kernel_shape, op_name)
    if w.shape[1] * group != x.shape[1] or w.shape[0] % group:
        raise ExecutionError(f"{op_name}: weight {list(w.shape)} does not fit input {list(x.shape)} with group {group}")
    out_sp, pb, pe, st, dl = window_geometry(x.shape[2:], kernel, strides, dilations, pads, auto_pad, op_name=op_name)
    return kernel, out_sp, pb, pe, st, dl


@op("ConvInteger", since=10)
def conv_integer(ctx, x, w, x_zero_point=None, w_zero_point=None, *, auto_pad="NOTSET", dilations=None, group=1,
                 kernel_shape=None, pads=None, strides=None):
    return _int_conv(x, w, x_zero_point, w_zero_point, group, auto_pad, dilations, kernel_shape, pads, strides,
                     "ConvInteger").astype(np.int32, copy=False)


def _specialize_conv_integer(node, consts: dict):
    """Constant weights (and weight zero point): prepared once per model (int32/float32 copies,
    bounds: ~0.6 ms a run on ddddocr_ocr_int8's 21 ConvIntegers), geometry once per shape."""
    if 1 not in consts or (len(node.inputs) > 3 and node.inputs[3] and 3 not in consts):
        return None
    prep = _IntWeights(consts[1], consts.get(3))
    seen: dict = {}

    def fn(ctx, x, w, x_zero_point=None, w_zero_point=None, *, auto_pad="NOTSET", dilations=None, group=1,
           kernel_shape=None, pads=None, strides=None):
        geo = seen.get(x.shape)
        if geo is None:
            geo = seen[x.shape] = _int_geometry(x, w, group, auto_pad, dilations, kernel_shape, pads, strides,
                                                "ConvInteger")
        return _int_conv(x, w, x_zero_point, w_zero_point, group, auto_pad, dilations, kernel_shape, pads, strides,
                         "ConvInteger", prep, geo).astype(np.int32, copy=False)
    return fn


conv_integer.specialize = _specialize_conv_integer


@op("QLinearConv", since=10)
def qlinear_conv(ctx, x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, b=None, *,
                 auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None):
    acc = _int_conv(x, w, x_zero_point, w_zero_point, group, auto_pad, dilations, kernel_shape, pads, strides,
                    "QLinearConv")
    nd = acc.ndim - 2
    if b is not None:
        acc = acc + b.astype(np.int64).reshape((1, -1) + (1,) * nd)
    ws = w_scale.astype(np.float32)
    ws = ws.reshape((1, -1) + (1,) * nd) if ws.size > 1 else ws.reshape(())
    mult = (x_scale.astype(np.float32).reshape(()) * ws) / y_scale.astype(np.float32).reshape(())
    return requantize(acc, np.asarray(mult, np.float32), y_zero_point.reshape(()), y_zero_point.dtype)


# ------------------------------------------------------------------ fused elementwise tails
_TAIL_NUMBA_MIN = 4096  # elements from which a tail runs as one numba pass (below: numpy's ufuncs)


def match_conv_tail(graph, t: str, const: Callable, outputs, steps: Mapping,
                    w_shape: tuple) -> tuple[Callable, list[int], str] | None:
    """The elementwise tail that follows a float32 Conv's output `t` in fp32 schedules, for the
    interpreter's Conv fuser: an optional per-channel (or scalar) Mul then Add with constants
    (PP-OCR's unfolded BatchNorm), then SiLU (Sigmoid + Mul: YOLO-style nets), HardSwish as
    Add, Clip, Mul, Div (PP-OCR) or HardSigmoid (squeeze-excitation gates). Returns (apply in place, consumed node indices, the tail's
    last output) or None. Every intermediate must be read only by the pattern's nodes of this
    schedule (`steps`: node index -> step) and not be a graph output; constants come from
    `const(name)`; `w_shape` is the Conv's weight shape (output rank and channels). Applied to the Conv's output, the result is bit for bit the unfused ops'."""
    nodes = {nd.index: nd for nd in graph.nodes}

    def readers(name):
        idx = graph.consumers.get(name, [])
        if name in outputs or not idx or any(i not in steps for i in idx):
            return None
        return [nodes[i] for i in idx]

    def other(nd, name):
        ins = [i for i in nd.inputs if i]
        return ins[1] if len(ins) == 2 and ins[0] == name else ins[0] if len(ins) == 2 and ins[1] == name else None

    consumed, scale, shift = [], None, None
    for op_type in ("Mul", "Add"):
        rd = readers(t)
        if rd is None or len(rd) != 1 or rd[0].op_type != op_type:
            continue
        c = _channel_const(const(other(rd[0], t)), len(w_shape), w_shape[0])
        if c is None:
            continue
        if op_type == "Mul":
            scale = c
        else:
            shift = c
        consumed.append(rd[0].index)
        t = rd[0].outputs[0]
    act, k, rd = 0, None, readers(t)
    if rd is not None and len(rd) == 1 and rd[0].op_type == "HardSigmoid":
        hs = rd[0]
        k = np.array([hs.attrs.get("alpha", 0.2), hs.attrs.get("beta", 0.5)], dtype=np.float32)
        act, t = 3, hs.outputs[0]
        consumed.append(hs.index)
    elif rd is not None and len(rd) == 2:
        by_type = {nd.op_type: nd for nd in rd}
        sig, mul, add = by_type.get("Sigmoid"), by_type.get("Mul"), by_type.get("Add")
        if sig is not None and mul is not None and _only(readers(sig.outputs[0]), mul) \
                and other(mul, t) == sig.outputs[0]:
            act, t = 2, mul.outputs[0]
            consumed += [sig.index, mul.index]
        elif add is not None and mul is not None:
            hs = _hardswish_chain(add, mul, t, readers, other, const)
            if hs is not None:
                k, idx, t = hs
                act = 1
                consumed += idx
    if not consumed:
        return None
    return _tail_fn(scale, shift, act, k), consumed, t


def _only(rd, node) -> bool:
    return rd is not None and len(rd) == 1 and rd[0] is node


def _channel_const(c, rank: int, channels: int):
    """A float32 constant that broadcasts over a conv output (N, C, *spatial) as a scalar or per
    channel without changing its shape, as a (1,) or (C,) array; else None."""
    if not isinstance(c, np.ndarray) or c.dtype != np.float32 or c.ndim > rank:
        return None
    if c.size == 1:
        return np.ascontiguousarray(c.reshape(1))
    sq = c.shape[next(i for i, d in enumerate(c.shape) if d != 1):]  # leading 1s dropped
    if len(sq) != rank - 1 or sq[0] != channels or any(d != 1 for d in sq[1:]):
        return None
    return np.ascontiguousarray(c.reshape(-1))


def _hardswish_chain(add, mul, t, readers, other, const):
    """Add(t, k0) -> Clip(k1, k2) -> Mul(t, clip) -> Div(., k3), scalar float32 constants."""
    from .elementwise import clip_bounds

    def scalar(name):
        v = const(name) if name else None
        return v.reshape(()) if isinstance(v, np.ndarray) and v.dtype == np.float32 and v.size == 1 and v.ndim <= 4 else None
    k0 = scalar(other(add, t))
    clip = readers(add.outputs[0])
    if k0 is None or clip is None or len(clip) != 1 or clip[0].op_type != "Clip" or clip[0].inputs[0] != add.outputs[0]:
        return None
    clip = clip[0]
    bounds = clip_bounds(clip, scalar, np.float32)
    if bounds is None or np.isnan(bounds).any() or not _only(readers(clip.outputs[0]), mul) \
            or other(mul, t) != clip.outputs[0]:
        return None
    lo, hi = bounds
    div = readers(mul.outputs[0])
    if div is None or len(div) != 1 or div[0].op_type != "Div" or div[0].inputs[0] != mul.outputs[0]:
        return None
    k3 = scalar(div[0].inputs[1])
    if k3 is None:
        return None
    k = np.array([k0, lo, hi, k3], dtype=np.float32)
    return k, [add.index, clip.index, mul.index, div[0].index], div[0].outputs[0]


def _tail_fn(scale, shift, act, k):
    from .elementwise import _MLAS_MIN, clip_ufunc, sigmoid

    def fn(y: np.ndarray) -> None:
        sc, sh = scale, shift
        if y.dtype == np.float32 and y.flags.c_contiguous and y.size >= _TAIL_NUMBA_MIN \
                and (act != 2 or y.size >= _MLAS_MIN):
            from ..kernels.epilogue import conv_tail
            conv_tail(y, sc, sh, act, k)
            return
        # numpy's ufuncs in place: the unfused ops' own arithmetic, any layout (fp32 schedules
        # run under numpy's "ignore" error state already).
        bshape = (1, -1) + (1,) * (y.ndim - 2)
        if sc is not None:
            np.multiply(y, sc.reshape(bshape) if sc.size > 1 else sc[0], out=y)
        if sh is not None:
            np.add(y, sh.reshape(bshape) if sh.size > 1 else sh[0], out=y)
        if act == 1:
            h = np.add(y, k[0])
            clip_ufunc(h, k[1], k[2], out=h)
            np.multiply(y, h, out=y)
            np.divide(y, k[3], out=y)
        elif act == 2:
            np.multiply(y, sigmoid(y), out=y)
        elif act == 3:
            np.multiply(y, k[0], out=y)
            np.add(y, k[1], out=y)
            np.clip(y, np.float32(0), np.float32(1), out=y)
    return fn
