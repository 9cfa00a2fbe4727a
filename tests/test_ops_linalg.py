"""MatMul, Gemm, Einsum, MatMulInteger, QLinearMatMul and the com.microsoft matmul ops, checked
against ONNX Runtime. Float ops run twice: under the fp32 plan (fast paths) and under a
non-plain plan that counts ctx.matmul / ctx.sum calls (the accumulate-aware paths)."""
from __future__ import annotations

import numpy as np
import pytest

import halfsim
from halfsim.interpreter import _FP32Plan
from opcheck import assert_same, check_op, feeds_of, make_model, run_ort

rng = np.random.default_rng(0)


class CountingPlan(_FP32Plan):
    """fp32 semantics, but not 'plain': ops must take their accumulate-aware paths."""
    identity = False

    def __init__(self):
        self.matmuls = 0
        self.sums = 0

    def matmul(self, ctx, a, b):
        self.matmuls += 1
        return super().matmul(ctx, a, b)

    def sum(self, ctx, x, axis, keepdims):
        self.sums += 1
        return super().sum(ctx, x, axis, keepdims)

    def on_inputs(self, node, args):
        return args, (None,)


def check_plans(op_type, inputs, attrs=None, *, n_outputs=1, opset=17, domain="", initializers=(),
                rtol=1e-5, atol=1e-5, expect_matmul=False, expect_sum=False):
    """check_op, then the same model under CountingPlan (same ORT oracle)."""
    got = check_op(op_type, inputs, attrs, n_outputs=n_outputs, opset=opset, domain=domain,
                   initializers=initializers, rtol=rtol, atol=atol)
    m = make_model(op_type, inputs, attrs, n_outputs=n_outputs, opset=opset, domain=domain,
                   initializers=initializers)
    feeds = feeds_of(m, inputs)
    want = run_ort(m, feeds)
    plan = CountingPlan()
    res = halfsim.load(m).run(feeds, precision=plan)
    for i, w in enumerate(want):
        assert_same(res[f"out{i}"], w, rtol, atol, what=f"{op_type} output {i} (non-plain plan)")
    if expect_matmul:
        assert plan.matmuls > 0, f"{op_type} did not use ctx.matmul"
    if expect_sum:
        assert plan.sums > 0, f"{op_type} did not use ctx.sum"
    return got


def r(*shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


# ------------------------------------------------------------------------------ MatMul
@pytest.mark.parametrize("sa,sb", [
    ((3, 4), (4, 5)), ((4,), (4, 5)), ((3, 4), (4,)), ((4,), (4,)),
    ((2, 3, 4), (4, 5)), ((2, 1, 3, 4), (5, 4, 6)), ((4,), (2, 4, 5)), ((2, 3, 4), (4,)),
    ((0, 4), (4, 5)), ((3, 0), (0, 5)), ((2, 0, 3, 4), (4, 2)),
])
def test_matmul_shapes(sa, sb):
    check_plans("MatMul", [r(*sa), r(*sb)], expect_matmul=np.prod(sa) * np.prod(sb) > 0)


@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.int64, np.uint32])
def test_matmul_dtypes(dtype):
    a = rng.integers(-20 if np.dtype(dtype).kind == "i" else 0, 20, (2, 3, 5)).astype(dtype)
    b = rng.integers(-20 if np.dtype(dtype).kind == "i" else 0, 20, (5, 4)).astype(dtype)
    check_op("MatMul", [a, b])


def test_matmul_float16():
    check_op("MatMul", [r(3, 8, dtype=np.float16), r(8, 4, dtype=np.float16)], rtol=2e-3, atol=2e-3)


def test_matmul_shape_error():
    m = make_model("MatMul", [r(3, 4), r(5, 2)])
    with pytest.raises(halfsim.errors.HalfsimError):
        halfsim.load(m).run({"in0": r(3, 4), "in1": r(5, 2)})


