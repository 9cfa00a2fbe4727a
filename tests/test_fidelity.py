"""Preset fp16 against the Cast-rewrite oracle (halfsim.backends.ort.cast_rewrite: ORT on the
model with every float node output rounded through Cast(float16), weights and inputs rounded):
the fidelity measurement of validation.fidelity on a model built here, with the three places
where the oracle and halfsim had parted on the validation models:
- an LSTM (halfsim's is a fused op whose gates run in fp32: the oracle unrolls it with float64
  activations, where ORT's own LSTM uses MLAS's logistic, ~1e-7 absolute error);
- a BatchNormalization whose variance (1e5, above the fp16 maximum) is a Constant node: a weight,
  saturated to 65504 by both, where the oracle used to Cast it to inf;
- DynamicQuantizeLinear -> MatMulInteger -> Cast(float): int32 sums above 65504 overflow to inf
  in fp16 in both.
Weights and inputs are dyadic with few bits and every GEMM sum has one nonzero product or is
exact in fp32, so that no fp32 summation order (OpenBLAS against MLAS) can move a value across an
fp16 rounding boundary: the two must then agree bit for bit."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import halfsim
from halfsim.backends import ort as ortb

T, B, I, H = 3, 2, 8, 4


def _dyadic(rng, shape, bits: int = 4, scale: float = 1.0) -> np.ndarray:
    return (rng.integers(-(1 << bits), 1 << bits, size=shape) * (scale / (1 << bits))).astype(np.float32)


def _model() -> tuple[onnx.ModelProto, dict]:
    rng = np.random.default_rng(11)
    W = _dyadic(rng, (1, 4 * H, I), scale=0.5)
    # One nonzero recurrent weight per gate row (a power of two): h.R^T is a single product.
    R = np.zeros((1, 4 * H, H), np.float32)
    R[0, np.arange(4 * H), rng.integers(0, H, 4 * H)] = np.float32(2.0) ** rng.integers(-3, 1, 4 * H)
    Bias = _dyadic(rng, (1, 8 * H), scale=0.25)
    # int8 weights in the reduced 7-bit range: ORT's u8*s8 kernel on AVX2 sums pairs of products
    # in saturating int16 (vpmaddubsw), which halfsim's fp32 MatMulInteger does not model.
    wq = rng.integers(-64, 64, size=(48, 5)).astype(np.int8)
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R"), numpy_helper.from_array(Bias, "B"),
             numpy_helper.from_array(np.array([1.5, -0.25, 3.0], np.float32), "bn_scale"),
             numpy_helper.from_array(np.array([0.5, -1.0, 2.0], np.float32), "bn_bias"),
             numpy_helper.from_array(np.array([10.0, -20.0, 0.0], np.float32), "bn_mean"),
             numpy_helper.from_array(wq, "wq"), numpy_helper.from_array(np.int8(3), "wzp"),
             numpy_helper.from_array(np.float32(0.0078125), "wscale")]
    nodes = [
        helper.make_node("LSTM", ["x", "W", "R", "B"], ["y", "y_h", "y_c"], hidden_size=H, name="lstm"),
        helper.make_node("Constant", [], ["bn_var"], name="var",
                         value=numpy_helper.from_array(np.array([1e5, 7e4, 2.0], np.float32))),
        helper.make_node("BatchNormalization", ["z", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["bn"],
                         epsilon=1e-3, name="bn"),
        helper.make_node("DynamicQuantizeLinear", ["u"], ["uq", "us", "uz"], name="dql"),
        helper.make_node("MatMulInteger", ["uq", "wq", "uz", "wzp"], ["acc"], name="mmi"),
        helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("Mul", ["us", "wscale"], ["sc"], name="scale"),
        helper.make_node("Mul", ["accf", "sc"], ["q"], name="deq"),
    ]
    g = helper.make_graph(
        nodes, "fidelity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [T, B, I]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3, 4, 4]),
         helper.make_tensor_value_info("u", TensorProto.FLOAT, [6, 48])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "y_h", "y_c", "bn", "accf", "q")],
        inits)
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    feeds = {"x": _dyadic(rng, (T, B, I), scale=2.0),
             "z": (rng.standard_normal((2, 3, 4, 4)) * 300).astype(np.float32),
             # a wide range: uint8 codes up to 255 against int8 weights give sums past 65504
             "u": np.concatenate([rng.uniform(-1, 60, (3, 48)), rng.uniform(-1, 2, (3, 48))]).astype(np.float32)}
    return proto, feeds


def test_cast_rewrite_oracle_has_no_lstm_and_keeps_constants_finite():
    proto, _ = _model()
    m = ortb.cast_rewrite(proto, "fp16")
    ops = [n.op_type for n in m.graph.node]
    assert "LSTM" not in ops and "Exp" in ops
    var = [n for n in m.graph.node if n.op_type == "Constant" and n.output[0] == "bn_var"][0]
    v = numpy_helper.to_array(var.attribute[0].t)
    assert v.tolist() == [65504.0, 65504.0, 2.0]
    assert "bn_var__raw" not in {o for n in m.graph.node for o in n.output}


def test_fp16_preset_equals_cast_rewrite_oracle_bit_for_bit():
    from validation.fidelity import fp16_fidelity
    proto, feeds = _model()
    model = halfsim.load(proto)
    pred = model.run(feeds, precision="fp16")
    fp32 = ortb.run(proto, feeds)
    rounded = {k: v.astype(np.float16).astype(np.float32) for k, v in feeds.items()}
    oracle = ortb.run(ortb.cast_rewrite(proto, "fp16"), rounded, optimize=False)
    for name in ("y", "y_h", "y_c", "bn", "accf", "q"):
        assert np.array_equal(pred[name], oracle[name], equal_nan=True), name
        # ... and the oracle really is another model than fp32: the test can fail.
        assert not np.array_equal(fp32[name], oracle[name], equal_nan=True), name
    # the saturated variance and the overflowing int32 sums are there
    assert np.isinf(oracle["accf"]).any() and np.isfinite(oracle["accf"]).any()
    assert np.isfinite(oracle["bn"]).all()
    fid = fp16_fidelity(proto, model, feeds)
    assert all(v["fidelity"] == 0.0 for v in fid.values()), fid


def test_unrolled_lstm_matches_orts_lstm_in_fp32():
    # The oracle's LSTM expression itself (no rounding to fp16): ORT's LSTM to fp32 noise.
    proto, feeds = _model()
    m = ortb.cast_rewrite(proto, "fp16")
    del m.graph.node[:]
    body = ortb._lstm_nodes(proto.graph.node[0], {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer},
                            {v.name: v for v in proto.graph.input}, "u_")
    assert body is not None
    m.graph.node.extend(body)
    del m.graph.output[:]
    m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in ("y", "y_h", "y_c"))
    got = ortb.run(m, feeds, optimize=False)
    want = ortb.run(proto, feeds)
    for name in ("y", "y_h", "y_c"):
        assert got[name].shape == want[name].shape
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=2e-6)


@pytest.mark.parametrize("attrs", [{"direction": "reverse"}, {"direction": "bidirectional"}])
def test_unrolled_lstm_directions(attrs):
    rng = np.random.default_rng(3)
    nd = 2 if attrs["direction"] == "bidirectional" else 1
    W, R = _dyadic(rng, (nd, 4 * H, I)), _dyadic(rng, (nd, 4 * H, H))
    node = helper.make_node("LSTM", ["x", "W", "R", "", "", "h0"], ["y", "y_h", "y_c"], hidden_size=H, **attrs)
    g = helper.make_graph([node], "l", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [T, B, I]),
                                        helper.make_tensor_value_info("h0", TensorProto.FLOAT, [nd, B, H])],
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "y_h", "y_c")],
                          [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R")])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    feeds = {"x": _dyadic(rng, (T, B, I)), "h0": _dyadic(rng, (nd, B, H))}
    want = ortb.run(proto, feeds)
    got = ortb.run(ortb.cast_rewrite(proto, "fp16", saturate_weights=True), feeds, optimize=False)
    assert "LSTM" not in [n.op_type for n in ortb.cast_rewrite(proto, "fp16").graph.node]
    for name in ("y", "y_h", "y_c"):
        # The weights and inputs are fp16 values already: the oracle is ORT's LSTM with its
        # outputs rounded to fp16, within half an fp16 ulp plus fp32 noise of ORT's result.
        ulp = np.spacing(np.abs(want[name]).astype(np.float16)).astype(np.float32)
        assert np.all(np.abs(got[name] - want[name]) <= 0.5 * ulp + 1e-6), name
        assert np.array_equal(got[name], got[name].astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("n", [300, 20000])
@pytest.mark.parametrize("static", [True, False])
def test_sigmoid_oracle_computes_halfsims_fp32_sigmoid(n, static):
    # Small tensors: halfsim computes 1/(1+exp(-x)) in fp32, where MLAS's logistic (ORT's
    # Sigmoid) errs by ~1e-7 absolute and flips fp16 roundings of outputs below 1e-3; large
    # ones: halfsim emulates MLAS bit for bit. The oracle follows, with a size known before the
    # run or not.
    node = helper.make_node("Sigmoid", ["x"], ["y"])
    g = helper.make_graph([node], "s", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n] if static else ["n"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    x = np.random.default_rng(n).uniform(-16, 4, n).astype(np.float16).astype(np.float32)
    oracle = ortb.run(ortb.cast_rewrite(proto, "fp16"), {"x": x}, optimize=False)["y"]
    got = halfsim.load(proto).run({"x": x}, precision="fp16")["y"]
    np.testing.assert_array_equal(got, oracle)
    if n < 16384:  # ORT's own Sigmoid, rounded, is another function there
        plain = ortb.run(proto, {"x": x})["y"].astype(np.float16).astype(np.float32)
        assert not np.array_equal(plain, oracle)


def test_fidelity_is_inf_when_nonfinite_values_disagree(monkeypatch):
    # A NaN on one side only is no agreement, whatever the norm over the finite rest says.
    from validation import fidelity
    proto, feeds = _model()
    model = halfsim.load(proto)
    real_run = fidelity.ortb.run

    def run_with_nan(m, f, **kw):
        out = real_run(m, f, **kw)
        if kw.get("optimize") is False:  # the oracle's run
            out["bn"] = out["bn"].copy()
            out["bn"].flat[0] = np.nan
        return out
    monkeypatch.setattr(fidelity.ortb, "run", run_with_nan)
    fid = fidelity.fp16_fidelity(proto, model, feeds)
    assert fid["bn"]["fidelity"] == float("inf") and fid["bn"]["nonfinite_mismatch"] == 1
    assert fid["y"]["fidelity"] == 0.0 and fid["accf"]["nonfinite_mismatch"] == 0  # equal infinities agree
