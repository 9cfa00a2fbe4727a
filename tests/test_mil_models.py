"""CoreML ML programs converted by coremltools on Linux from torch modules (a CNN, a transformer
block, a recurrent model), saved as .mlpackage and run by halfsim:
- at FLOAT32 they match torch's fp32 outputs (rel L2 <= 1e-5);
- at FLOAT16 they place the same ops in fp16 as halfsim's `coreml-fp16` preset on the same
  module exported to ONNX, and agree with that prediction to summation-order noise;
- bad input (a neural-network model, missing or truncated weights, an unsupported MIL op) is a
  one-line error, exit code 2 from the CLI; `compare --against onnx:PATH` works on them;
- on macOS, a comparison with real CoreML predictions (skipped elsewhere)."""
import contextlib
import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("coremltools")
torch = pytest.importorskip("torch")

import halfsim  # noqa: E402
from halfsim import metrics  # noqa: E402
from halfsim.backends import coreml  # noqa: E402
from halfsim.cli import main  # noqa: E402
from test_backend_coreml import write_neural_network  # noqa: E402
from halfsim.backends.coreml_ops import quiet_import  # noqa: E402
from halfsim.errors import ModelError  # noqa: E402
from halfsim.precision import PrecisionPlan  # noqa: E402
from halfsim.policy import preset  # noqa: E402

F = torch.nn.functional
B, T, D, H = 2, 6, 32, 2   # head size 16: the attention scale 1/4 is exact, so torch's division
                           # (ONNX Div) and coremltools' multiplication (MIL mul) agree bit for bit


class CNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.c2 = torch.nn.Conv2d(8, 16, 3, stride=2)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):
        y = F.max_pool2d(torch.relu(self.bn(self.c1(x))), 2)
        y = F.adaptive_avg_pool2d(torch.relu(self.c2(y)), 1).flatten(1)
        return torch.softmax(self.fc(y), -1)


