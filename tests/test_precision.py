"""Precision emulation checked against independent oracles: numpy float16 arithmetic,
ml_dtypes bfloat16 arithmetic, and ORT running the model rewritten with Casts."""
import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import halfsim
from halfsim import metrics
from halfsim.policy import Policy

from opcheck import make_model


def _edge_fp16(rng, n):
    """fp16 values: random normals, subnormals, near-max values, zeros and infinities."""
    parts = [rng.standard_normal(n) * 10, rng.standard_normal(n) * 1e-6, rng.uniform(3e4, 65504, n) * rng.choice([-1, 1], n),
             np.array([0.0, -0.0, np.inf, -np.inf, 65504, -65504, 6e-8, -6e-8])]
    v = np.concatenate(parts).astype(np.float16)
    return v[rng.permutation(v.size)]


BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}
UNARY = {"Sqrt": np.sqrt, "Neg": np.negative, "Abs": np.abs, "Reciprocal": np.reciprocal}


@pytest.mark.parametrize("op", sorted(BINARY))
def test_binary_fp16_bit_exact_against_numpy_float16(op):
    rng = np.random.default_rng(1)
    a, b = _edge_fp16(rng, 3000), _edge_fp16(rng, 3000)
    m = halfsim.load(make_model(op, [a.astype(np.float32), b.astype(np.float32)]))
    got = m.run({"in0": a.astype(np.float32), "in1": b.astype(np.float32)}, precision="fp16")["out0"]
    with np.errstate(all="ignore"):
        want = BINARY[op](a, b).astype(np.float32)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32)) or np.array_equal(got, want, equal_nan=True)


@pytest.mark.parametrize("op", sorted(UNARY))
def test_unary_fp16_bit_exact_against_numpy_float16(op):
    rng = np.random.default_rng(2)
    a = _edge_fp16(rng, 5000)
    if op == "Sqrt":
        a = np.abs(a)
    m = halfsim.load(make_model(op, [a.astype(np.float32)]))
    got = m.run({"in0": a.astype(np.float32)}, precision="fp16")["out0"]
    with np.errstate(all="ignore"):
        want = UNARY[op](a).astype(np.float32)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("op", sorted(BINARY))
def test_binary_bf16_bit_exact_against_ml_dtypes(op):
    rng = np.random.default_rng(3)
    bf = ml_dtypes.bfloat16
    a = (rng.standard_normal(4000) * np.exp(rng.uniform(-60, 60, 4000))).astype(bf)
    b = (rng.standard_normal(4000) * np.exp(rng.uniform(-60, 60, 4000))).astype(bf)
    m = halfsim.load(make_model(op, [a.astype(np.float32), b.astype(np.float32)]))
    got = m.run({"in0": a.astype(np.float32), "in1": b.astype(np.float32)}, precision="bf16")["out0"]
    with np.errstate(all="ignore"):
        want = BINARY[op](a, b).astype(np.float32)
    np.testing.assert_array_equal(got, want)


def test_fp32_inputs_are_rounded_at_the_first_low_precision_op():
    x = np.array([1 + 2 ** -12, 70000.0, 1e-9], dtype=np.float32)
    m = halfsim.load(make_model("Neg", [x]))
    got = m.run({"in0": x}, precision="fp16")["out0"]
    with np.errstate(over="ignore"):
        want = -(x.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(got, want)


def _mlp(scale_bias=1.0, mask_min=False):
    rng = np.random.default_rng(0)
    W1 = (rng.standard_normal((16, 32)) * 0.3).astype(np.float32)
    b1 = (rng.standard_normal(32) * scale_bias).astype(np.float32)
    W2 = (rng.standard_normal((32, 8)) * 0.3).astype(np.float32)
    inits = [numpy_helper.from_array(W1, "W1"), numpy_helper.from_array(b1, "b1"), numpy_helper.from_array(W2, "W2")]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm1"),
             helper.make_node("Add", ["h", "b1"], ["hb"], name="bias1"),
             helper.make_node("Tanh", ["hb"], ["t"], name="act"),
             helper.make_node("MatMul", ["t", "W2"], ["z"], name="mm2")]
    if mask_min:
        inits.append(numpy_helper.from_array(np.array([0, np.finfo(np.float32).min] * 4, np.float32), "mask"))
        nodes.append(helper.make_node("Add", ["z", "mask"], ["y"], name="mask_add"))
    else:
        nodes.append(helper.make_node("Identity", ["z"], ["y"], name="out"))
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_fp16_preset_matches_ort_cast_rewrite_oracle():
    from halfsim.backends.ort import cast_rewrite, run
    proto = _mlp()
    x = np.random.default_rng(5).standard_normal((4, 16)).astype(np.float32)
    m = halfsim.load(proto)
    pred = m.run({"x": x}, precision="fp16")["y"]
    ref32 = run(proto, {"x": x})["y"]
    oracle = run(cast_rewrite(proto, "fp16"), {"x": x.astype(np.float16).astype(np.float32)}, optimize=False)["y"]
    assert metrics.rel_l2(ref32, oracle) > 1e-4  # the oracle really is in fp16
    fidelity = np.linalg.norm(pred - oracle) / np.linalg.norm(ref32 - oracle)
    assert fidelity <= 0.01


