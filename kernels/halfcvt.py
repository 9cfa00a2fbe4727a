"""float32 -> fp16 rounding for numba kernels, in hardware where the CPU has F16C.

    from halfsim.kernels.halfcvt import f32_to_f16_f32, HW_F16C

f32_to_f16_f32(x: float32) -> float32 rounds x to IEEE binary16 (nearest-even, subnormals
kept, overflow to +-inf, NaN stays NaN) and returns the fp16 value widened back to float32;
it is numba-callable only (call it from @njit code). HW_F16C says which implementation it is:

* True: LLVM `fptrunc float -> half` + `fpext half -> float`, which x86 lowers to
  vcvtps2ph/vcvtph2ps (F16C): two instructions, and loops over arrays vectorize 8 lanes wide.
* False: the same results from float32 arithmetic (f32_to_f16_f32_sw), used when the host CPU
  lacks F16C (without it LLVM would emit a libcall numba cannot link) or when the environment
  variable HALFSIM_NO_F16C=1 is set at import.

Both give identical bits for every float32, NaNs included: a NaN comes back quiet with the low
13 payload bits cleared, as the hardware round trip does. Kernels compiled with cache=True keep
whichever implementation they were compiled with; numba's cache key includes the CPU features,
so a machine without F16C never loads F16C code, but forcing the fallback on an F16C machine
needs a fresh NUMBA_CACHE_DIR.
"""
from __future__ import annotations

import os

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


def _host_has_f16c() -> bool:
    """Whether numba's target has F16C: the host's features, unless NUMBA_CPU_NAME /
    NUMBA_CPU_FEATURES pick another target (e.g. "generic" for portable caches)."""
    try:
        from numba.core import config
        if config.CPU_FEATURES is not None:
            return "+f16c" in config.CPU_FEATURES.split(",")
        if config.CPU_NAME is not None and config.CPU_NAME != "host":
            return False
        import llvmlite.binding as llvm
        return bool(llvm.get_host_cpu_features().get("f16c", False))
    except Exception:  # unknown host: the portable path is always correct
        return False


HW_F16C: bool = _host_has_f16c() and os.environ.get("HALFSIM_NO_F16C", "") not in ("1", "true", "yes")


@intrinsic
def _cvt_hw(typingctx, x):
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        h = builder.fptrunc(args[0], ir.HalfType())
        return builder.fpext(h, ir.FloatType())

    return types.float32(types.float32), codegen


@njit(inline="always")
def f32_to_f16_f32_hw(x):
    """fp16 rounding through F16C (only valid to compile where HW_F16C is True)."""
    return _cvt_hw(np.float32(x))


@njit(cache=True, inline="always")
def f32_to_f16_f32_sw(x):
    """fp16 rounding in float32 arithmetic, bit-identical to the F16C round trip.

    With e = clamp(exponent(x), -14, 15) and c = 1.5 * 2**(e + 13), x + c lies where float32's
    spacing is fp16's quantum 2**(e - 10) at x's exponent (the clamp at -14 gives the subnormal
    quantum), so the hardware addition rounds x nearest-even and (x + c) - c is exact. Results
    beyond 65504 become inf; the sign is put back for results that round to zero."""
    xf = np.float32(x)
    bits = np.int64(xf.view(np.int32)) & 0xFFFFFFFF
    mag = bits & 0x7FFFFFFF
    if mag > 0x7F800000:  # NaN: quiet, payload truncated to fp16's 10 fraction bits
        return np.uint32((bits | 0x00400000) & 0xFFFFE000).view(np.float32)
    be = mag >> 23
    be = 113 if be < 113 else (142 if be > 142 else be)  # exponent clamped to [-14, 15]
    c = np.uint32((be + 13) << 23 | 0x400000).view(np.float32)  # 1.5 * 2**(e + 13)
    r = (xf + c) - c
    if abs(r) > np.float32(65504.0):
        r = np.float32(np.inf)
    rb = (np.int64(np.float32(abs(r)).view(np.int32)) & 0x7FFFFFFF) | (bits & 0x80000000)
    return np.uint32(rb).view(np.float32)


f32_to_f16_f32 = f32_to_f16_f32_hw if HW_F16C else f32_to_f16_f32_sw


@njit(cache=True)
def _round_array(x, rnd):
    # rnd: f32_to_f16_f32_hw or f32_to_f16_f32_sw (a jitted function passed as an argument:
    # numba compiles one specialization per function).
    out = np.empty_like(x)
    xf = x.ravel()
    of = out.reshape(-1)
    for i in range(xf.size):
        of[i] = rnd(xf[i])
    return out


def round_array_f16(x: np.ndarray, hw: bool | None = None) -> np.ndarray:
    """Every element of the float32 array x rounded to fp16, as float32 (a new array).
    hw: True forces the F16C path (only where the CPU has F16C), False the portable one,
    None uses f32_to_f16_f32's choice. For tests and tools."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if hw is None:
        hw = HW_F16C
    return _round_array(x, f32_to_f16_f32_hw if hw else f32_to_f16_f32_sw)