class Block(torch.nn.Module):
    """Pre-norm transformer block. Linear layers see 2-D rows: torch.onnx exports a 3-D Linear as
    MatMul + Add (two fp16 roundings) where coremltools emits one `linear` (see the report)."""

    def __init__(self):
        super().__init__()
        self.qkv, self.o = torch.nn.Linear(D, 3 * D), torch.nn.Linear(D, D)
        self.ln1, self.ln2 = torch.nn.LayerNorm(D), torch.nn.LayerNorm(D)
        self.f1, self.f2 = torch.nn.Linear(D, 4 * D), torch.nn.Linear(4 * D, D)

    def forward(self, x):
        q, k, v = self.qkv(self.ln1(x).reshape(B * T, D)).reshape(B, T, 3 * D).split(D, -1)
        q, k, v = (t.reshape(B, T, H, D // H).transpose(1, 2) for t in (q, k, v))
        a = torch.softmax(q @ k.transpose(-1, -2) / (D // H) ** 0.5, -1) @ v
        x = x + self.o(a.transpose(1, 2).reshape(B * T, D)).reshape(B, T, D)
        return x + self.f2(F.gelu(self.f1(self.ln2(x).reshape(B * T, D)))).reshape(B, T, D)


class RNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(8, 16, batch_first=True, bidirectional=True)
        self.fc = torch.nn.Linear(32, 4)

    def forward(self, x):
        y, _ = self.lstm(x)
        return self.fc(y.reshape(-1, 32))


def _models():
    torch.manual_seed(0)
    cnn = CNN()
    with torch.no_grad():  # non-trivial running statistics
        cnn.bn.running_mean.uniform_(-1, 1)
        cnn.bn.running_var.uniform_(0.5, 2)
    return {"cnn": (cnn, torch.randn(2, 3, 16, 16)), "block": (Block(), torch.randn(B, T, D)),
            "rnn": (RNN(), torch.randn(2, 5, 8))}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """name -> {"x", "ref" (torch fp32), "onnx", "FLOAT32", "FLOAT16" (paths)}; each model converted once."""
    d = tmp_path_factory.mktemp("mil_models")
    out = {}
    for name, (mod, x) in _models().items():
        mod.eval()
        with torch.no_grad():
            ref = mod(x).numpy()
        rec = {"x": x.numpy(), "ref": ref, "onnx": str(d / f"{name}.onnx")}
        torch.onnx.export(mod, (x,), rec["onnx"], input_names=["x"], opset_version=20, dynamo=False)
        for prec in ("FLOAT32", "FLOAT16"):
            rec[prec] = str(d / f"{name}_{prec}.mlpackage")
            coreml.convert(mod, prec, example_inputs=x).save(rec[prec])
        out[name] = rec
    return out


def _run(path, x, precision="fp32"):
    m = halfsim.load(path)
    return m.run({m.inputs[0].name: x}, precision=precision)[m.outputs[0]]


@pytest.mark.parametrize("name", ["cnn", "block", "rnn"])
def test_float32_program_matches_torch(built, name):
    rec = built[name]
    got = _run(rec["FLOAT32"], rec["x"])
    assert got.dtype == np.float32 and got.shape == rec["ref"].shape
    assert metrics.rel_l2(got, rec["ref"]) <= 1e-5


def _mil_fp32_ops(path) -> set[str]:
    """MIL compute ops the FLOAT16 program leaves in fp32 (casts aside)."""
    return {o["type"] for o in coreml.fp16_ops(path) if o["dtype"] == "fp32" and o["type"] != "cast"}


def _preset_fp32_ops(onnx_path, x) -> set[str]:
    """ONNX ops computing floats that the coreml-fp16 preset keeps in fp32 (casts aside)."""
    m = halfsim.load(onnx_path)
    res = m.run({"x": x}, observe="all")
    plan = PrecisionPlan(preset("coreml-fp16"), m)
    return {n.op_type for n in m.nodes if n.op_type != "Cast" and plan.node_precision(n).storage == "fp32"
            and any(isinstance(res.observed.get(t), np.ndarray) and res.observed[t].dtype.kind == "f"
                    for t in n.outputs)}


# The op-type names of the only MIL ops any of these programs keeps in fp32, in ONNX.
MIL_TO_ONNX = {"lstm": "LSTM"}


@pytest.mark.parametrize("name", ["cnn", "block", "rnn"])
def test_float16_program_matches_coreml_fp16_preset(built, name):
    rec = built[name]
    mil32 = _mil_fp32_ops(rec["FLOAT16"])
    assert {MIL_TO_ONNX[t] for t in mil32} == _preset_fp32_ops(rec["onnx"], rec["x"])
    assert (name == "rnn") == bool(mil32)  # the LSTM stays fp32 (no fp16 lstm before iOS17)
    got = _run(rec["FLOAT16"], rec["x"])
    want = _run(rec["onnx"], rec["x"], "coreml-fp16")
    # Same ops, same roundings: only fp32 summation order may differ, so at most a 1-ulp fp16
    # flip on a few elements (one flip on 1% of the elements is rel L2 ~5e-5).
    assert metrics.max_ulp(got.astype(np.float16), want.astype(np.float16), "fp16") <= 1
    assert metrics.rel_l2(got, want) <= 5e-5
    # ...while fp16 really happened: the prediction is away from fp32 by fp16 error.
    assert 1e-5 < metrics.rel_l2(got, rec["ref"]) < 3e-3


def test_builder_lstm_gate_order_against_torch(tmp_path):
    """MIL lstm built by hand (gates input, forget, output, cell; one summed bias; h/c as
    [batch, dirs*H]) against torch.nn.LSTM (gates i, f, g, o) with the same weights."""
    mb = quiet_import("coremltools.converters.mil").Builder
    torch.manual_seed(1)
    lstm = torch.nn.LSTM(3, 4, bidirectional=True).eval()

    def ifoz(w):  # torch (i, f, g, o) -> MIL (i, f, o, z=g)
        i, f, g, o = np.split(w.detach().numpy(), 4)
        return np.concatenate([i, f, o, g])

    p = {k: ifoz(getattr(lstm, k)) for k in ("weight_ih_l0", "weight_hh_l0", "weight_ih_l0_reverse",
                                              "weight_hh_l0_reverse")}
    bias = ifoz(lstm.bias_ih_l0 + lstm.bias_hh_l0)
    bias_back = ifoz(lstm.bias_ih_l0_reverse + lstm.bias_hh_l0_reverse)
    x = np.random.default_rng(2).standard_normal((5, 2, 3)).astype(np.float32)
    h0 = np.random.default_rng(3).standard_normal((2, 2, 4)).astype(np.float32)  # torch [dirs, b, H]
    c0 = np.random.default_rng(4).standard_normal((2, 2, 4)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)])
    def prog(xs):
        y, h, c = mb.lstm(x=xs, initial_h=h0.transpose(1, 0, 2).reshape(2, 8), initial_c=c0.transpose(1, 0, 2).reshape(2, 8),
                          weight_ih=p["weight_ih_l0"], weight_hh=p["weight_hh_l0"], bias=bias,
                          weight_ih_back=p["weight_ih_l0_reverse"], weight_hh_back=p["weight_hh_l0_reverse"],
                          bias_back=bias_back, direction="bidirectional", output_sequence=True, name="lstm")
        return y, h, c

    path = str(tmp_path / "lstm.mlpackage")
    coreml.convert(prog, "FLOAT32").save(path)
    m = halfsim.load(path)
    got = m.run({"xs": x})
    with torch.no_grad():
        y, (h, c) = lstm(torch.from_numpy(x), (torch.from_numpy(h0), torch.from_numpy(c0)))
    want = [y.numpy(), h.permute(1, 0, 2).reshape(2, 8).numpy(), c.permute(1, 0, 2).reshape(2, 8).numpy()]
    for name, w in zip(m.outputs, want):
        assert metrics.rel_l2(got[name], w) <= 1e-5, name


def _mil_lstm_reference(x, h, c, w_ih, w_hh, bias, peep, reverse):
    """MIL lstm from its definition: gates (input, forget, output, cell) stacked in the weights,
    peepholes (i, f, o) reading c_{t-1} for i and f and c_t for o. Hidden states in processing
    order (a reverse LSTM's first one is for the last input), and the last cell state."""
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    hs = []
    for t in (range(len(x))[::-1] if reverse else range(len(x))):
        zi, zf, zo, zz = np.split(x[t] @ w_ih.T + h @ w_hh.T + bias, 4, axis=-1)
        pi, pf, po = np.split(peep, 3)
        i, f = sig(zi + pi * c), sig(zf + pf * c)
        c = f * c + i * np.tanh(zz)
        h = sig(zo + po * c) * np.tanh(c)
        hs.append(h)
    return np.stack(hs), c


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("sequence", [False, True])
def test_builder_lstm_peephole_against_numpy(tmp_path, direction, sequence):
    mb = quiet_import("coremltools.converters.mil").Builder
    rng = np.random.default_rng(6)
    s, n, i_, h_ = 4, 2, 3, 5
    x = rng.standard_normal((s, n, i_)).astype(np.float32)
    h0, c0 = (rng.standard_normal((n, h_)).astype(np.float32) for _ in range(2))
    w_ih, w_hh = (rng.standard_normal((4 * h_, k)).astype(np.float32) * 0.5 for k in (i_, h_))
    bias, peep = rng.standard_normal(4 * h_).astype(np.float32), rng.standard_normal(3 * h_).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)])
    def prog(xs):
        return mb.lstm(x=xs, initial_h=h0, initial_c=c0, weight_ih=w_ih, weight_hh=w_hh, bias=bias, peephole=peep,
                       direction=direction, output_sequence=sequence, name="lstm")

    path = str(tmp_path / "lstm.mlpackage")
    coreml.convert(prog, "FLOAT32").save(path)
    m = halfsim.load(path)
    got = m.run({"xs": x})
    hs, c_want = _mil_lstm_reference(x.astype(np.float64), h0, c0, w_ih, w_hh, bias, peep, direction == "reverse")
    y, h, c = (got[k] for k in m.outputs)
    y_want = hs if sequence else hs[-1:]
    assert y.shape == y_want.shape
    for a, want in ((y, y_want), (h, hs[-1]), (c, c_want)):
        assert metrics.rel_l2(a, want) <= 1e-5


