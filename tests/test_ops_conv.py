"""Conv, ConvTranspose, ConvInteger, QLinearConv and pooling, checked against ONNX Runtime under
the fp32 plan (fast paths) and under a non-plain plan (accumulate-aware ctx.matmul/ctx.sum paths)."""
from __future__ import annotations

import numpy as np
import pytest

from opcheck import check_op
from test_ops_linalg import check_plans, route_calls, u8s8_max

rng = np.random.default_rng(1)


def r(*shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


# -------------------------------------------------------------------------------- Conv
CONV_CASES = [
    # x shape, w shape, attrs
    ((1, 3, 8, 8), (4, 3, 3, 3), {}),
    ((2, 3, 8, 9), (4, 3, 3, 3), dict(pads=[1, 1, 1, 1])),
    ((1, 3, 9, 9), (4, 3, 3, 3), dict(strides=[2, 2], pads=[1, 0, 1, 2])),
    ((1, 4, 10, 10), (6, 2, 3, 3), dict(group=2, dilations=[2, 2], pads=[2, 2, 2, 2])),
    ((1, 4, 7, 7), (4, 1, 3, 3), dict(group=4, pads=[1, 1, 1, 1])),                 # depthwise
    ((2, 4, 9, 8), (8, 1, 3, 3), dict(group=4, strides=[2, 1], dilations=[1, 2])),  # depthwise x2
    ((3, 1, 8, 8), (16, 1, 3, 3), dict(pads=[1, 1, 1, 1])),                         # 1 channel, batch 3
    ((2, 2, 6, 6), (6, 1, 3, 3), dict(group=2)),                                    # multiplier 3, batch 2
    ((1, 4, 8, 8), (4, 1, 5, 5), dict(group=4, strides=[2, 2], auto_pad="SAME_UPPER")),
    ((1, 3, 7, 8), (5, 3, 3, 2), dict(auto_pad="SAME_UPPER", strides=[2, 3])),
    ((1, 3, 7, 8), (5, 3, 4, 2), dict(auto_pad="SAME_LOWER", strides=[2, 2])),
    ((1, 3, 7, 8), (5, 3, 3, 3), dict(auto_pad="VALID", strides=[2, 2])),
    ((1, 6, 5, 5), (4, 6, 1, 1), {}),                                               # pointwise
    ((1, 6, 5, 5), (4, 6, 1, 1), dict(strides=[2, 2])),
    ((1, 6, 5, 5), (4, 3, 1, 1), dict(group=2)),
    ((2, 3, 11), (4, 3, 3), dict(pads=[1, 2], strides=[2])),                        # 1D
    ((1, 2, 9), (2, 1, 4), dict(group=2, dilations=[2], pads=[3, 2])),
    ((1, 2, 9), (2, 1, 4), dict(group=2, auto_pad="SAME_LOWER")),
    ((1, 2, 5, 6, 7), (3, 2, 2, 3, 3), dict(pads=[1, 0, 1, 0, 1, 1], strides=[1, 2, 2])),  # 3D
    ((1, 4, 4, 5, 6), (4, 1, 3, 3, 3), dict(group=4, pads=[1] * 6)),
    ((0, 3, 8, 8), (4, 3, 3, 3), {}),                                               # empty batch
    ((1, 3, 3, 3), (2, 3, 3, 3), {}),                                               # 1x1 output
]


@pytest.mark.parametrize("xs,ws,attrs", CONV_CASES)
@pytest.mark.parametrize("bias", [False, True])
def test_conv(xs, ws, attrs, bias):
    ins = [r(*xs), r(*ws)] + ([r(ws[0])] if bias else [])
    check_plans("Conv", ins, attrs, initializers=(1, 2), rtol=1e-4, atol=1e-4, expect_matmul=xs[0] > 0)


DEPTHWISE_CASES = [
    # The direct depthwise kernel's stride-1 path: kernel widths 3 and 5 (unrolled rows) and
    # others (generic taps), dilations, asymmetric pads, multiplier 2, and planes larger than
    # its 4096-element row block (several blocks, the last one partial).
    ((2, 3, 9, 11), (3, 1, 5, 5), dict(group=3, pads=[2, 1, 0, 2])),
    ((1, 4, 7, 9), (8, 1, 3, 3), dict(group=4, dilations=[2, 3], pads=[2, 3, 2, 3])),
    ((1, 2, 8, 10), (2, 1, 2, 4), dict(group=2, pads=[0, 1, 1, 2])),
    ((1, 2, 9, 9), (2, 1, 7, 7), dict(group=2, pads=[3, 3, 3, 3])),
    ((1, 3, 70, 101), (3, 1, 3, 3), dict(group=3, pads=[1, 1, 1, 1])),
    ((1, 2, 45, 130), (2, 1, 5, 5), dict(group=2, pads=[2, 2, 2, 2], dilations=[1, 2])),
    ((2, 3, 5, 6), (3, 1, 1, 3), dict(group=3)),
    # planes lower than the kernel: kernel rows that would read only padding are skipped
    ((2, 4, 2, 30), (4, 1, 5, 5), dict(group=4, pads=[2, 2, 2, 2])),
    ((1, 3, 3, 20), (3, 1, 5, 3), dict(group=3, dilations=[2, 1], pads=[4, 1, 3, 1])),
    ((1, 2, 1, 9), (2, 1, 3, 3), dict(group=2, pads=[2, 1, 0, 1])),
    # small planes with >= 64 channels: the channels-last kernel (strided, dilated, asymmetric
    # pads, planes lower than the kernel, batch 2)
    ((1, 64, 4, 13), (64, 1, 5, 5), dict(group=64, pads=[2, 2, 2, 2])),
    ((2, 96, 7, 9), (96, 1, 3, 3), dict(group=96, strides=[2, 2], pads=[1, 0, 0, 1])),
    ((1, 80, 1, 20), (80, 1, 5, 5), dict(group=80, pads=[2, 2, 2, 2])),
    ((1, 64, 5, 7), (64, 1, 3, 3), dict(group=64, dilations=[2, 2], pads=[2, 2, 2, 2])),
]


@pytest.mark.parametrize("xs,ws,attrs", DEPTHWISE_CASES)
def test_conv_depthwise_direct(xs, ws, attrs):
    ins = [r(*xs), r(*ws), r(ws[0])]
    check_plans("Conv", ins, attrs, initializers=(1, 2), rtol=1e-4, atol=1e-4, expect_matmul=True)


@pytest.mark.parametrize("xs,ws,attrs", DEPTHWISE_CASES[-4:])
def test_depthwise_channels_last_matches_plane_kernel(xs, ws, attrs):
    # Same summation order per output (bias, then taps row-major): bit-equal to the plane kernel.
    from halfsim.kernels.conv import depthwise2d, depthwise2d_cl
    from halfsim.ops.conv import window_geometry
    x, w, b = r(*xs), r(*ws)[:, 0], r(ws[0])
    out_sp, pb, _, st, dl = window_geometry(xs[2:], list(ws[2:]), attrs.get("strides"), attrs.get("dilations"),
                                            attrs.get("pads"), "NOTSET")
    y1 = np.empty((xs[0], ws[0]) + tuple(out_sp), np.float32)
    y2 = np.empty_like(y1)
    depthwise2d(x, w, b, y1, st[0], st[1], dl[0], dl[1], pb[0], pb[1], 0, xs[0] * ws[0])
    depthwise2d_cl(x, w, b, y2, st[0], st[1], dl[0], dl[1], pb[0], pb[1], 0, xs[0])
    np.testing.assert_array_equal(y1, y2)


@pytest.mark.parametrize("xs,ws,attrs", [
    ((2, 8, 60, 81), (12, 4, 3, 3), dict(group=2, pads=[1, 0, 2, 1], strides=[1, 2])),
    ((1, 16, 61, 50), (8, 16, 3, 3), dict(dilations=[2, 1], pads=[2, 1, 2, 1])),
    ((1, 32, 900), (16, 32, 5), dict(pads=[2, 2])),                                 # 1-D
    ((1, 4, 12, 20, 20), (8, 4, 3, 3, 3), dict(pads=[1] * 6)),                     # 3-D
    ((1, 3, 170, 130), (16, 3, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1])),    # stem: 85 rows, uneven tiles
    ((2, 8, 130, 140), (16, 4, 2, 3), dict(group=2, strides=[3, 2], dilations=[1, 2])),  # batch 2, groups
])
@pytest.mark.parametrize("driver", [True, False])
def test_conv_parallel_row_tiles(xs, ws, attrs, driver, monkeypatch):
    # Over 2M multiply-adds the plain fp32 conv shares its im2col row tiles between threads;
    # 2-D float32 tiles run as nogil numba calls (driver), else (no sgemm binding, other
    # ranks) as numpy calls.
    from halfsim.ops import conv as conv_mod
    calls = route_calls(monkeypatch, "3", driver, conv_mod, "_conv_im2col_driver", conv_mod, "_sgemm_address")
    check_plans("Conv", [r(*xs), r(*ws), r(ws[0])], attrs, initializers=(1, 2), rtol=1e-4, atol=1e-4,
                expect_matmul=True)
    check_op("Conv", [r(*xs), r(*ws)], attrs, initializers=(1,), rtol=1e-4, atol=1e-4)
    im2col_2d = len(xs) == 4 and "strides" in attrs  # the stride-1 2-D case is a shifted-GEMM conv
    assert len(calls) == (2 if driver and im2col_2d else 0)


