"""Normalization ops against ONNX Runtime."""
import numpy as np
import pytest

import halfsim
from halfsim.errors import HalfsimError
from opcheck import assert_same, check_op_or_skip as check_op, feeds_of, make_model, run_ort

rng = np.random.default_rng(2)



def randn(*shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def bn_params(c, dtype=np.float32):
    return [randn(c).astype(dtype), randn(c).astype(dtype), randn(c).astype(dtype),
            (rng.random(c) + 0.1).astype(dtype)]


@pytest.mark.parametrize("opset", [7, 9, 14, 15])
@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 5), (2, 3, 4, 5), (1, 3, 2, 2, 2)])
def test_batchnorm(opset, shape):
    x = randn(*shape) * 2 + 1
    check_op("BatchNormalization", [x] + bn_params(3), {"epsilon": 1e-3}, opset=opset, initializers=(1, 2, 3, 4))
    check_op("BatchNormalization", [x] + bn_params(3), {}, opset=opset)


def test_batchnorm_spatial0_opset7():
    x = randn(2, 3, 4, 5)
    params = [randn(3, 4, 5), randn(3, 4, 5), randn(3, 4, 5), rng.random((3, 4, 5)).astype(np.float32) + 0.1]
    check_op("BatchNormalization", [x] + params, {"spatial": 0}, opset=7)


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_batchnorm_dtypes(dtype):
    x = randn(2, 3, 4, 4).astype(dtype)
    tol = 3e-3 if dtype == np.float16 else 1e-6
    check_op("BatchNormalization", [x] + bn_params(3, dtype), {}, opset=15, rtol=tol, atol=tol)


def test_batchnorm_training_mode_rejected():
    x = randn(2, 3, 4)
    m = make_model("BatchNormalization", [x] + bn_params(3), {"training_mode": 1}, opset=15, initializers=(1, 2, 3, 4))
    with pytest.raises(HalfsimError, match="training_mode"):
        halfsim.load(m)
        halfsim.load(m).run({"in0": x})


@pytest.mark.parametrize("axis", [-1, -2, 1, 0, 2])
@pytest.mark.parametrize("with_bias", [True, False])
def test_layernorm(axis, with_bias):
    x = randn(2, 3, 8) * 3 + 2
    norm_shape = x.shape[axis % 3:]
    ins = [x, randn(*norm_shape), randn(*norm_shape) if with_bias else None]
    if not with_bias:
        ins = ins[:2]
    check_op("LayerNormalization", ins, {"axis": axis, "epsilon": 1e-3}, n_outputs=3, opset=17)


def test_layernorm_broadcast_scale_and_eps_default():
    x = randn(2, 3, 8)
    check_op("LayerNormalization", [x, randn(8), randn(8)], {"axis": 1}, n_outputs=3, opset=17)
    check_op("LayerNormalization", [x, randn(8), randn(8)], {}, n_outputs=1, opset=17, initializers=(1, 2))


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_layernorm_dtypes(dtype):
    x = (randn(2, 3, 16) * 2).astype(dtype)
    tol = 3e-3 if dtype == np.float16 else 1e-5
    check_op("LayerNormalization", [x, randn(16).astype(dtype), randn(16).astype(dtype)], {},
             n_outputs=1 if dtype == np.float16 else 3, opset=17, rtol=tol, atol=tol)


def test_layernorm_float16_stash_outputs_are_float32():
    x = (randn(2, 3, 16) * 2).astype(np.float16)
    check_op("LayerNormalization", [x, randn(16).astype(np.float16)], {}, n_outputs=3, opset=17, rtol=3e-3,
             atol=3e-3)
    check_op("SimplifiedLayerNormalization", [x, randn(16).astype(np.float16)], {}, n_outputs=2, opset=17,
             rtol=3e-3, atol=3e-3)


@pytest.mark.parametrize("opset", [11, 13])
def test_layernorm_contrib_default_domain_before_17(opset):
    x = randn(4, 16)
    check_op("LayerNormalization", [x, randn(16), randn(16)], {"epsilon": 1e-12}, n_outputs=3, opset=opset)


def test_layernorm_constant_rows():
    x = np.ones((2, 8), np.float32)
    check_op("LayerNormalization", [x, randn(8), randn(8)], {}, n_outputs=3, opset=17)


@pytest.mark.parametrize("axis", [-1, 1])
def test_simplified_layernorm(axis):
    x = randn(2, 3, 8) + 1
    check_op("SimplifiedLayerNormalization", [x, randn(*x.shape[axis % 3:])], {"axis": axis, "epsilon": 1e-6},
             n_outputs=2, opset=13)
    check_op("SimplifiedLayerNormalization", [x.astype(np.float16), randn(8).astype(np.float16)], {}, n_outputs=1,
             opset=17, rtol=3e-3, atol=3e-3)