# -------------------------------------------------------------------------------- Gemm
@pytest.mark.parametrize("ta,tb", [(0, 0), (1, 0), (0, 1), (1, 1)])
@pytest.mark.parametrize("cshape", [None, (5,), (1, 5), (3, 1), (3, 5), ()])
def test_gemm(ta, tb, cshape):
    a = r(4, 3) if ta else r(3, 4)
    b = r(5, 4) if tb else r(4, 5)
    c = None if cshape is None else r(*cshape)
    check_plans("Gemm", [a, b, c], dict(transA=ta, transB=tb, alpha=0.7, beta=1.3), opset=13, expect_matmul=True)


@pytest.mark.parametrize("opset", [7, 9, 11])
def test_gemm_opsets(opset):
    attrs = dict(alpha=2.0, beta=0.5)
    check_op("Gemm", [r(3, 4), r(4, 5), r(5)], attrs, opset=opset)


def test_gemm_beta_zero_and_weights():
    check_op("Gemm", [r(3, 4), r(6, 4), r(6)], dict(transB=1, beta=0.0), initializers=(1, 2))


def test_gemm_double():
    check_op("Gemm", [r(3, 4, dtype=np.float64), r(4, 2, dtype=np.float64), r(2, dtype=np.float64)])


# ------------------------------------------------------------------------------ Einsum
@pytest.mark.parametrize("eq,shapes", [
    ("ij,jk->ik", [(3, 4), (4, 5)]),
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("bhid,bhjd->bhij", [(2, 3, 4, 5), (2, 3, 6, 5)]),
    ("ij,jk", [(3, 4), (4, 5)]),
    ("ij->ji", [(3, 4)]),
    ("ii->i", [(4, 4)]),
    ("ii", [(4, 4)]),
    ("ij->", [(3, 4)]),
    ("ij->j", [(3, 4)]),
    ("i,i->", [(5,), (5,)]),
    ("i,j->ij", [(3,), (4,)]),
    ("...ij,...jk->...ik", [(2, 3, 4), (2, 4, 5)]),
    ("...ij,...jk->...ik", [(2, 1, 3, 4), (1, 6, 4, 5)]),
    ("b...,b...->b...", [(2, 3, 4), (2, 3, 4)]),
    ("...i,...i", [(2, 3), (2, 3)]),
    ("abc,cd,de->abe", [(2, 3, 4), (4, 5), (5, 6)]),
    ("iij,jk->ik", [(3, 3, 4), (4, 2)]),
    ("bn,anm,bm->ba", [(2, 3), (4, 3, 5), (2, 5)]),
    ("ijk,ikl->ijl", [(2, 0, 3), (2, 3, 4)]),
    ("ij,kl->", [(2, 3), (4, 5)]),
])
def test_einsum(eq, shapes):
    ins = [r(*s) for s in shapes]
    check_plans("Einsum", ins, dict(equation=eq), opset=12, rtol=1e-4, atol=1e-5)


def test_einsum_int():
    a = rng.integers(-5, 5, (3, 4)).astype(np.int64)
    b = rng.integers(-5, 5, (4, 2)).astype(np.int64)
    check_op("Einsum", [a, b], dict(equation="ij,jk->ik"), opset=12)


def test_einsum_uses_matmul():
    check_plans("Einsum", [r(2, 3, 4), r(2, 4, 5)], dict(equation="bij,bjk->bik"), opset=12, expect_matmul=True)


# ----------------------------------------------------------------------- MatMulInteger
def u8s8_max(ta, tb) -> int:
    """Exclusive upper bound for uint8 A values against int8 B in the integer conv tests. ORT's
    AVX2 u8s8 GEMM sums pairs of products in saturating int16 (vpmaddubsw); the MatMulInteger
    family follows it (kernels/u8s8.py, tested at full range below), the convs stay below."""
    return 128 if (np.dtype(ta) == np.uint8 and np.dtype(tb) == np.int8) else np.iinfo(ta).max + 1