def _mil_gru_rnn_reference(kind, x, h, w_ih, w_hh, bias, reverse):
    """MIL gru (gates reset, output, update stacked; reset scales h before the recurrent product;
    h = (1 - z) o + z h) and rnn (h = tanh(W x + R h + b)): hidden states in processing order."""
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    hs = []
    for t in (range(len(x))[::-1] if reverse else range(len(x))):
        if kind == "rnn":
            h = np.tanh(x[t] @ w_ih.T + h @ w_hh.T + bias)
        else:
            (wr, wo, wz), (rr, ro, rz), (br, bo, bz) = (np.split(a, 3) for a in (w_ih, w_hh, bias))
            r, z = sig(x[t] @ wr.T + h @ rr.T + br), sig(x[t] @ wz.T + h @ rz.T + bz)
            o = np.tanh(x[t] @ wo.T + (r * h) @ ro.T + bo)
            h = (1 - z) * o + z * h
        hs.append(h)
    return np.stack(hs)


@pytest.mark.parametrize("kind", ["gru", "rnn"])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_builder_gru_rnn_against_numpy(tmp_path, kind, direction):
    """coremltools turns torch's GRU/RNN into while loops, so MIL gru/rnn come from the Builder."""
    mb = quiet_import("coremltools.converters.mil").Builder
    rng = np.random.default_rng(8)
    g = 3 if kind == "gru" else 1
    x = rng.standard_normal((4, 2, 3)).astype(np.float32)
    h0 = rng.standard_normal((2, 5)).astype(np.float32)
    w_ih, w_hh = (rng.standard_normal((g * 5, k)).astype(np.float32) * 0.5 for k in (3, 5))
    bias = rng.standard_normal(g * 5).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)])
    def prog(xs):
        return getattr(mb, kind)(x=xs, initial_h=h0, weight_ih=w_ih, weight_hh=w_hh, bias=bias, direction=direction,
                                 output_sequence=True, name=kind)

    path = str(tmp_path / f"{kind}.mlpackage")
    coreml.convert(prog, "FLOAT32").save(path)
    m = halfsim.load(path)
    y, h = (m.run({"xs": x})[k] for k in m.outputs)
    want = _mil_gru_rnn_reference(kind, x.astype(np.float64), h0, w_ih, w_hh, bias, direction == "reverse")
    assert metrics.rel_l2(y, want) <= 1e-5 and metrics.rel_l2(h, want[-1]) <= 1e-5