def test_conv_kernel_shape_and_opset7():
    check_op("Conv", [r(1, 2, 6, 6), r(3, 2, 3, 3)], dict(kernel_shape=[3, 3]), opset=7, rtol=1e-4, atol=1e-4)


def test_conv_float16():
    check_op("Conv", [r(1, 2, 6, 6, dtype=np.float16), r(3, 2, 3, 3, dtype=np.float16)], rtol=1e-2, atol=1e-2)


def test_conv_bad_channels():
    import halfsim
    from opcheck import make_model
    m = make_model("Conv", [r(1, 3, 6, 6), r(4, 2, 3, 3)], initializers=(1,))
    with pytest.raises(halfsim.errors.HalfsimError):
        halfsim.load(m).run({"in0": r(1, 3, 6, 6)})


# ----------------------------------------------------------------------- ConvTranspose
CONVT_CASES = [
    ((1, 3, 4, 4), (3, 2, 3, 3), {}),
    ((2, 3, 4, 5), (3, 2, 3, 3), dict(strides=[2, 2])),
    ((1, 3, 4, 5), (3, 2, 3, 3), dict(strides=[2, 3], pads=[1, 0, 1, 2], output_padding=[1, 1])),
    ((1, 4, 4, 4), (4, 3, 3, 3), dict(group=2, strides=[2, 2], dilations=[2, 1])),
    ((1, 4, 5, 5), (4, 1, 3, 3), dict(group=4, strides=[2, 2], pads=[1, 1, 1, 1])),
    ((1, 3, 4, 4), (3, 2, 4, 4), dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    ((1, 3, 4, 5), (3, 2, 3, 3), dict(strides=[2, 2], output_shape=[9, 11])),
    ((1, 3, 4, 5), (3, 2, 3, 3), dict(strides=[2, 2], output_shape=[8, 10])),
    ((1, 3, 5, 4), (3, 2, 3, 3), dict(strides=[2, 2], output_shape=[9, 7])),
    ((1, 3, 4, 5), (3, 2, 3, 3), dict(strides=[2, 2], auto_pad="SAME_UPPER")),
    ((1, 3, 4, 5), (3, 2, 3, 3), dict(strides=[2, 2], auto_pad="SAME_LOWER")),
    ((1, 3, 4, 5), (3, 2, 2, 2), dict(strides=[2, 2], auto_pad="VALID")),
    ((1, 3, 4, 5), (3, 2, 3, 3), dict(strides=[3, 2], auto_pad="SAME_UPPER", output_shape=[10, 9])),
    ((2, 3, 7), (3, 4, 3), dict(strides=[2], pads=[1, 0])),                         # 1D
    ((1, 2, 3, 3, 4), (2, 2, 2, 3, 3), dict(strides=[2, 1, 2], pads=[0, 1, 1, 1, 0, 0])),  # 3D
    ((1, 3, 4, 4), (3, 2, 1, 1), {}),
    # stride == kernel: non-overlapping taps (one transposing copy in plain fp32)
    ((2, 4, 5, 6), (4, 3, 2, 2), dict(strides=[2, 2], group=2)),
    ((1, 3, 5, 6), (3, 2, 2, 3), dict(strides=[2, 3], auto_pad="SAME_UPPER")),
    ((1, 3, 5, 6), (3, 2, 2, 2), dict(strides=[2, 2], output_padding=[1, 0])),
    ((2, 3, 7), (3, 4, 3), dict(strides=[3])),
    ((1, 2, 3, 3, 4), (2, 2, 2, 2, 2), dict(strides=[2, 2, 2])),
]


@pytest.mark.parametrize("xs,ws,attrs", CONVT_CASES)
@pytest.mark.parametrize("bias", [False, True])
def test_conv_transpose(xs, ws, attrs, bias):
    groups = attrs.get("group", 1)
    ins = [r(*xs), r(*ws)] + ([r(ws[1] * groups)] if bias else [])
    check_plans("ConvTranspose", ins, attrs, initializers=(1, 2), rtol=1e-4, atol=1e-4, expect_matmul=True)


# ------------------------------------------------------------------- integer convs
@pytest.mark.parametrize("xt,wt", [(np.uint8, np.uint8), (np.uint8, np.int8), (np.int8, np.int8)])
@pytest.mark.parametrize("attrs", [{}, dict(pads=[1, 1, 1, 1], strides=[2, 2]), dict(group=2, dilations=[2, 2])])
def test_conv_integer(xt, wt, attrs):
    x = rng.integers(np.iinfo(xt).min, u8s8_max(xt, wt), (1, 4, 7, 7)).astype(xt)
    w = rng.integers(np.iinfo(wt).min, np.iinfo(wt).max + 1, (4, 4 // attrs.get("group", 1), 3, 3)).astype(wt)
    check_op("ConvInteger", [x, w, np.array(7, xt), np.array(3, wt)], attrs, opset=10, initializers=(1, 3))
    check_op("ConvInteger", [x, w], attrs, opset=10)


@pytest.mark.parametrize("dt", [np.uint8, np.int8])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("attrs", [dict(pads=[1, 1, 1, 1]), dict(group=4, strides=[2, 2], pads=[1, 1, 1, 1])])
def test_qlinear_conv(dt, per_channel, attrs):
    lo = np.iinfo(dt).min
    x = rng.integers(lo, u8s8_max(dt, np.int8), (1, 4, 6, 6)).astype(dt)
    cg = 4 // attrs.get("group", 1)
    w = rng.integers(-128, 128, (4, cg, 3, 3)).astype(np.int8)
    ws = (rng.uniform(0.005, 0.02, 4) if per_channel else np.array(0.01)).astype(np.float32)
    wz = np.zeros(4 if per_channel else (), np.int8)
    b = rng.integers(-500, 500, 4).astype(np.int32)
    ins = [x, np.array(0.05, np.float32), np.array(3, dt), w, ws, wz, np.array(0.3, np.float32), np.array(5, dt), b]
    check_op("QLinearConv", ins, attrs, opset=10, initializers=(1, 2, 3, 4, 5, 6, 7, 8))


# ------------------------------------------------------------------------------- pooling
POOL_CASES = [
    ((1, 2, 8, 8), dict(kernel_shape=[2, 2], strides=[2, 2])),
    ((2, 3, 9, 7), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ((1, 2, 9, 7), dict(kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 0, 1], ceil_mode=1)),
    ((1, 2, 10, 10), dict(kernel_shape=[3, 3], strides=[3, 3], ceil_mode=1)),
    ((1, 2, 8, 9), dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")),
    ((1, 2, 8, 9), dict(kernel_shape=[2, 3], strides=[2, 2], auto_pad="SAME_LOWER")),
    ((1, 2, 8, 9), dict(kernel_shape=[3, 3], strides=[2, 1], auto_pad="VALID")),
    ((1, 2, 9, 9), dict(kernel_shape=[3, 3], dilations=[2, 2], pads=[2, 2, 2, 2])),
    ((1, 2, 10, 9), dict(kernel_shape=[2, 2], dilations=[2, 1], strides=[2, 2], ceil_mode=1)),
    ((2, 3, 11), dict(kernel_shape=[3], strides=[2], pads=[1, 1])),
    ((1, 2, 5, 6, 7), dict(kernel_shape=[2, 3, 3], strides=[2, 2, 2], pads=[0, 1, 1, 1, 1, 0])),
    ((0, 2, 6, 6), dict(kernel_shape=[2, 2])),
]


@pytest.mark.parametrize("xs,attrs", POOL_CASES)
def test_max_pool(xs, attrs):
    check_op("MaxPool", [r(*xs)], attrs, opset=12)


@pytest.mark.parametrize("xs,attrs", [c for c in POOL_CASES if c[0][0] > 0])
@pytest.mark.parametrize("storage_order", [0, 1])
def test_max_pool_indices(xs, attrs, storage_order):
    if storage_order and len(xs) != 4:
        pytest.skip("ORT supports storage_order=1 indices for 2-D pooling only")
    check_op("MaxPool", [r(*xs)], dict(attrs, storage_order=storage_order), n_outputs=2, opset=12)


def test_max_pool_ties_and_ints():
    x = rng.integers(0, 3, (1, 2, 6, 6)).astype(np.float32)  # many ties: the first maximum wins
    check_op("MaxPool", [x], dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]), n_outputs=2, opset=12)
    for dt in (np.uint8, np.int8):
        xi = rng.integers(np.iinfo(dt).min, np.iinfo(dt).max, (1, 2, 7, 7)).astype(dt)
        check_op("MaxPool", [xi], dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), opset=12)


def test_max_pool_float16_opset8():
    check_op("MaxPool", [r(1, 2, 6, 6, dtype=np.float16)], dict(kernel_shape=[2, 2], strides=[2, 2]), opset=8)


@pytest.mark.parametrize("xs,attrs", POOL_CASES)
@pytest.mark.parametrize("cip", [0, 1])
def test_average_pool(xs, attrs, cip):
    check_plans("AveragePool", [r(*xs)], dict(attrs, count_include_pad=cip), opset=19, rtol=1e-5, atol=1e-6,
                expect_sum=xs[0] > 0)


def test_average_pool_opset7_and_float16():
    check_op("AveragePool", [r(1, 2, 6, 6)], dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]), opset=7)
    check_op("AveragePool", [r(1, 2, 6, 6, dtype=np.float16)], dict(kernel_shape=[2, 2]), opset=11,
             rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("xs,attrs", [c for c in POOL_CASES if "dilations" not in c[1] and c[0][0] > 0][:8])
@pytest.mark.parametrize("p", [1, 2, 3])
def test_lp_pool(xs, attrs, p):
    check_plans("LpPool", [r(*xs)], dict(attrs, p=p), opset=18, rtol=1e-5, atol=1e-5, expect_sum=True)


@pytest.mark.parametrize("xs", [(2, 3, 5, 6), (1, 4, 7), (1, 2, 3, 4, 5), (1, 3, 1, 1)])
def test_global_pools(xs):
    x = r(*xs)
    check_plans("GlobalAveragePool", [x], rtol=1e-5, atol=1e-6, expect_sum=True)
    check_op("GlobalMaxPool", [x])
    for p in (1, 2, 3):
        check_plans("GlobalLpPool", [x], dict(p=p), opset=17, rtol=1e-5, atol=1e-5, expect_sum=True)


@pytest.mark.parametrize("xs,attrs", [
    ((1, 2, 8, 8), dict(kernel_shape=[2, 2], strides=[2, 2])),
    ((2, 3, 9, 7), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
])
def test_max_unpool(xs, attrs):
    from opcheck import run_ort, make_model
    x = r(*xs)
    y, idx = run_ort(make_model("MaxPool", [x], attrs, n_outputs=2, opset=12), {"in0": x})
    check_op("MaxUnpool", [y, idx], attrs, opset=11)
    check_op("MaxUnpool", [y, idx, np.array(xs, np.int64)], attrs, opset=11)


def test_max_roi_pool():
    x = r(2, 3, 12, 10)
    rois = np.array([[0, 1, 1, 6, 8], [1, 0, 0, 9, 11], [0, 2.4, 3.6, 4.5, 5.5], [1, 3, 2, 3, 2]], np.float32)
    check_op("MaxRoiPool", [x, rois], dict(pooled_shape=[3, 2], spatial_scale=1.0))
    check_op("MaxRoiPool", [x, rois], dict(pooled_shape=[2, 2], spatial_scale=0.5))


def test_conv_row_tiled():
    # Large enough for the row-tiled im2col path (K >= 64, columns over the tile budget).
    x = r(1, 16, 70, 150)
    check_plans("Conv", [x, r(8, 16, 3, 3), r(8)], dict(pads=[1, 2, 0, 1], strides=[1, 2]), initializers=(1, 2),
                rtol=1e-4, atol=1e-4, expect_matmul=True)
    check_op("Conv", [x, r(8, 16, 3, 3)], dict(pads=[1, 1, 1, 1], dilations=[2, 1], strides=[2, 1]),
             initializers=(1,), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cin", [4, 64])  # K = 36 (float32 columns) and 576 (integer path)
def test_conv_integer_exact_on_both_paths(cin):
    # Full-range uint8 x int8: with K = 576 the products can pass 2**24, so the exact integer
    # fallback runs; with K = 36 the float32 sgemm path does. ORT's int32 result is exact.
    x = rng.integers(0, 256, (1, cin, 9, 11), dtype=np.uint8)
    w = rng.integers(-128, 128, (5, cin, 3, 3), dtype=np.int8)
    w[0].fill(-128)
    x[0, :, :3] = 255  # some windows reach the extreme sum
    check_op("ConvInteger", [x, w, np.array(0, np.uint8), np.array(0, np.int8)], {"pads": [1, 1, 1, 1]}, opset=10,
             initializers=(1, 3), rtol=0, atol=0)


@pytest.mark.parametrize("threads", ["1", "3"])
@pytest.mark.parametrize("xs,ws,attrs", [
    ((1, 16, 20, 70), (24, 16, 3, 3), dict(pads=[1, 1, 1, 1])),                 # shifted-GEMM tiles
    ((2, 24, 33, 40), (32, 24, 3, 3), dict(pads=[1, 0, 1, 2], strides=[2, 2])),  # im2col tiles, uneven
    ((1, 32, 17, 19), (32, 1, 3, 3), dict(group=32, pads=[1, 1, 1, 1])),        # depthwise kernel
    ((1, 48, 16, 33), (64, 48, 1, 1), {}),                                      # pointwise tiles
])
def test_conv_integer_float_route(xs, ws, attrs, threads, monkeypatch):
    # Every partial sum below 2**24 (per-filter sum of |w - wzp| times max |x - xzp|): the
    # integer conv runs as the plain fp32 conv on (x - xzp) and (w - wzp), exact in any order.
    monkeypatch.setenv("HALFSIM_THREADS", threads)
    x = rng.integers(0, 256, xs, dtype=np.uint8)
    w = rng.integers(-127, 128, ws, dtype=np.int8)
    x[0, :, :2] = 255  # windows at the extreme
    for inits in ((1, 3), ()):
        check_op("ConvInteger", [x, w, np.array(128, np.uint8), np.array(-1, np.int8)], attrs, opset=10,
                 initializers=inits, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_global_average_pool_specials(dtype):
    # The plain path sums planes with a BLAS matrix-vector product: NaN and inf propagate as in ORT.
    x = r(2, 5, 6, 7, dtype=dtype)
    x[0, 1, 2, 3] = np.nan
    x[0, 2, 0, 0] = np.inf
    x[1, 3, 1, 1], x[1, 3, 2, 2] = np.inf, -np.inf
    x[1, 4] *= 1e30
    if dtype == np.float32:
        check_op("GlobalAveragePool", [x], rtol=1e-5, atol=1e-6)
        return
    # ORT has no float64 kernel: numpy's mean is the oracle.
    import halfsim
    from opcheck import make_model
    got = halfsim.load(make_model("GlobalAveragePool", [x])).run({"in0": x})["out0"]
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, np.mean(x, axis=(2, 3), keepdims=True), rtol=1e-12)


@pytest.mark.parametrize("threads,driver", [("1", True), ("3", True), ("3", False)])
@pytest.mark.parametrize("xs,ws", [
    ((1, 16, 37, 70), (24, 16, 1, 1)),     # one thread: column tiles of ~_SHIFT_TILE_BYTES
    ((2, 64, 45, 47), (40, 64, 1, 1)),     # over 8M multiply-adds: split, 2115 columns in uneven tiles
    ((1, 64, 300), (32, 64, 1)),           # 1-D
])
def test_conv_pointwise_tiles(xs, ws, threads, driver, monkeypatch):
    # Plain fp32 1x1 stride-1 convs run as nogil sgemm tiles on the input in place (driver),
    # else (no sgemm binding) as one matmul.
    from halfsim.ops import conv as conv_mod
    calls = route_calls(monkeypatch, threads, driver, conv_mod, "_conv_pointwise_driver", conv_mod, "_sgemm_address")
    check_plans("Conv", [r(*xs), r(*ws), r(ws[0])], {}, initializers=(1, 2), rtol=1e-4, atol=1e-4,
                expect_matmul=True)
    check_op("Conv", [r(*xs), r(*ws)], {}, initializers=(1,), rtol=1e-4, atol=1e-4)
    assert len(calls) == (2 if driver else 0)


# ------------------------------------------------- shifted-GEMM conv and fused Conv tails
SHIFTED_CASES = [
    # Stride-1 2-D convs over 1M multiply-adds (the strided-sgemm path, no im2col): pads on
    # each side, none, dilation, a non-square kernel, batch 2, rows that do not divide in tiles.
    ((1, 16, 40, 52), (24, 16, 3, 3), dict(pads=[1, 1, 1, 1])),
    ((2, 8, 33, 47), (12, 8, 3, 3), dict(pads=[0, 2, 1, 0])),
    ((1, 12, 30, 64), (8, 12, 3, 3), {}),
    ((1, 8, 40, 80), (16, 8, 3, 5), dict(dilations=[2, 1], pads=[2, 2, 2, 2])),
    ((1, 4, 64, 96), (16, 4, 5, 5), dict(auto_pad="SAME_UPPER")),
    ((2, 32, 200, 1), (48, 32, 5, 1), dict(pads=[2, 0, 2, 0])),  # magika-like column map: ctypes tiles
]


@pytest.mark.parametrize("threads,driver", [("1", True), ("3", True), ("3", False)])
@pytest.mark.parametrize("xs,ws,attrs", SHIFTED_CASES)
def test_conv_shifted_sgemm(xs, ws, attrs, threads, driver, monkeypatch):
    # driver: the nogil numba tiles (kernels/convtile.py); else the ctypes sgemm tiles.
    from halfsim.ops import conv as conv_mod
    if conv_mod._sgemm() is None:
        pytest.skip("numpy's BLAS has no bindable ILP64 sgemm")
    monkeypatch.setenv("HALFSIM_THREADS", threads)
    if not driver:
        monkeypatch.setattr(conv_mod, "_sgemm_address", lambda: 0)
    calls = []
    real = conv_mod._conv_shifted
    monkeypatch.setattr(conv_mod, "_conv_shifted", lambda *a: calls.append(1) or real(*a))
    check_op("Conv", [r(*xs), r(*ws), r(ws[0])], attrs, initializers=(1, 2), rtol=1e-4, atol=1e-4)
    check_op("Conv", [r(*xs), r(*ws)], attrs, initializers=(1,), rtol=1e-4, atol=1e-4)
    assert len(calls) == 2


def _tail_model(shape, affine: str, act: str, extra_reader: str | None = None):
    """Conv (3x3, pad 1) -> [Mul(c) -> Add(c)] -> SiLU (Sigmoid, Mul) | HardSwish as PP-OCR
    exports it (Add 3, Clip 0..6, Mul, Div 6) | HardSigmoid | nothing; `extra_reader` names a tensor that a
    second output also reads (so the chain must stop before it)."""
    from onnx import TensorProto, helper, numpy_helper
    g = np.random.default_rng(5)
    N, C, H, W = shape
    M = 8
    inits = [numpy_helper.from_array((g.standard_normal((M, C, 3, 3)) * 0.5).astype(np.float32), "w"),
             numpy_helper.from_array(g.standard_normal(M).astype(np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1])]
    t = "c"
    if affine:
        cshape = (M, 1, 1) if affine == "channel" else (1,)
        inits += [numpy_helper.from_array(g.uniform(0.5, 2, cshape).astype(np.float32), "s"),
                  numpy_helper.from_array(g.standard_normal(cshape).astype(np.float32), "h")]
        nodes += [helper.make_node("Mul", ["s", "c"], ["m"]), helper.make_node("Add", ["m", "h"], ["a"])]
        t = "a"
    if act == "silu":
        nodes += [helper.make_node("Sigmoid", [t], ["sg"]), helper.make_node("Mul", [t, "sg"], ["y"])]
    elif act == "hardswish":
        inits += [numpy_helper.from_array(np.float32(v), n) for v, n in ((3, "k3"), (0, "k0"), (6, "k6"))]
        nodes += [helper.make_node("Add", [t, "k3"], ["p"]), helper.make_node("Clip", ["p", "k0", "k6"], ["q"]),
                  helper.make_node("Mul", ["q", t], ["r"]), helper.make_node("Div", ["r", "k6"], ["y"])]
    elif act == "hardsigmoid":
        nodes.append(helper.make_node("HardSigmoid", [t], ["y"], alpha=0.3, beta=0.4))
    else:
        nodes.append(helper.make_node("Identity", [t], ["y"]))
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if extra_reader:
        nodes.append(helper.make_node("Neg", [extra_reader], ["side"]))
        outs.append(helper.make_tensor_value_info("side", TensorProto.FLOAT, None))
    gr = helper.make_graph(nodes, "tail", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))], outs, inits)
    return helper.make_model(gr, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NaN input through the node-by-node run
@pytest.mark.parametrize("shape", [(1, 3, 9, 10), (1, 3, 24, 24), (2, 3, 40, 52)])  # numpy / numba / MLAS sizes
@pytest.mark.parametrize("affine,act", [("channel", "hardswish"), ("", "hardswish"), ("", "silu"),
                                        ("scalar", "silu"), ("channel", ""), ("", "hardsigmoid"),
                                        ("scalar", "hardsigmoid")])
def test_fused_conv_tail_bits_equal_unfused(shape, affine, act):
    import halfsim
    from opcheck import run_ort
    proto = _tail_model(shape, affine, act)
    x = (np.random.default_rng(3).standard_normal(shape) * 3).astype(np.float32)
    x.reshape(-1)[:4] = [np.nan, np.inf, -np.inf, -3.0]  # specials through every tail
    m = halfsim.load(proto)
    fused = m.run({"x": x})["y"]
    fg = m._fast[id(m.graph)]
    assert len(fg.steps) == (1 if act else 2)  # the chain is the Conv's step (+ the Identity)
    unfused = m.run({"x": x}, observe="all")["y"]  # node by node: every op on its own
    np.testing.assert_array_equal(fused.view(np.uint32), unfused.view(np.uint32))
    want = run_ort(proto, {"x": x})[0]
    np.testing.assert_allclose(fused, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reader", ["m", "a", "sg", "c"])
def test_fused_conv_tail_stops_at_a_shared_tensor(reader):
    import halfsim
    from opcheck import run_ort
    act = "silu"
    proto = _tail_model((1, 3, 24, 24), "channel", act, extra_reader=reader)
    x = np.random.default_rng(4).standard_normal((1, 3, 24, 24)).astype(np.float32)
    m = halfsim.load(proto)
    got = m.run({"x": x})
    want = run_ort(proto, {"x": x})
    np.testing.assert_allclose(got["y"], want[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["side"], want[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got["y"], m.run({"x": x}, observe="all")["y"])


@pytest.mark.parametrize("n,c,m,bias", [(2, 88, 22, True), (1, 8, 2, False), (3, 200, 50, True)])
def test_conv_pointwise_on_pooled_vector(n, c, m, bias):
    # (N, C, 1, 1) inputs (squeeze-excitation gates): plain fp32 runs one GEMM; the non-plain plan
    # keeps ctx.matmul (check_plans runs both).
    ins = [r(n, c, 1, 1), r(m, c, 1, 1)] + ([r(m)] if bias else [])
    check_plans("Conv", ins, {}, initializers=(1, 2), rtol=1e-5, atol=1e-5, expect_matmul=True)
    check_op("Conv", [r(n, c, 1, 1), r(m, c, 1, 1)], dict(strides=[2, 2]), initializers=(1,), rtol=1e-5, atol=1e-5)
