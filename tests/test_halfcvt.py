"""kernels.halfcvt against numpy's float16 conversion (an independent implementation), and the
F16C path against the portable one bit for bit. The exhaustive check over all 2**32 float32
patterns is too slow for the suite; here: every fp16 value, every midpoint between neighbours,
their float32 neighbours, and random bit patterns."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from halfsim.kernels import halfcvt


def _edge_cases() -> np.ndarray:
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    h = h[np.isfinite(h)].astype(np.float32)
    pos = np.unique(np.abs(h))
    mids = (pos[:-1].astype(np.float64) + pos[1:]) / 2  # exact in float32 (<= 12 bits)
    top = [65504.0, 65519.99, 65520.0, 65536.0, 1e38, np.finfo(np.float32).max]
    tiny = [2.0 ** -25, 2.0 ** -26, 2.0 ** -149, 1.5 * 2.0 ** -25, 2.0 ** -24 * 1.5, 2.0 ** -14 * (1 - 2.0 ** -11)]
    base = np.concatenate([pos, mids.astype(np.float32), np.array(top + tiny, np.float32)])
    with np.errstate(over="ignore"):  # float32 max steps to inf: a case worth keeping
        v = np.concatenate([base, np.nextafter(base, np.float32(np.inf)), np.nextafter(base, np.float32(0))])
    return np.concatenate([v, -v, np.array([np.inf, -np.inf, 0.0, -0.0], np.float32)])


def _random_bits(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1 << 32, size=n, dtype=np.uint64).astype(np.uint32).view(np.float32)


def _numpy_f16(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return x.astype(np.float16).astype(np.float32)


@pytest.mark.parametrize("hw", [False, True])
@pytest.mark.parametrize("which", ["edges", "random"])
def test_matches_numpy_float16(hw: bool, which: str) -> None:
    if hw and not halfcvt.HW_F16C:
        pytest.skip("no F16C on this CPU")
    x = _edge_cases() if which == "edges" else _random_bits(1 << 21)
    got = halfcvt.round_array_f16(x, hw)
    ref = _numpy_f16(x)
    nan = np.isnan(ref)
    assert np.array_equal(np.isnan(got), nan)
    bad = np.flatnonzero(got.view(np.uint32)[~nan] != ref.view(np.uint32)[~nan])
    assert bad.size == 0, f"{bad.size} mismatches, first x={x[~nan][bad[0]]!r}"


def test_nan_quiet_truncated_payload() -> None:
    # signalling and quiet NaNs of both signs with payload bits above and below fp16's 10
    pats = np.array([0x7F800001, 0x7FC00000, 0x7FBFFFFF, 0xFF802000, 0x7FFFFFFF, 0xFFC01FFF], np.uint32)
    got = halfcvt.round_array_f16(pats.view(np.float32), False).view(np.uint32)
    assert np.array_equal(got, (pats | 0x00400000) & 0xFFFFE000)


@pytest.mark.skipif(not halfcvt.HW_F16C, reason="no F16C on this CPU")
def test_hardware_equals_fallback_bitwise() -> None:
    x = np.concatenate([_edge_cases(), _random_bits(1 << 21, seed=1),
                        np.array([0x7F800001, 0xFFC00001, 0x7FFFE000], np.uint32).view(np.float32)])
    hw = halfcvt.round_array_f16(x, True)
    sw = halfcvt.round_array_f16(x, False)
    assert np.array_equal(hw.view(np.uint32), sw.view(np.uint32))


@pytest.mark.parametrize("var,value", [("HALFSIM_NO_F16C", "1"), ("NUMBA_CPU_NAME", "generic")])
def test_env_var_forces_fallback(var: str, value: str) -> None:
    # HALFSIM_NO_F16C by request; a generic numba target has no F16C whatever the host has
    code = ("from halfsim.kernels import halfcvt as h; "
            "assert not h.HW_F16C; assert h.f32_to_f16_f32 is h.f32_to_f16_f32_sw; print('ok')")
    env = dict(os.environ, **{var: value})
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


@pytest.mark.slow
def test_kernels_without_f16c_give_the_same_bits(tmp_path) -> None:
    # a fresh process forced onto the portable path (and a fresh numba cache, which would
    # otherwise hand back the F16C build) computes the fp16 fast-path GEMMs: same bits as here
    from halfsim.kernels.accumulate import matmul_acc
    rng = np.random.default_rng(3)
    a = rng.standard_normal((13, 300)).astype(np.float16).astype(np.float32) / 16
    b = rng.standard_normal((300, 37)).astype(np.float16).astype(np.float32) / 16
    np.savez(tmp_path / "ab.npz", a=a, b=b)
    code = ("import sys, numpy as np; from halfsim.kernels import halfcvt; "
            "from halfsim.kernels.accumulate import matmul_acc; assert not halfcvt.HW_F16C; "
            "d = np.load(sys.argv[1]); "
            "np.savez(sys.argv[2], *[matmul_acc(d['a'], d['b'], 5, 10, fma=f) for f in (False, True)])")
    env = dict(os.environ, HALFSIM_NO_F16C="1", NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ab.npz"), str(tmp_path / "out.npz")],
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    got = np.load(tmp_path / "out.npz")
    for i, fma in enumerate((False, True)):
        here = matmul_acc(a, b, 5, 10, fma=fma)
        assert np.array_equal(got[f"arr_{i}"].view(np.uint32), here.view(np.uint32))