def test_events_report_saturated_constants_and_overflowing_activations():
    proto = _mlp(mask_min=True)
    m = halfsim.load(proto)
    x = np.random.default_rng(5).standard_normal((4, 16)).astype(np.float32)
    res = m.run({"x": x}, precision="fp16")
    kinds = {(e.node, e.kind, e.constant) for e in res.events}
    assert ("mask_add", "saturated", True) in kinds
    # Saturated to -65504, the masked logits stay finite: no NaN, no inf.
    assert np.isfinite(res["y"]).all()
    assert float(res["y"][:, 1].max()) < -60000
    # Overflow of activations: the same mask stored with overflow to inf.
    p = Policy.from_dict({"base": "fp16", "weights_overflow": "inf"})
    res2 = m.run({"x": x}, precision=p)
    assert np.isinf(res2["y"][:, 1]).all()
    assert any(e.kind == "overflow" for e in res2.events)
    big = halfsim.load(make_model("Mul", [np.full(3, 300.0, np.float32), np.full(3, 300.0, np.float32)]))
    r = big.run({"in0": np.full(3, 300.0, np.float32), "in1": np.full(3, 300.0, np.float32)}, precision="fp16")
    assert np.isinf(r["out0"]).all()
    assert [(e.kind, e.count) for e in r.events] == [("overflow", 3)]


def test_fp32_precision_is_bitwise_the_plain_run():
    proto = _mlp()
    x = np.random.default_rng(6).standard_normal((4, 16)).astype(np.float32)
    m = halfsim.load(proto)
    a = m.run({"x": x})["y"]
    b = m.run({"x": x}, precision=Policy("empty"))["y"]
    np.testing.assert_array_equal(a, b)


def _digits():
    from halfsim.demo import data_path
    with np.load(data_path("digits_test.npz")) as z:
        x = z["image"][:64]
    return onnx.load(data_path("digits.onnx")), x


def test_ort_cpu_fp16_preset_matches_ort_on_the_converted_model():
    import warnings
    from onnxconverter_common import float16
    from halfsim.backends.ort import run
    proto, x = _digits()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m16 = float16.convert_float_to_float16(proto, keep_io_types=False)
    want = run(m16, {"image": x.astype(np.float16)})["probs"].astype(np.float32)
    pred = halfsim.load(proto).run({"image": x}, precision="ort-cpu-fp16")["probs"]
    fp32 = halfsim.load(proto).run({"image": x})["probs"]
    assert metrics.rel_l2(fp32, want) > 1e-4          # the converted model really differs from fp32
    assert metrics.rel_l2(pred, want) < 1e-6          # and the preset predicts it to summation noise


def test_fp16_model_runs_with_true_fp16_semantics_like_the_fp16_preset():
    import warnings
    from onnxconverter_common import float16
    proto, x = _digits()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m16 = float16.convert_float_to_float16(proto, keep_io_types=True)
    typed = halfsim.load(m16).run({"image": x})["probs"]
    preset = halfsim.load(proto).run({"image": x}, precision="fp16")["probs"]
    assert typed.dtype == np.float32
    np.testing.assert_allclose(typed, preset, rtol=0, atol=2e-6)


def test_events_underflow_and_nan_created_by_an_op():
    x = np.array([1e-9, 3e-8, 1.0, 2e-8], np.float32)       # 1e-9 and 2e-8 flush to zero in fp16
    m = halfsim.load(make_model("Abs", [x]))
    r = m.run({"in0": x}, precision="fp16")
    assert [(e.kind, e.count) for e in r.events] == [("underflow", 2)]
    a = np.array([0.0, 1.0, np.inf], np.float32)
    b = np.array([np.inf, 2.0, 0.0], np.float32)
    m2 = halfsim.load(make_model("Mul", [a, b]))
    r2 = m2.run({"in0": a, "in1": b}, precision="fp16")
    assert ("nan", 2) in [(e.kind, e.count) for e in r2.events]
    # NaN that arrives with the inputs is not reported as created.
    a2 = np.array([np.nan, 1.0], np.float32)
    r3 = halfsim.load(make_model("Neg", [a2])).run({"in0": a2}, precision="fp16")
    assert not [e for e in r3.events if e.kind == "nan"]


