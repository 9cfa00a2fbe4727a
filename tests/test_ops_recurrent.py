"""RNN, GRU and LSTM against ONNX Runtime with random weights of moderate scale."""
import numpy as np
import onnx
import pytest
from onnx import helper

import halfsim
from halfsim.interpreter import _FP32Plan
from opcheck import assert_same, check_op, run_ort

RNG = np.random.default_rng(1234)
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


def _f32(*shape, scale=0.5):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _inputs(op_type, T=5, B=3, I=4, H=6, num_dir=1, *, bias=True, lens=None, init=True, peep=False,
            layout=0):
    g = GATES[op_type]
    X = _f32(T, B, I) if layout == 0 else _f32(B, T, I)
    W = _f32(num_dir, g * H, I)
    R = _f32(num_dir, g * H, H)
    Bb = _f32(num_dir, 2 * g * H) if bias else None
    sl = None if lens is None else np.asarray(lens, dtype=np.int32)
    st_shape = (num_dir, B, H) if layout == 0 else (B, num_dir, H)
    h0 = _f32(*st_shape) if init else None
    ins = [X, W, R, Bb, sl, h0]
    if op_type == "LSTM":
        ins.append(_f32(*st_shape) if init else None)
        ins.append(_f32(num_dir, 3 * H) if peep else None)
    return ins


class _TestPlan(_FP32Plan):
    """A non-identity plan that changes nothing: tests override one primitive."""
    identity = False

    def on_inputs(self, node, args):
        return args, (None,)

    def plain(self, ctx):
        return False


def _outs(op_type):
    return 3 if op_type == "LSTM" else 2