@pytest.mark.parametrize("ta,tb", [(np.uint8, np.uint8), (np.int8, np.int8), (np.uint8, np.int8)])
@pytest.mark.parametrize("zp", ["none", "scalar", "vector"])
def test_matmul_integer(ta, tb, zp):
    a = rng.integers(np.iinfo(ta).min, np.iinfo(ta).max + 1, (2, 3, 6)).astype(ta)
    b = rng.integers(np.iinfo(tb).min, np.iinfo(tb).max + 1, (6, 4)).astype(tb)
    if zp == "none":
        ins = [a, b]
    elif zp == "scalar":
        ins = [a, b, np.array(3, ta), np.array(5, tb)]
    else:
        # ORT's CPU kernel takes a scalar A zero point and per-column B zero points.
        ins = [a, b, np.array(3, ta), rng.integers(0, 9, (4,)).astype(tb)]
    check_op("MatMulInteger", ins, opset=10)


def test_matmul_integer_2d():
    a = rng.integers(0, 128, (5, 7)).astype(np.uint8)
    b = rng.integers(-128, 128, (7, 3)).astype(np.int8)
    check_op("MatMulInteger", [a, b, np.array(128, np.uint8)], opset=10)


@pytest.mark.parametrize("case", ["l1_bound", "worst_case"])
def test_matmul_integer_long_k_exact(case):
    """K = 2048 with |A|·|B|·K far above 2**24: exact int32 against an int64 numpy oracle,
    through one float32 GEMM where every row's sum of |a| keeps partial sums below 2**24
    (activations near their zero point) and through K-slices where it does not."""
    K = 2048
    if case == "l1_bound":  # a few extreme values, the rest near the zero point
        a = rng.integers(120, 137, (4, K)).astype(np.uint8)
        a[:, ::97] = 255
    else:
        a = np.full((4, K), 255, np.uint8)
    b = rng.integers(0, 256, (K, 6)).astype(np.uint8)  # u8 x u8: exact in every MLAS kernel
    ins = [a, b, np.array(128, np.uint8), np.array(128, np.uint8)]
    m = make_model("MatMulInteger", ins, opset=10, initializers=(1,))
    got = halfsim.load(m).run(feeds_of(m, ins))["out0"]
    want = ((a.astype(np.int64) - 128) @ (b.astype(np.int64) - 128)).astype(np.int32)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("const_b", [False, True])