def test_rounding_in_place_never_touches_the_callers_arrays():
    x = np.array([1 + 2 ** -12, 3.0], np.float32)
    keep = x.copy()
    m = halfsim.load(make_model("Relu", [x]))
    m.run({"in0": x}, precision="fp16")
    np.testing.assert_array_equal(x, keep)


def _weights_chain_model():
    """x @ (W * s) + c, with W * s and a Transpose folded as weight-only nodes: W * s overflows
    fp16 on 2 elements and w flushes 1 to zero where rounded, so folding must replay both events."""
    rng = np.random.default_rng(11)
    w = rng.standard_normal((8, 6)).astype(np.float32)
    w[0, 0], w[1, 1], w[2, 2] = 5000.0, -7000.0, 1e-9
    s = np.float32(20.0)
    nodes = [helper.make_node("Mul", ["w", "s"], ["ws"], name="scale_w"),
             helper.make_node("Transpose", ["ws"], ["wt"], name="tr", perm=[1, 0]),
             helper.make_node("Transpose", ["wt"], ["wsb"], name="tr2", perm=[1, 0]),
             helper.make_node("MatMul", ["x", "wsb"], ["xw"], name="mm"),
             helper.make_node("Relu", ["xw"], ["y"], name="relu")]
    g = helper.make_graph(nodes, "fold", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(s), "s")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    return m, w, s


@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp16-acc16", "autocast-fp16"])
def test_folded_weight_nodes_give_the_unfolded_results_and_events(precision):
    proto, w, s = _weights_chain_model()
    m = halfsim.load(proto)
    x = np.random.default_rng(12).standard_normal((3, 8)).astype(np.float32)
    # A hook turns folding off: every node computed in the run itself.
    plain = m.run({"x": x}, precision=precision, hook=lambda node, outs: None)
    first, again = m.run({"x": x}, precision=precision), m.run({"x": x}, precision=precision)
    assert m.__dict__.get("_policy_folds")  # folding did happen
    for r in (first, again):
        assert r["y"].tobytes() == plain["y"].tobytes()
        assert [e.to_dict() for e in r.events] == [e.to_dict() for e in plain.events]
    if precision == "fp16":
        # Independent oracle: numpy float16 for the folded weight, float32 GEMM, fp16 result.
        with np.errstate(over="ignore"):
            w16 = (w.astype(np.float16) * np.float16(s)).astype(np.float32)
        want = np.maximum(x.astype(np.float16).astype(np.float32) @ w16, 0).astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(first["y"], want)
        assert {(e.node, e.kind, e.count) for e in first.events} >= {("scale_w", "overflow", 2), ("scale_w", "underflow", 1)}


def test_fold_cache_is_per_policy_and_bounded():
    from halfsim import precision as P
    proto, _, _ = _weights_chain_model()
    m = halfsim.load(proto)
    x = np.ones((3, 8), np.float32)
    outs = {p: m.run({"x": x}, precision=p)["y"] for p in ("fp16", "bf16", "fp16-acc16", "tf32", "fp16")}
    assert len(m._policy_folds) <= P._FOLD_POLICIES
    assert not np.array_equal(outs["fp16"], outs["bf16"])  # not one policy's weights for another
    np.testing.assert_array_equal(outs["bf16"], m.run({"x": x}, precision="bf16", hook=lambda n, o: None)["y"])


@pytest.mark.parametrize("op,inputs,attrs", [
    ("Relu", 1, {}), ("Max", 2, {}), ("Min", 3, {}), ("Abs", 1, {}), ("Neg", 1, {}), ("Where", 2, {}),
    ("Clip", 3, {}), ("ReduceMax", 1, {"keepdims": 0}), ("MaxPool", 1, {"kernel_shape": [3]})])