@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 3, 4, 5), (1, 2, 2, 3, 3)])
def test_instance_norm(shape):
    x = randn(*shape) * 3 + 1
    check_op("InstanceNormalization", [x, randn(shape[1]), randn(shape[1])], {"epsilon": 1e-3})
    check_op("InstanceNormalization", [x, randn(shape[1]), randn(shape[1])], {}, initializers=(1, 2))


def test_instance_norm_dtypes():
    x = randn(2, 3, 6, 6).astype(np.float16)
    check_op("InstanceNormalization", [x, randn(3).astype(np.float16), randn(3).astype(np.float16)], {},
             rtol=3e-3, atol=3e-3)
    x = randn(2, 3, 6).astype(np.float64)
    check_op("InstanceNormalization", [x, randn(3).astype(np.float64), randn(3).astype(np.float64)], {})


@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("shape", [(2, 4, 5), (2, 4, 3, 3)])
def test_group_norm(groups, shape):
    x = randn(*shape) * 2 + 1
    check_op("GroupNormalization", [x, randn(groups), randn(groups)], {"num_groups": groups, "epsilon": 1e-3},
             opset=18)
    check_op("GroupNormalization", [x, randn(shape[1]), randn(shape[1])], {"num_groups": groups}, opset=21)


def test_group_norm_bad_groups():
    x = randn(2, 4, 3)
    m = make_model("GroupNormalization", [x, randn(4), randn(4)], {"num_groups": 3}, opset=21, initializers=(1, 2))
    with pytest.raises(HalfsimError, match="num_groups"):
        halfsim.load(m).run({"in0": x})


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_lp_norm(p, axis):
    x = randn(3, 4, 5)
    x[0, 0] = 0  # a zero vector along the last axis
    check_op("LpNormalization", [x], {"p": p, "axis": axis})
    check_op("LpNormalization", [x.astype(np.float64)], {"p": p, "axis": axis})


@pytest.mark.parametrize("size", [1, 3, 5])  # ORT accepts odd sizes only
def test_lrn(size):
    x = randn(2, 6, 4, 4)
    check_op("LRN", [x], {"size": size}, rtol=1e-5)
    check_op("LRN", [x], {"size": size, "alpha": 0.01, "beta": 0.5, "bias": 2.0}, rtol=1e-5)


def test_lrn_float16():
    check_op("LRN", [randn(1, 5, 3, 3).astype(np.float16)], {"size": 3}, rtol=3e-3, atol=3e-3)


@pytest.mark.parametrize("opset", [9, 13])
@pytest.mark.parametrize("axes", [None, [0, 2, 3], [1], [2, 3], [-1]])
def test_mvn(opset, axes):
    x = randn(2, 3, 4, 5) * 2 + 3
    check_op("MeanVarianceNormalization", [x], {} if axes is None else {"axes": axes}, opset=opset, rtol=1e-4,
             atol=1e-5)


# -- com.microsoft skip layer norms ------------------------------------------------------------
@pytest.mark.parametrize("beta,bias", [(False, False), (True, False), (True, True), (False, True)])
@pytest.mark.parametrize("skip_shape", [(2, 3, 16), (3, 16)])
def test_skip_layernorm(beta, bias, skip_shape):
    x = randn(2, 3, 16) * 2
    ins = [x, randn(*skip_shape), randn(16), randn(16) if beta else None, randn(16) if bias else None]
    while ins[-1] is None:
        ins.pop()
    check_op("SkipLayerNormalization", ins, {"epsilon": 1e-5}, n_outputs=4, domain="com.microsoft")
    check_op("SkipLayerNormalization", ins, {}, n_outputs=1, domain="com.microsoft", initializers=(2, 3, 4))


@pytest.mark.parametrize("bias", [False, True])
def test_skip_simplified_layernorm(bias):
    x = randn(2, 3, 16) * 2
    ins = [x, randn(2, 3, 16), randn(16)] + ([randn(16)] if bias else [])
    m = make_model("SkipSimplifiedLayerNormalization", ins, {"epsilon": 1e-6}, n_outputs=4, domain="com.microsoft")
    want = run_ort(m, feeds_of(m, ins))
    got = halfsim.load(m).run(feeds_of(m, ins))
    for i in (0, 2, 3):  # output 1 (mean) is not defined for the simplified form
        assert_same(got[f"out{i}"], want[i], what=f"output {i}")
    assert got["out1"].shape == want[1].shape and got["out1"].dtype == want[1].dtype


def test_skip_layernorm_float16():
    x = (randn(2, 3, 16) * 2).astype(np.float16)
    ins = [x, randn(2, 3, 16).astype(np.float16), randn(16).astype(np.float16), randn(16).astype(np.float16)]
    check_op("SkipLayerNormalization", ins, {}, n_outputs=1, domain="com.microsoft", rtol=3e-3, atol=3e-3)