def test_torch_gru_while_loop(tmp_path):
    """coremltools unrolls torch's GRU into a MIL while_loop (cond and body blocks, scatter into
    the output sequence): an ONNX Loop whose body re-runs the condition block."""
    class GRU(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = torch.nn.GRU(6, 5)

        def forward(self, x):
            return self.gru(x)[0]

    torch.manual_seed(4)
    mod = GRU().eval()
    x = torch.randn(4, 2, 6)
    with torch.no_grad():
        ref = mod(x).numpy()
    for prec, tol in (("FLOAT32", 1e-5), ("FLOAT16", 3e-3)):
        path = str(tmp_path / f"gru_{prec}.mlpackage")
        coreml.convert(mod, prec, example_inputs=x).save(path)
        assert "while_loop" in {o["type"] for o in coreml.fp16_ops(path)}
        got = _run(path, x.numpy())
        assert got.shape == ref.shape and metrics.rel_l2(got, ref) <= tol, prec


def test_builder_cond(tmp_path):
    mb = quiet_import("coremltools.converters.mil").Builder

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3))])
    def prog(x):
        pred = mb.greater(x=mb.reduce_sum(x=x), y=0.0)
        return mb.cond(pred=pred, _true_fn=lambda: mb.relu(x=x), _false_fn=lambda: mb.mul(x=x, y=2.0), name="branch")

    path = str(tmp_path / "cond.mlpackage")
    coreml.convert(prog, "FLOAT32").save(path)
    m = halfsim.load(path)
    for sign in (1.0, -1.0):
        x = sign * (np.arange(6, dtype=np.float32).reshape(2, 3) - 1)
        want = np.maximum(x, 0) if x.sum() > 0 else 2 * x
        np.testing.assert_array_equal(m.run({"x": x})[m.outputs[0]], want)


class Attention(torch.nn.Module):
    def __init__(self, float_mask: bool):
        super().__init__()
        causal = torch.tril(torch.ones(5, 5, dtype=torch.bool))
        self.register_buffer("mask", torch.where(causal, 0.0, -1e4) if float_mask else causal)

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)