def test_selecting_ops_on_rounded_inputs_bit_exact_against_numpy_float16(op, inputs, attrs):
    """Ops whose outputs are input values skip the output rounding when the inputs are already
    fp16: results as numpy float16 computes them, infinities and NaNs included."""
    rng = np.random.default_rng(13)
    xs = [_edge_fp16(rng, 500)[:1000].reshape(1, 4, 250) for _ in range(inputs)]
    xs[0].flat[::97] = np.nan
    if op == "Clip":  # bounds as scalars
        xs[1], xs[2] = np.float16(-3.0), np.float16(2.5)
    args = [a.astype(np.float32) for a in xs]
    if op == "Where":
        args = [xs[0].astype(np.float32) > 0] + args
        xs = [xs[0] > 0] + xs
    fns = {"Relu": lambda a: np.maximum(a, np.float16(0)), "Max": np.maximum, "Min": lambda a, b, c: np.minimum(np.minimum(a, b), c),
           "Abs": np.abs, "Neg": np.negative, "Where": np.where, "Clip": np.clip, "ReduceMax": lambda a: a.max(axis=(0, 1, 2)),
           "MaxPool": lambda a: np.lib.stride_tricks.sliding_window_view(a, 3, axis=2).max(-1)}
    m = halfsim.load(make_model(op, args, attrs))
    # Round the graph inputs to fp16 first (as a producing fp16 node would), so the op's inputs are fp16.
    pol = Policy.from_dict({"base": "fp16", "io": "fp16"})
    got = m.run({f"in{i}": a for i, a in enumerate(args)}, precision=pol)["out0"]
    want = np.asarray(fns[op](*xs)).astype(np.float32)
    if op == "MaxPool":
        # A NaN in a window is ORT's MlasPool fold (it drops NaN but as a first cell), which
        # halfsim's fp32 MaxPool follows: ORT on the fp16 values is the oracle there.
        from halfsim.backends.ort import run as ort_run
        want = ort_run(make_model(op, args, attrs), {f"in{i}": a for i, a in enumerate(args)})["out0"]
        assert not np.array_equal(want, np.asarray(fns[op](*xs), np.float32), equal_nan=True)
    assert got.shape == want.shape
    assert np.array_equal(got, want, equal_nan=True)
    # Clip with a bound missing uses float32's max: the input's inf becomes 3.4e38, which the
    # output rounding takes back to inf (an overflow of Clip's output).
    if op == "Clip":
        big = np.array([1e5, -1e5, 3.0], np.float32)
        m2 = halfsim.load(make_model("Clip", [big, np.array(-1e6, np.float32)]))
        r = m2.run({"in0": big, "in1": np.array(-1e6, np.float32)}, precision="fp16")
        assert np.isinf(r["out0"][:2]).all()
        assert [(e.tensor, e.kind, e.count) for e in r.events if e.tensor == "out0"] == [("out0", "overflow", 1)]


@pytest.mark.parametrize("rows,n", [(3, 40), (1100, 250)])  # below and above _PARALLEL_SUM_MIN
def test_reducesum_fp16_accumulation_against_numpy_float16_steps(rows, n):
    """fp16-acc16 ReduceSum: every running sum rounded to fp16, in index order, as numpy
    float16 additions compute it (each exact in float32, then rounded once)."""
    from halfsim.kernels import accumulate as A
    assert (rows * n >= A._PARALLEL_SUM_MIN) == (rows > 1000)
    rng = np.random.default_rng(21)
    x16 = (rng.standard_normal((rows, n)) * 30).astype(np.float16)
    axes = np.array([1], np.int64)
    m = halfsim.load(make_model("ReduceSum", [x16.astype(np.float32), axes], {"keepdims": 0}, opset=13, initializers=(1,)))
    got = m.run({"in0": x16.astype(np.float32)}, precision="fp16-acc16")["out0"]
    acc = x16[:, 0].copy()
    with np.errstate(over="ignore"):
        for k in range(1, n):
            acc = acc + x16[:, k]
    np.testing.assert_array_equal(got, acc.astype(np.float32))
    exact = x16.astype(np.float64).sum(axis=1)
    assert np.abs(got - exact).max() > 0  # the per-step rounding is visible


def test_weights_format_rounds_initializers_once_with_their_events_every_run():
    """ort-cpu-fp16 stores every weight in fp16: rounded once per model (saturating, with a
    'saturated' event each run), and afresh when a feed overrides the initializer."""
    w = np.array([1.0, 70000.0, 1 + 2 ** -12], np.float32)
    proto = make_model("Add", [np.zeros(3, np.float32), w], initializers=(1,))
    proto.graph.input.append(helper.make_tensor_value_info("in1", TensorProto.FLOAT, [3]))  # overridable
    m = halfsim.load(proto)
    x = np.zeros(3, np.float32)
    runs = [m.run({"in0": x}, precision="ort-cpu-fp16") for _ in range(2)]
    want = np.clip(w, -65504, 65504).astype(np.float16).astype(np.float32)
    for r in runs:
        np.testing.assert_array_equal(r["out0"], want)
        assert [(e.tensor, e.kind, e.count, e.constant) for e in r.events] == [("in1", "saturated", 1, True)]
    w2 = np.array([2.0, 3.0, 1 + 2 ** -11], np.float32)
    r = m.run({"in0": x, "in1": w2}, precision="ort-cpu-fp16")
    np.testing.assert_array_equal(r["out0"], w2.astype(np.float16).astype(np.float32))
    assert not [e for e in r.events if e.tensor == "in1"]  # the overridden 70000 is not reported