@pytest.mark.parametrize("op_type", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_directions(op_type, direction):
    nd = 2 if direction == "bidirectional" else 1
    ins = _inputs(op_type, num_dir=nd)
    check_op(op_type, ins, {"hidden_size": 6, "direction": direction}, n_outputs=_outs(op_type), opset=13)


@pytest.mark.parametrize("op_type", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_sequence_lens(op_type, direction):
    nd = 2 if direction == "bidirectional" else 1
    ins = _inputs(op_type, T=6, B=4, num_dir=nd, lens=[6, 3, 1, 4])
    check_op(op_type, ins, {"hidden_size": 6, "direction": direction}, n_outputs=_outs(op_type), opset=13)


@pytest.mark.parametrize("op_type", ["RNN", "GRU", "LSTM"])
def test_no_bias_no_initial_state(op_type):
    ins = _inputs(op_type, bias=False, init=False)
    check_op(op_type, ins, {"hidden_size": 6}, n_outputs=_outs(op_type), opset=9)


@pytest.mark.parametrize("op_type", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_layout1_via_transposed_ort(op_type, direction):
    # ORT's CPU kernels reject layout 1: the oracle is ORT at layout 0 on transposed tensors.
    nd = 2 if direction == "bidirectional" else 1
    ins = _inputs(op_type, num_dir=nd, layout=1, lens=[5, 2, 4], peep=True)
    outs = ["y", "yh", "yc"][:_outs(op_type)]
    m1, feeds1 = _node_model(op_type, ins, outs, {"hidden_size": 6, "direction": direction, "layout": 1})
    ins0 = list(ins)
    ins0[0] = np.ascontiguousarray(ins[0].transpose(1, 0, 2))
    for k in (5, 6):
        if k < len(ins):
            ins0[k] = np.ascontiguousarray(ins[k].transpose(1, 0, 2))
    m0, feeds0 = _node_model(op_type, ins0, outs, {"hidden_size": 6, "direction": direction})
    want = run_ort(m0, feeds0)
    got = halfsim.load(m1).run(feeds1)
    assert_same(got["y"], want[0].transpose(2, 0, 1, 3), what="Y")
    for name, w in zip(outs[1:], want[1:]):
        assert_same(got[name], w.transpose(1, 0, 2), what=name)


@pytest.mark.parametrize("op_type", ["RNN", "GRU", "LSTM"])
def test_clip(op_type):
    ins = _inputs(op_type)
    ins[1] = ins[1] * 4  # large pre-activations so the clip bites
    check_op(op_type, ins, {"hidden_size": 6, "clip": 0.7}, n_outputs=_outs(op_type), opset=13)


@pytest.mark.parametrize("lbr", [0, 1])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_gru_linear_before_reset(lbr, direction):
    nd = 2 if direction == "bidirectional" else 1
    ins = _inputs("GRU", num_dir=nd, lens=[5, 3, 2])
    check_op("GRU", ins, {"hidden_size": 6, "linear_before_reset": lbr, "direction": direction}, n_outputs=2,
             opset=14)


def test_lstm_peepholes_and_input_forget():
    ins = _inputs("LSTM", num_dir=2, peep=True, lens=[5, 4, 2])
    check_op("LSTM", ins, {"hidden_size": 6, "direction": "bidirectional"}, n_outputs=3, opset=14)
    check_op("LSTM", ins, {"hidden_size": 6, "direction": "bidirectional", "input_forget": 1}, n_outputs=3,
             opset=14)


ACT_CASES = [
    ("RNN", ["Relu"], None, None),
    ("RNN", ["LeakyRelu"], [0.2], None),
    ("RNN", ["Affine"], [0.8], [0.1]),
    ("RNN", ["Softsign"], None, None),
    ("RNN", ["Softplus"], None, None),
    ("RNN", ["Elu"], [0.7], None),
    ("RNN", ["HardSigmoid"], [0.3], [0.4]),
    ("RNN", ["ScaledTanh"], [1.5], [0.6]),
    ("RNN", ["ThresholdedRelu"], [0.1], None),
    ("RNN", ["Elu"], None, None),  # ORT defaults
    ("GRU", ["HardSigmoid", "Softsign"], [0.25], [0.45]),
    ("GRU", ["Sigmoid", "LeakyRelu", "HardSigmoid", "Tanh"], [0.1, 0.3], [0.6]),  # bidirectional
    ("LSTM", ["HardSigmoid", "ScaledTanh", "Affine"], [0.2, 1.1, 0.9], [0.5, 0.8, 0.05]),
    ("LSTM", ["Sigmoid", "Tanh", "Relu", "Sigmoid", "Elu", "Softsign"], [0.9], None),  # bidirectional
]


@pytest.mark.parametrize("op_type,acts,alpha,beta", ACT_CASES)
def test_activations(op_type, acts, alpha, beta):
    per_dir = {"RNN": 1, "GRU": 2, "LSTM": 3}[op_type]
    nd = len(acts) // per_dir
    attrs = {"hidden_size": 6, "activations": acts, "direction": "bidirectional" if nd == 2 else "forward"}
    if alpha:
        attrs["activation_alpha"] = alpha
    if beta:
        attrs["activation_beta"] = beta
    check_op(op_type, _inputs(op_type, num_dir=nd), attrs, n_outputs=_outs(op_type), opset=13)


def _node_model(op_type, ins, outs, attrs, opset=14, initializers=()):
    names = ["X", "W", "R", "B", "sl", "h0", "c0", "P"][:len(ins)]
    g_in, node_in, inits = [], [], []
    for i, (n, a) in enumerate(zip(names, ins)):
        node_in.append(n if a is not None else "")
        if a is not None and i in initializers:
            inits.append(onnx.numpy_helper.from_array(a, n))
        elif a is not None:
            g_in.append(helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape)))
    node = helper.make_node(op_type, node_in, outs, **attrs)
    g_out = [onnx.ValueInfoProto(name=o) for o in outs if o]
    m = helper.make_model(helper.make_graph([node], "g", g_in, g_out, initializer=inits),
                          opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    feeds = {n: a for i, (n, a) in enumerate(zip(names, ins)) if a is not None and i not in initializers}
    return m, feeds


@pytest.mark.parametrize("outs", [["", "yh", "yc"], ["y", "", ""], ["", "", "yc"], ["y", "yh"], ["", "yh"]])
def test_lstm_omitted_outputs(outs):
    ins = _inputs("LSTM", num_dir=2, lens=[5, 1, 3], peep=True)
    m, feeds = _node_model("LSTM", ins, outs, {"hidden_size": 6, "direction": "bidirectional"})
    want = run_ort(m, feeds)
    got = halfsim.load(m).run(feeds)
    for name, w in zip([o for o in outs if o], want):
        assert_same(got[name], w, 1e-5, 1e-6, what=name)


def test_zero_length_rows():
    # ORT zeroes the final state of a row whose sequence length is 0.
    for op_type in ("RNN", "GRU", "LSTM"):
        ins = _inputs(op_type, num_dir=2, lens=[5, 0, 3])
        check_op(op_type, ins, {"hidden_size": 6, "direction": "bidirectional"}, n_outputs=_outs(op_type),
                 opset=14)


def test_lstm_weights_as_initializers_batch1_long():
    # DTLN-like: batch 1, weights constant, longer sequence, hidden 16.
    ins = _inputs("LSTM", T=40, B=1, I=8, H=16)
    check_op("LSTM", ins, {"hidden_size": 16}, n_outputs=3, opset=13, initializers=(1, 2, 3), rtol=1e-5,
             atol=2e-6)


def test_lstm_matmul_goes_through_ctx():
    # The precision layer swaps ctx.matmul; every X·W^T and H·R^T must go through it.
    ins = _inputs("LSTM", T=4, B=2, I=3, H=5, num_dir=2)
    m, feeds = _node_model("LSTM", ins, ["y", "yh", "yc"], {"hidden_size": 5, "direction": "bidirectional"})
    class Counting(_TestPlan):
        calls = 0

        def matmul(self, ctx, a, b):
            Counting.calls += 1
            return np.matmul(a, b)

    halfsim.load(m).run(feeds, precision=Counting())
    assert Counting.calls == 2 * (1 + 4)  # per direction: one X·W^T, one H·R^T per step


def test_bad_direction_is_model_error():
    ins = _inputs("RNN")
    m, _ = _node_model("RNN", ins, ["y"], {"hidden_size": 6, "direction": "sideways"})
    with pytest.raises(halfsim.errors.HalfsimError, match="direction"):
        halfsim.load(m).run({n: a for n, a in zip(["X", "W", "R", "B", "sl", "h0"], ins) if a is not None})


@pytest.mark.parametrize("op_type", ["RNN", "GRU", "LSTM"])
def test_float64_keeps_dtype(op_type):
    # ORT's CPU GRU/LSTM have no double kernels: compare with ORT's float32 run instead.
    ins = _inputs(op_type, lens=[5, 2, 3])
    m, feeds = _node_model(op_type, ins, ["y", "yh"], {"hidden_size": 6}, opset=14)
    want = run_ort(m, feeds)
    ins64 = [None if a is None else (a.astype(np.float64) if a.dtype == np.float32 else a) for a in ins]
    m64, feeds64 = _node_model(op_type, ins64, ["y", "yh"], {"hidden_size": 6}, opset=14)
    got = halfsim.load(m64).run(feeds64)
    for name, w in zip(["y", "yh"], want):
        assert got[name].dtype == np.float64
        np.testing.assert_allclose(got[name], w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op_type", ["RNN", "GRU", "LSTM"])
def test_step_rounding_hook_sees_every_step(op_type):
    # A plan that rounds intermediates to fp16 must be consulted on every step's state: emulate
    # with a counting plan that really rounds, and check the result moved off fp32 but stays close.
    ins = _inputs(op_type, T=6, B=2)
    outs = ["y", "yh", "yc"][:_outs(op_type)]
    m, feeds = _node_model(op_type, ins, outs, {"hidden_size": 6})
    class Fp16Steps(_TestPlan):
        calls = 0

        def round_compute(self, ctx, x):
            Fp16Steps.calls += 1
            return np.asarray(x).astype(np.float16).astype(np.float32)

    hm = halfsim.load(m)
    ref = hm.run(feeds)["y"]
    got = hm.run(feeds, precision=Fp16Steps())["y"]
    assert Fp16Steps.calls >= 6 * 2
    assert not np.array_equal(got, ref)
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-2)
    # every hidden state written to Y is exactly representable in fp16
    np.testing.assert_array_equal(got, got.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("seed", range(12))
def test_random_configurations(seed):
    # Random mixes of every option at once, against ORT.
    r = np.random.default_rng(seed)
    op_type = ["RNN", "GRU", "LSTM"][seed % 3]
    direction = ["forward", "reverse", "bidirectional"][r.integers(3)]
    nd = 2 if direction == "bidirectional" else 1
    T, B, I, H = (int(v) for v in r.integers(1, 7, size=4))
    lens = r.integers(1, T + 1, size=B).tolist() if r.random() < 0.6 else None
    ins = _inputs(op_type, T, B, I, H, nd, bias=r.random() < 0.7, lens=lens, init=r.random() < 0.6,
                  peep=r.random() < 0.5)
    attrs = {"hidden_size": H, "direction": direction}
    if r.random() < 0.4:
        attrs["clip"] = float(r.uniform(0.3, 2.0))
    if op_type == "LSTM" and r.random() < 0.4:
        attrs["input_forget"] = 1
    if op_type == "GRU":
        attrs["linear_before_reset"] = int(r.integers(2))
    check_op(op_type, ins, attrs, n_outputs=_outs(op_type), opset=14)


@pytest.mark.parametrize("direction,T,bias,init,forget", [
    ("forward", 1, True, True, 0), ("reverse", 3, True, False, 0), ("bidirectional", 4, False, True, 0),
    ("forward", 2, True, True, 1)])
def test_lstm_constant_weights_specialized(direction, T, bias, init, forget):
    # Streaming shape (batch 1) with weights as initializers: the fp32 schedule runs the
    # prepared LSTM; it must match ORT and keep the node-by-node path's bits.
    nd = 2 if direction == "bidirectional" else 1
    ins = _inputs("LSTM", T=T, B=1, I=7, H=6, num_dir=nd, bias=bias, init=init)
    attrs = {"hidden_size": 6, "direction": direction, "input_forget": forget}
    check_op("LSTM", ins, attrs, n_outputs=3, opset=14, initializers=(1, 2, 3) if bias else (1, 2))
    m, feeds = _node_model("LSTM", ins, ["y", "yh", "yc"], attrs, initializers=(1, 2, 3) if bias else (1, 2))
    model = halfsim.load(m)
    fast = model.run(feeds)
    steps = model._fast[id(model.graph)].steps
    assert steps[0][1] is not steps[0][0].impl.fn  # the prepared form ran
    general = model.run(feeds, observe=["y"])  # node by node through the op itself
    for k in ("y", "yh", "yc"):
        np.testing.assert_array_equal(fast[k], general[k])


@pytest.mark.parametrize("op,gates", [("LSTM", 4), ("GRU", 3), ("RNN", 1)])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("clip", [None, 3.0])
@pytest.mark.parametrize("special", ["one_nan", "all_nan", "inf"])
@pytest.mark.parametrize("B,H", [(2, 6), (8, 64)])  # the numpy steps and the fused numba gates
def test_nan_and_inf_inputs_as_ort(op, gates, bias, clip, special, B, H):
    # With a bias ORT clamps each LSTM/GRU gate with std::min then std::max (NaN -> +clip, or
    # FLT_MAX), so a NaN input saturates the gates instead of turning the outputs NaN.
    rng = np.random.default_rng(gates * 100 + H)
    T, I = 4, 5
    X = rng.standard_normal((T, B, I)).astype(np.float32)
    if special == "one_nan":
        X[1, 0, 2] = np.nan
    elif special == "all_nan":
        X[:] = np.nan
    else:
        X[1, 0, 2] = np.inf
    W = (rng.standard_normal((1, gates * H, I)) * 0.5).astype(np.float32)
    R = (rng.standard_normal((1, gates * H, H)) * 0.5 / np.sqrt(H)).astype(np.float32)
    Bb = (rng.standard_normal((1, 2 * gates * H)) * 0.3).astype(np.float32) if bias else None
    attrs = dict(hidden_size=H, **({} if clip is None else {"clip": clip}))
    check_op(op, [X, W, R, Bb], attrs, n_outputs=3 if op == "LSTM" else 2, initializers=(1, 2, 3))