@pytest.mark.parametrize("float_mask", [False, True])
def test_scaled_dot_product_attention(tmp_path, float_mask):
    """iOS18's fused scaled_dot_product_attention against torch at FLOAT32, and at FLOAT16 against
    the program coremltools writes for iOS17 (matmul, mul, softmax, matmul): the same roundings."""
    ct = quiet_import("coremltools")
    torch.manual_seed(3)
    qkv = tuple(torch.randn(1, 2, 5, 8) for _ in range(3))
    mod = Attention(float_mask).eval()
    with torch.no_grad():
        ref = mod(*qkv).numpy()
    feeds = None
    out = {}
    for prec, tgt in (("FLOAT32", "iOS18"), ("FLOAT16", "iOS18"), ("FLOAT16", "iOS17")):
        path = str(tmp_path / f"sdpa_{prec}_{tgt}.mlpackage")
        coreml.convert(mod, prec, example_inputs=qkv, minimum_deployment_target=getattr(ct.target, tgt)).save(path)
        types = {o["type"] for o in coreml.fp16_ops(path)}
        assert ("scaled_dot_product_attention" in types) == (tgt == "iOS18")
        m = halfsim.load(path)
        dt = m.inputs[0].dtype  # iOS17+ FLOAT16 programs take fp16 inputs
        feeds = {vi.name: t.numpy().astype(dt) for vi, t in zip(m.inputs, qkv)}
        out[prec, tgt] = m.run(feeds)[m.outputs[0]].astype(np.float32)
    assert metrics.rel_l2(out["FLOAT32", "iOS18"], ref) <= 1e-5
    assert 1e-5 < metrics.rel_l2(out["FLOAT16", "iOS18"], ref) < 3e-3
    assert metrics.max_ulp(out["FLOAT16", "iOS18"], out["FLOAT16", "iOS17"], "fp16") <= 1


def test_compressed_weights_are_decompressed(tmp_path):
    """An int8-quantized weight (constexpr_affine_dequantize, iOS16) against numpy dequantization."""
    ct = quiet_import("coremltools")
    mb = quiet_import("coremltools.converters.mil").Builder
    rng = np.random.default_rng(5)
    q = rng.integers(0, 256, (16, 32)).astype(np.uint8)
    x = rng.standard_normal((2, 32)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS16)
    def prog(xs):
        w = mb.constexpr_affine_dequantize(quantized_data=q, zero_point=np.uint8(128), scale=np.float32(0.01),
                                           axis=0, name="wq")
        return mb.linear(x=xs, weight=w, name="out")

    path = str(tmp_path / "q.mlpackage")
    coreml.convert(prog, "FLOAT32", minimum_deployment_target=ct.target.iOS16).save(path)
    want = x @ ((q.astype(np.float32) - 128) * 0.01).T
    assert metrics.rel_l2(halfsim.load(path).run({"xs": x})["out"], want) <= 1e-6


# -- CLI, compare ---------------------------------------------------------------------------
def _cli(*args, subprocess_: bool = False):
    """The CLI's exit code and stderr; in-process (a subprocess pays coremltools' and torch's
    import again) unless asked."""
    argv = [str(a) for a in args]
    if subprocess_:
        r = subprocess.run([sys.executable, "-m", "halfsim", *argv], capture_output=True, text=True)
        return r.returncode, r.stderr
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


def test_cli_run_and_compare_against_onnx(built, tmp_path):
    rec = built["block"]
    m = halfsim.load(rec["FLOAT16"])
    name = m.inputs[0].name
    np.savez(tmp_path / "in.npz", **{name: rec["x"]})
    code, err = _cli("run", rec["FLOAT16"], "--inputs", tmp_path / "in.npz", "-o", tmp_path / "out.npz")
    assert code == 0, err
    out = np.load(tmp_path / "out.npz")[m.outputs[0]]
    assert metrics.rel_l2(out, rec["ref"]) < 3e-3
    code, err = _cli("run", built["rnn"]["FLOAT16"], "--seed", 1, "-o", tmp_path / "random.npz")  # random inputs
    assert code == 0, err
    # The FLOAT16 program against the source ONNX model run by halfsim at coreml-fp16: the same
    # prediction; against the ONNX model in fp32: fp16 drift, per output and (names match the
    # FLOAT32 program's modulo _cast_fp16) per layer against the FLOAT32 program.
    js = tmp_path / "c.json"
    code, err = _cli("compare", rec["FLOAT16"], "--inputs", tmp_path / "in.npz", "--against",
                     f"onnx:{rec['onnx']}:coreml-fp16", "--json", js)
    assert code == 0, err
    rep = json.load(open(js))
    (o,) = rep["outputs"].values()
    assert o["rel_l2"] <= 5e-5
    code, err = _cli("compare", rec["FLOAT16"], "--inputs", tmp_path / "in.npz", "--against",
                     f"onnx:{rec['FLOAT32']}", "--per-layer", "--json", js)
    assert code == 0, err
    rep = json.load(open(js))
    (o,) = rep["outputs"].values()
    assert 1e-5 < o["rel_l2"] < 3e-3
    layers = {lay["op_type"] for lay in rep["layers"]}
    assert {"LayerNormalization", "Gemm", "MatMul", "Softmax", "Gelu"} <= layers
    assert all(lay["rel_l2"] < 1e-2 for lay in rep["layers"])


