"""Conv, ConvTranspose, ConvInteger, QLinearConv and pooling, checked against ONNX Runtime under
the fp32 plan (fast paths) and under a non-plain plan (accumulate-aware ctx.matmul/ctx.sum paths)."""
from __future__ import annotations

import numpy as np
import pytest

from opcheck import check_op
from test_ops_linalg import check_plans, u8s8_max

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