@pytest.mark.parametrize("zp", ["none", "scalar", "per_column"])
@pytest.mark.parametrize("shape", [(4, 64, 16), (2, 3, 33, 9), (1, 7, 5)])
def test_matmul_integer_u8s8_saturation_as_ort(const_b, zp, shape):
    # Full-range uint8 x int8: on AVX2 hosts without VNNI ORT's pairs of products saturate to
    # int16, elsewhere they are exact; halfsim follows the host's kernel (kernels/u8s8.py).
    *lead, K, N = shape
    a = rng.integers(0, 256, tuple(lead) + (K,)).astype(np.uint8)
    b = rng.integers(-128, 128, (K, N)).astype(np.int8)
    ins = [a, b] + {"none": [], "scalar": [np.array(131, np.uint8), np.array(-3, np.int8)],
                    "per_column": [np.array(7, np.uint8), rng.integers(-4, 5, (N,)).astype(np.int8)]}[zp]
    check_op("MatMulInteger", ins, opset=10, initializers=(1, 3) if const_b else ())
    if zp == "none":  # 7-bit weights never saturate: the exact float32 route, same as ORT
        check_op("MatMulInteger", [a, (b // 2).astype(np.int8)], opset=10, initializers=(1,) if const_b else ())


# ----------------------------------------------------------------------- QLinearMatMul
@pytest.mark.parametrize("dt", [np.uint8, np.int8])
@pytest.mark.parametrize("per_col", [False, True])
def test_qlinear_matmul(dt, per_col):
    lo, hi = np.iinfo(dt).min, np.iinfo(dt).max + 1
    a = rng.integers(lo, hi, (2, 3, 8)).astype(dt)
    b = rng.integers(lo, hi, (8, 5)).astype(dt)
    bs = (rng.uniform(0.01, 0.05, (5,)) if per_col else np.array(0.02)).astype(np.float32)
    bz = (rng.integers(-3, 4, (5,)) if per_col else np.array(2)).astype(dt)
    ins = [a, np.array(0.03, np.float32), np.array(1, dt), b, bs, bz, np.array(0.5, np.float32), np.array(4, dt)]
    check_op("QLinearMatMul", ins, opset=10)


# ------------------------------------------------------------------ com.microsoft ops
MS = "com.microsoft"


@pytest.mark.parametrize("sa,sb,ta,tb", [
    ((3, 4), (4, 5), 0, 0), ((4, 3), (4, 5), 1, 0), ((3, 4), (5, 4), 0, 1), ((2, 4, 3), (2, 5, 4), 1, 1),
    ((2, 3, 4), (4, 5), 0, 0), ((4,), (4, 5), 0, 0),
])
def test_fused_matmul(sa, sb, ta, tb):
    check_plans("FusedMatMul", [r(*sa), r(*sb)], dict(alpha=0.5, transA=ta, transB=tb), domain=MS,
                expect_matmul=True)


@pytest.mark.parametrize("sa,sb,tba,tbb,ta,tb", [
    ((3, 2, 4), (2, 4, 5), 1, 0, 0, 0),
    ((2, 3, 4), (4, 2, 6), 0, 1, 0, 0),
    ((3, 2, 4), (6, 2, 4), 1, 1, 0, 1),
    ((4, 2, 3), (4, 2, 5), 1, 1, 1, 0),
    ((3, 2, 5, 4), (2, 5, 4, 6), 1, 0, 0, 0),
])
def test_fused_matmul_trans_batch(sa, sb, tba, tbb, ta, tb):
    check_op("FusedMatMul", [r(*sa), r(*sb)], dict(transBatchA=tba, transBatchB=tbb, transA=ta, transB=tb),
             domain=MS)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("tb", [np.int8, np.uint8])
def test_matmul_integer_to_float(bias, tb):
    a = rng.integers(0, 256, (2, 3, 8)).astype(np.uint8)
    b = rng.integers(np.iinfo(tb).min, np.iinfo(tb).max + 1, (8, 5)).astype(tb)
    ins = [a, b, np.array(0.02, np.float32), (rng.uniform(0.01, 0.03, (5,))).astype(np.float32),
           np.array(120, np.uint8), rng.integers(0, 5, (5,)).astype(tb), r(5) if bias else None]
    check_op("MatMulIntegerToFloat", ins, domain=MS, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tb", [np.int8, np.uint8])
@pytest.mark.parametrize("extra", ["none", "zp", "zp_bias"])
def test_dynamic_quantize_matmul(tb, extra):
    a = r(2, 3, 16)
    b = rng.integers(np.iinfo(tb).min, np.iinfo(tb).max + 1, (16, 6)).astype(tb)
    bs = rng.uniform(0.01, 0.03, (6,)).astype(np.float32)
    ins = [a, b, bs]
    if extra != "none":
        ins.append(rng.integers(0, 5, (6,)).astype(tb))
    if extra == "zp_bias":
        ins.append(r(6))
    check_op("DynamicQuantizeMatMul", ins, domain=MS, initializers=(1, 2, 3, 4), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("k,alo,ahi", [(64, -128, 128), (2048, 0, 128), (2048, -255, 256), (20000, -255, 256),
                                       (300, -40000, 40000)])
def test_int_matmul_exact_paths(k, alo, ahi):
    # Every BLAS route (sgemm, split sgemm, dgemm) against numpy's exact int64 matmul.
    from halfsim.ops.linalg import int_matmul
    a = rng.integers(alo, ahi, (3, k)).astype(np.int32)
    b = rng.integers(-128, 128, (k, 4)).astype(np.int32)
    np.testing.assert_array_equal(int_matmul(a, b), a.astype(np.int64) @ b.astype(np.int64))


def test_matmul_integer_long_k():
    a = rng.integers(0, 128, (3, 2048)).astype(np.uint8)
    b = rng.integers(-128, 128, (2048, 5)).astype(np.int8)
    check_op("MatMulInteger", [a, b, np.array(3, np.uint8)], opset=10)


# --------------------------------------------------------------------------- attention
@pytest.mark.parametrize("case", ["plain", "mask2d", "lengths", "causal", "bias_add", "hidden_sizes", "scale", "past",
                                  "mask3d"])
def test_attention(case):
    B, S, Hin, N = 2, 5, 16, 4
    x, w, b = r(B, S, Hin), r(Hin, 48) * 0.3, r(48) * 0.1
    attrs = dict(num_heads=N)
    ins = [x, w, b]
    n_out = 1
    if case == "mask2d":
        ins.append(np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.int32))
    elif case == "lengths":
        ins.append(np.array([3, 5], np.int32))
    elif case == "mask3d":
        ins.append(rng.integers(0, 2, (B, S, S)).astype(np.int32))
    elif case == "causal":
        attrs["unidirectional"] = 1
    elif case == "bias_add":
        ins += [None, None, r(B, N, S, S)]
    elif case == "hidden_sizes":
        w, b = r(Hin, 40) * 0.3, r(40) * 0.1
        ins = [x, w, b]
        attrs["qkv_hidden_sizes"] = [12, 12, 16]
    elif case == "scale":
        attrs["scale"] = 0.1
    elif case == "past":
        ins += [None, r(2, B, N, 2, 4)]  # past: (2, B, N, P, head_size)
        attrs["unidirectional"] = 1
        n_out = 2
    check_plans("Attention", ins, attrs, n_outputs=n_out, domain=MS, rtol=1e-4, atol=1e-5, initializers=(1, 2),
                expect_matmul=True, expect_sum=True)


@pytest.mark.parametrize("case", ["plain", "bias", "mask2d", "causal", "attn_bias", "past", "bnsh", "cross"])
def test_multi_head_attention(case):
    B, S, D, N = 2, 4, 8, 2
    q, k, v = r(B, S, D), r(B, S, D), r(B, S, D)
    attrs = dict(num_heads=N)
    ins = [q, k, v]
    n_out = 1
    if case == "bias":
        ins.append(r(3 * D))
    elif case == "mask2d":
        ins += [None, np.array([[1, 1, 0, 0], [1, 1, 1, 1]], np.int32)]
    elif case == "causal":
        attrs["unidirectional"] = 1
    elif case == "attn_bias":
        ins += [None, None, r(1, N, S, S)]
    elif case == "past":
        ins += [r(3 * D), None, None, r(B, N, 3, D // N), r(B, N, 3, D // N)]
        n_out = 3
    elif case == "bnsh":
        ins = [q, r(B, N, 6, D // N), r(B, N, 6, D // N)]
    elif case == "cross":
        ins = [q, r(B, 7, D), r(B, 7, 2 * D)]
    check_plans("MultiHeadAttention", ins, attrs, n_outputs=n_out, domain=MS, rtol=1e-4, atol=1e-5,
                expect_matmul=True)


def test_gemm_float16():
    a, b, c = r(3, 8, dtype=np.float16), r(4, 8, dtype=np.float16), r(4, dtype=np.float16)
    check_op("Gemm", [a, b, c], dict(transB=1, alpha=0.5), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("sa,sb", [((300, 200), (200, 150)),        # split over rows
                                   ((20, 400), (400, 900)),         # fewer rows: split over columns
                                   ((3, 1, 64, 96), (5, 96, 80)),   # broadcast batch
                                   ((7, 5), (5, 3))])               # small: one call
def test_split_matmul_matches_float64(sa, sb, monkeypatch):
    from halfsim.kernels import blas
    monkeypatch.setenv("HALFSIM_THREADS", "2")
    monkeypatch.setattr(blas, "_MIN_WORK", 1 << 12)  # split even the moderate cases
    a = rng.standard_normal(sa).astype(np.float32)
    b = rng.standard_normal(sb).astype(np.float32)
    got = blas.matmul(a, b)
    want = np.matmul(a.astype(np.float64), b.astype(np.float64))
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.sqrt(sa[-1]))


def test_single_threaded_blas_restores_the_thread_count():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from halfsim.kernels.blas import single_threaded_blas
    info = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    if not info:
        pytest.skip("no BLAS threadpoolctl can drive")
    before = info[0]["num_threads"]
    with single_threaded_blas():
        with single_threaded_blas():  # re-entrant
            inner = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"][0]["num_threads"]
        assert inner == 1
    after = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"][0]["num_threads"]
    assert after == before


@pytest.mark.parametrize("k,a_lo,a_hi,a_zp", [(64, 0, 255, 128),     # one exact sgemm
                                               (1024, 70, 186, 128),  # |A - 128| <= 58: one sgemm
                                               (1024, 0, 255, 128),   # two K-slices below 2**24 each
                                               (3000, 0, 255, 0),     # too many slices: 16 * hi + lo
                                               (5000, 0, 255, 0)])    # neither: float64 GEMM
@pytest.mark.parametrize("b_zp", [None, 119])
def test_matmul_integer_constant_b_prepared_once(k, a_lo, a_hi, a_zp, b_zp):
    # B as a weight (initializer): the fp32 interpreter converts it once; exact against ORT.
    a = rng.integers(a_lo, a_hi + 1, (5, k), dtype=np.uint8)
    a[0] = a_hi  # a row at the range's edge
    b = rng.integers(0, 256, (k, 7), dtype=np.uint8)
    b[:, 0] = 0  # extreme columns
    b[:, 1] = 255
    ins = [a, b, np.array(a_zp, np.uint8)] + ([np.array(b_zp, np.uint8)] if b_zp is not None else [])
    inits = (1, 3) if b_zp is not None else (1,)
    got = check_op("MatMulInteger", ins, opset=10, initializers=inits, rtol=0, atol=0)
    want = (a.astype(np.int64) - a_zp) @ (b.astype(np.int64) - (b_zp or 0))
    np.testing.assert_array_equal(got[0], want)


@pytest.mark.parametrize("threads", ["1", "3"])
@pytest.mark.parametrize("tb,b_zp", [(np.uint8, "scalar"), (np.int8, "vector"), (np.uint8, None)])
@pytest.mark.parametrize("bound", [True, False])
def test_matmul_integer_constant_8bit_b_blocks(tb, b_zp, threads, bound, monkeypatch):
    # An 8-bit constant B stays 8-bit: column blocks widened per call (kernels/qgemm.py),
    # 1100 columns in uneven ~1 MB blocks, a 3-D A, split over threads from 8M multiply-adds;
    # without a bindable sgemm (bound=False) the float32 copy of B - bzp goes to sgemm_exact.
    from halfsim.kernels import cblas
    from halfsim.ops import linalg
    calls = route_calls(monkeypatch, threads, bound, linalg, "_blocked_int_gemm", cblas, "sgemm_address")
    K, N = 1024, 1100
    a = rng.integers(0, 128, (2, 4, K), dtype=np.uint8)
    a[0, 0, ::50] = 127  # extremes; every row still within one exact GEMM
    lo, hi = np.iinfo(tb).min, np.iinfo(tb).max
    b = rng.integers(lo, hi + 1, (K, N)).astype(tb)
    b[:, 0], b[:, -1] = lo, hi
    ins = [a, b, np.array(60, np.uint8)]
    if b_zp == "scalar":
        ins.append(np.array(7, tb))
    elif b_zp == "vector":
        ins.append(rng.integers(-5, 6, (N,)).astype(tb))
    inits = (1, 3) if b_zp else (1,)
    got = check_op("MatMulInteger", ins, opset=10, initializers=inits, rtol=0, atol=0)
    bz = ins[3].astype(np.int64) if b_zp else 0
    np.testing.assert_array_equal(got[0], (a.astype(np.int64) - 60) @ (b.astype(np.int64) - bz))
    assert len(calls) == (1 if bound else 0)


def route_calls(monkeypatch, threads: str, driver: bool, mod, fn: str, addr_mod, addr_fn: str) -> list:
    """Set HALFSIM_THREADS, count the calls of mod.fn (a route under test) in the returned list,
    and without `driver` make addr_mod.addr_fn (the sgemm binding) report none; skip when the
    route is wanted and there is no binding."""
    if driver and not getattr(addr_mod, addr_fn)():
        pytest.skip("numpy's BLAS has no bindable ILP64 sgemm")
    monkeypatch.setenv("HALFSIM_THREADS", threads)
    calls: list = []
    real = getattr(mod, fn)
    monkeypatch.setattr(mod, fn, lambda *a: calls.append(1) or real(*a))
    if not driver:
        monkeypatch.setattr(addr_mod, addr_fn, lambda: 0)
    return calls