def test_compare_against_missing_model_is_one_line(built, tmp_path):
    code, err = _cli("compare", built["cnn"]["FLOAT32"], "--against", f"onnx:{tmp_path / 'nope.onnx'}")
    assert code == 2 and "no such model" in err and len(err.strip().splitlines()) == 1


# -- bad input --------------------------------------------------------------------------------
def _bad_inputs(built, d):
    src = built["cnn"]["FLOAT32"]
    cases = {}
    cases["neural network"] = (d / "nn.mlmodel", "neuralNetwork model, not an ML program")
    write_neural_network(cases["neural network"][0])
    missing = d / "missing.mlpackage"
    shutil.copytree(src, missing)
    (missing / "Data/com.apple.CoreML/weights/weight.bin").unlink()
    cases["missing weights"] = (missing, "weight file weight.bin is missing")
    truncated = d / "truncated.mlpackage"
    shutil.copytree(src, truncated)
    blob = truncated / "Data/com.apple.CoreML/weights/weight.bin"
    blob.write_bytes(blob.read_bytes()[:1000])
    cases["truncated weights"] = (truncated, "corrupt weights")
    garbage = d / "garbage.mlmodel"
    garbage.write_bytes(b"not a protobuf at all")
    cases["unreadable"] = (garbage, "cannot read CoreML model")
    mb = quiet_import("coremltools.converters.mil").Builder

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 5))])
    def prog(x):
        return mb.argsort(x=mb.relu(x=x), axis=-1, name="order")

    unsupported = d / "argsort.mlpackage"
    coreml.convert(prog, "FLOAT32").save(str(unsupported))
    cases["unsupported op"] = (unsupported, "unsupported MIL op argsort (op 'order'")
    return cases


@pytest.fixture(scope="module")
def bad(built, tmp_path_factory):
    return _bad_inputs(built, tmp_path_factory.mktemp("mil_bad"))


@pytest.mark.parametrize("case", ["neural network", "missing weights", "truncated weights", "unreadable",
                                  "unsupported op"])
def test_bad_input_is_one_line_error(bad, case):
    path, needle = bad[case]
    with pytest.raises(ModelError) as e:
        halfsim.load(path)
    assert needle in str(e.value) and "\n" not in str(e.value)
    # One case through a real process: the exit code the shell sees.
    code, err = _cli("run", path, "-o", path.parent / "o.npz", subprocess_=case == "missing weights")
    assert code == 2
    assert err.strip().splitlines() == [f"halfsim: error: {e.value}"]


def test_unsupported_op_names_the_opset(bad):
    with pytest.raises(ModelError, match=r"argsort .*\(iOS15\)"):
        halfsim.load(bad["unsupported op"][0])


# -- real CoreML ------------------------------------------------------------------------------
@pytest.mark.skipif(sys.platform != "darwin", reason="CoreML predictions need macOS")
@pytest.mark.parametrize("name", ["cnn", "block", "rnn"])
def test_matches_real_coreml_predictions(built, name):
    """CoreML itself (CPU only, so fp32 programs compute in fp32) against halfsim on the same program."""
    ct = quiet_import("coremltools")
    rec = built[name]
    for prec, tol in (("FLOAT32", 1e-5), ("FLOAT16", 3e-3)):
        model = ct.models.MLModel(rec[prec], compute_units=ct.ComputeUnit.CPU_ONLY)
        m = halfsim.load(rec[prec])
        feeds = {m.inputs[0].name: rec["x"]}
        want = coreml.run(model, feeds)[m.outputs[0]]
        assert metrics.rel_l2(m.run(feeds)[m.outputs[0]], want) <= tol, prec
