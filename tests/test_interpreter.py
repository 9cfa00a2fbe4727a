"""Interpreter behaviour: observers, hooks, the activation cache, bad input."""
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import halfsim
from halfsim.errors import HalfsimError, InputError, ModelError, UnsupportedOpError


def _chain():
    """x -> a=x*2 -> b=a+W -> c=relu(b) -> y=c*c ; also side branch s=x+1 -> z=s*3."""
    W = np.arange(4, dtype=np.float32) - 1.5
    nodes = [helper.make_node("Mul", ["x", "two"], ["a"], name="n_a"),
             helper.make_node("Add", ["a", "W"], ["b"], name="n_b"),
             helper.make_node("Relu", ["b"], ["c"], name="n_c"),
             helper.make_node("Mul", ["c", "c"], ["y"], name="n_y"),
             helper.make_node("Add", ["x", "one"], ["s"], name="n_s"),
             helper.make_node("Mul", ["s", "three"], ["z"], name="n_z")]
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(np.float32(2), "two"),
             numpy_helper.from_array(np.float32(1), "one"), numpy_helper.from_array(np.float32(3), "three")]
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                           helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_observe_all_and_selected():
    m = halfsim.load(_chain())
    x = np.ones((2, 4), np.float32)
    r = m.run({"x": x}, observe="all")
    assert {"a", "b", "c", "s", "y", "z"} <= set(r.observed)
    np.testing.assert_array_equal(r.observed["a"], 2 * x)
    r2 = m.run({"x": x}, observe=["b"])
    assert set(r2.observed) == {"b"}


def test_cone_rerun_recomputes_only_downstream():
    m = halfsim.load(_chain())
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    base = m.run({"x": x}, keep_trace=True)
    ran = []

    def hook(node, outs):
        ran.append(node.label)
        if node.label == "n_b":
            return [outs[0] + 100]
    r = m.run({"x": x}, hook=hook, reuse=base.trace, dirty=["n_b"])
    assert ran == ["n_b", "n_c", "n_y"]
    full = m.run({"x": x}, hook=lambda n, o: [o[0] + 100] if n.label == "n_b" else None)
    np.testing.assert_array_equal(r["y"], full["y"])
    np.testing.assert_array_equal(r["z"], base["z"])


def test_changed_initializer_through_feeds_dirties_its_consumers():
    m = halfsim.load(_chain())
    x = np.ones((1, 4), np.float32)
    base = m.run({"x": x}, keep_trace=True)
    W2 = np.full(4, 5.0, np.float32)
    r = m.run({"x": x, "W": W2}, reuse=base.trace)
    np.testing.assert_array_equal(r["y"], (2 * x + W2) ** 2)


def test_bad_feeds():
    m = halfsim.load(_chain())
    with pytest.raises(InputError, match="missing input 'x'"):
        m.run({})
    with pytest.raises(InputError, match="unknown input 'q'"):
        m.run({"x": np.ones((1, 4), np.float32), "q": np.ones(1)})
    with pytest.raises(InputError, match="dtype float64"):
        m.run({"x": np.ones((1, 4))})
    with pytest.raises(InputError, match="rank 1"):
        m.run({"x": np.ones(4, np.float32)})
    with pytest.raises(InputError, match="dimension 1"):
        m.run({"x": np.ones((1, 5), np.float32)})


def test_nan_and_inf_propagate():
    m = halfsim.load(_chain())
    x = np.array([[np.nan, np.inf, -np.inf, 1.0]], np.float32)
    from opcheck import run_ort
    want = run_ort(_chain(), {"x": x})
    got = m.run({"x": x})
    np.testing.assert_array_equal(got["y"], want[0])
    np.testing.assert_array_equal(got["z"], want[1])


def test_unsupported_op_fails_at_load_naming_domain_and_opset():
    node = helper.make_node("FancyOp", ["x"], ["y"], domain="com.example")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, [1])], [helper.make_tensor_value_info("y", 1, [1])])
    mp = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 3)])
    with pytest.raises(UnsupportedOpError, match="FancyOp in domain com.example at opset 3"):
        halfsim.load(mp)


def test_corrupt_and_truncated_files(tmp_path):
    good = _chain().SerializeToString()
    for name, data in (("trunc.onnx", good[: len(good) // 2]), ("junk.onnx", b"\x00\xffnot a model" * 10)):
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(ModelError):
            halfsim.load(str(p))
    with pytest.raises(ModelError, match="not found"):
        halfsim.load(str(tmp_path / "nope.onnx"))


def test_cli_errors_are_one_line_exit_2(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(_chain(), str(p))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    npz = tmp_path / "x.npz"
    np.savez(npz, x=np.ones((1, 3), np.float32))
    cases = [
        ["run", str(bad), "-o", str(tmp_path / "o.npz")],
        ["run", str(p), "--inputs", str(npz), "-o", str(tmp_path / "o.npz")],
        ["run", str(p), "--shape", "q=1,2", "-o", str(tmp_path / "o.npz")],
        ["compare", str(p), "--against", "nope"],
        ["compare", str(p), "--against", "coreml"] if sys.platform != "darwin" else ["compare", str(p), "--against", "nope2"],
    ]
    for args in cases:
        r = subprocess.run([sys.executable, "-m", "halfsim", *args], capture_output=True, text=True)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("halfsim: error")]
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr


def test_cli_run_and_compare_against_ort(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(_chain(), str(p))
    out = tmp_path / "o.npz"
    r = subprocess.run([sys.executable, "-m", "halfsim", "run", str(p), "--seed", "3", "--shape", "x=2,4", "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with np.load(out) as z:
        assert z["y"].shape == (2, 4)
    j = tmp_path / "r.json"
    r = subprocess.run([sys.executable, "-m", "halfsim", "compare", str(p), "--against", "ort", "--per-layer",
                        "--json", str(j)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    import json
    rep = json.loads(j.read_text())
    assert rep["version"] == 1 and rep["outputs"]["y"]["rel_l2"] <= 1e-6
    assert [layer["node"] for layer in rep["layers"]] == ["n_a", "n_b", "n_c", "n_y", "n_s", "n_z"]


def _control_model():
    """y = If(sum(x) > 0, x * c1 + outer, x - c2) with Constant nodes inside both branches,
    then a Loop adding x to an accumulator 3 times (the body reads x from the outer scope)."""
    f = TensorProto.FLOAT
    then_g = helper.make_graph(
        [helper.make_node("Constant", [], ["c1"], value=numpy_helper.from_array(np.float32(3), "c1")),
         helper.make_node("Mul", ["x", "c1"], ["t0"]),
         helper.make_node("Add", ["t0", "outer"], ["t"])],
        "then", [], [helper.make_tensor_value_info("t", f, None)])
    else_g = helper.make_graph(
        [helper.make_node("Constant", [], ["c2"], value=numpy_helper.from_array(np.float32(0.5), "c2")),
         helper.make_node("Sub", ["x", "c2"], ["e"])],
        "else", [], [helper.make_tensor_value_info("e", f, None)])
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["acc_in", "x"], ["acc_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("acc_in", f, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", f, None)])
    nodes = [helper.make_node("Relu", ["x"], ["outer"]),
             helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["cond"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g),
             helper.make_node("Loop", ["trip", "", "y"], ["z"], body=body)]
    inits = [numpy_helper.from_array(np.float32(0), "zero"), numpy_helper.from_array(np.int64(3), "trip")]
    g = helper.make_graph(nodes, "ctl", [helper.make_tensor_value_info("x", f, [2, 3])],
                          [helper.make_tensor_value_info("y", f, None), helper.make_tensor_value_info("z", f, None)],
                          inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_fast_fp32_path_matches_ort_and_the_general_path_with_subgraphs(sign):
    import onnxruntime as ort
    proto = _control_model()
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    m = halfsim.load(proto)
    rng = np.random.default_rng(5)
    for _ in range(2):  # the second run reuses the folded branch constants
        x = (sign * np.abs(rng.standard_normal((2, 3)))).astype(np.float32)
        want = sess.run(None, {"x": x})
        fast = m.run({"x": x})
        general = m.run({"x": x}, observe="all")  # observers take the node-by-node path
        for i, name in enumerate(["y", "z"]):
            np.testing.assert_allclose(fast[name], want[i], rtol=1e-6, atol=1e-6)
            np.testing.assert_array_equal(fast[name], general[name])


def test_fast_path_errors_name_the_node_like_the_general_path():
    f = TensorProto.FLOAT
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["r"], name="first"),
                           helper.make_node("Concat", ["r", "w"], ["y"], name="bad_cat", axis=0)],
                          "g", [helper.make_tensor_value_info("x", f, None), helper.make_tensor_value_info("w", f, None)],
                          [helper.make_tensor_value_info("y", f, None)])
    m = halfsim.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    feeds = {"x": np.ones((2, 3), np.float32), "w": np.ones((4, 5), np.float32)}  # Concat's other axes differ
    with pytest.raises(HalfsimError) as fast:
        m.run(feeds)
    with pytest.raises(HalfsimError) as general:
        m.run(feeds, observe="all")
    assert "bad_cat" in str(fast.value) and "\n" not in str(fast.value)
    assert str(fast.value) == str(general.value)


def test_keep_trace_in_the_fast_path_keeps_every_tensor():
    m = halfsim.load(_chain())
    x = np.ones((2, 4), np.float32)
    r = m.run({"x": x}, keep_trace=True)
    assert {"x", "a", "b", "c", "s", "y", "z", "W"} <= set(r.trace)
    np.testing.assert_array_equal(r.trace["c"], np.maximum(2 * x + (np.arange(4, dtype=np.float32) - 1.5), 0))


@pytest.mark.parametrize("bias,act,opset", [(True, "Clip", 13), (False, "Relu", 13), (True, "Clip", 9), (False, None, 13)])
def test_fused_conv_batchnorm_activation_matches_ort(bias, act, opset):
    import onnxruntime as ort
    rng = np.random.default_rng(11)
    f = TensorProto.FLOAT
    C, M = 3, 4
    inits = [numpy_helper.from_array(rng.standard_normal((M, C, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.uniform(0.5, 2, M).astype(np.float32), "sc"),
             numpy_helper.from_array(rng.standard_normal(M).astype(np.float32), "bb"),
             numpy_helper.from_array(rng.standard_normal(M).astype(np.float32), "mu"),
             numpy_helper.from_array(rng.uniform(0.1, 3, M).astype(np.float32), "var")]
    conv_in = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(M).astype(np.float32), "b"))
        conv_in.append("b")
    nodes = [helper.make_node("Conv", conv_in, ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "sc", "bb", "mu", "var"], ["n"], epsilon=1e-3)]
    if act == "Clip" and opset >= 11:
        inits += [numpy_helper.from_array(np.float32(0), "lo"), numpy_helper.from_array(np.float32(1.5), "hi")]
        nodes.append(helper.make_node("Clip", ["n", "lo", "hi"], ["y"]))
    elif act == "Clip":
        nodes.append(helper.make_node("Clip", ["n"], ["y"], min=0.0, max=1.5))
    elif act == "Relu":
        nodes.append(helper.make_node("Relu", ["n"], ["y"]))
    else:
        nodes.append(helper.make_node("Identity", ["n"], ["y"]))
    nodes.append(helper.make_node("Conv", ["x", "w"], ["side"]))  # a second reader of x: x stays live
    g = helper.make_graph(nodes, "cbr", [helper.make_tensor_value_info("x", f, [2, C, 7, 6])],
                          [helper.make_tensor_value_info("y", f, None), helper.make_tensor_value_info("side", f, None)], inits)
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    x = rng.standard_normal((2, C, 7, 6)).astype(np.float32)
    want = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    m = halfsim.load(proto)
    got = m.run({"x": x})
    np.testing.assert_allclose(got["y"], want[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["side"], want[1], rtol=1e-5, atol=1e-5)
    fg = m._fast[id(m.graph)]
    assert len(fg.steps) < len(fg.steps_exact)  # the chain did run fused
    tr = m.run({"x": x}, keep_trace=True).trace  # exact steps: the Conv and BN outputs exist
    assert {"c", "n", "y"} <= set(tr)
    np.testing.assert_allclose(tr["y"], want[0], rtol=1e-5, atol=1e-5)


def test_fp32_run_sets_numpy_error_state_once_silently_and_restores_it():
    # x / 0 and Sqrt(-1) as ORT computes them (inf, NaN), no RuntimeWarning on either path
    # (the fp32 run enters "ignore" once for every op), and the caller's state back afterwards.
    import warnings
    from opcheck import run_ort
    nodes = [helper.make_node("Div", ["x", "zero"], ["q"]), helper.make_node("Sqrt", ["q"], ["r"]),
             helper.make_node("Neg", ["x"], ["nx"]), helper.make_node("Sqrt", ["nx"], ["y"]),
             helper.make_node("Add", ["r", "y"], ["out"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.zeros(3, np.float32), "zero")])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = np.array([1.0, -2.0, 0.0], np.float32)
    want = run_ort(proto, {"x": x})[0]
    m = halfsim.load(proto)
    before = np.geterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast = m.run({"x": x})["out"]
        general = m.run({"x": x}, observe=["q"])["out"]
    np.testing.assert_array_equal(fast, want)
    np.testing.assert_array_equal(general, want)
    assert np.geterr() == before
    from halfsim.ops.registry import quiet
    assert type(quiet()) is np.errstate  # outside a run, ops enter numpy's own


def _shape_arith_model():
    """y = Reshape(x, [shape(x)[0] * k, -1]) where k = 2 if the small input `mode` == 1 else 1,
    computed from Shape/Gather/Equal/Where/Mul/Unsqueeze/Concat; `s` = Shape(x) is an output."""
    i64 = lambda name, v: numpy_helper.from_array(np.asarray(v, np.int64), name)  # noqa: E731
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Shape", ["x"], ["s2"]),
             helper.make_node("Gather", ["s2", "zero"], ["n"], axis=0),
             helper.make_node("Equal", ["mode", "one"], ["is1"]),
             helper.make_node("Where", ["is1", "two", "one"], ["k"]),
             helper.make_node("Mul", ["n", "k"], ["nk"]),
             helper.make_node("Unsqueeze", ["nk", "axes0"], ["nk1"]),
             helper.make_node("Concat", ["nk1", "minus1"], ["shp"], axis=0),
             helper.make_node("Reshape", ["x", "shp"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["a", "b"]),
                                       helper.make_tensor_value_info("mode", TensorProto.INT64, [])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                           helper.make_tensor_value_info("s", TensorProto.INT64, None)],
                          [i64("zero", 0), i64("one", 1), i64("two", 2), i64("axes0", [0]), i64("minus1", [-1])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_shape_arithmetic_memo_follows_shapes_and_small_inputs():
    # The Shape/Gather/Equal/.../Concat chain runs as one memo step keyed by x's shape and
    # mode's value: alternating shapes and modes must follow ORT on every run.
    from opcheck import run_ort
    from halfsim.interpreter import _MetaMemo
    proto = _shape_arith_model()
    m = halfsim.load(proto)
    r = np.random.default_rng(5)
    for a, b, mode in [(2, 6, 1), (4, 4, 0), (2, 6, 0), (4, 4, 1), (2, 6, 1), (6, 2, 0)]:
        feeds = {"x": r.standard_normal((a, b)).astype(np.float32), "mode": np.asarray(mode, np.int64)}
        want = run_ort(proto, feeds)
        got = m.run(feeds)
        np.testing.assert_array_equal(got["y"], want[0])
        np.testing.assert_array_equal(got["s"], want[1])
        assert got["s"].flags.writeable  # a graph output is never a shared memo value
    steps = m._fast[id(m.graph)].steps
    memo = [st for st in steps if isinstance(st[1], _MetaMemo)]
    assert len(memo) == 1 and len(steps) < len(proto.graph.node)
    assert len(memo[0][1].cache) == 5  # one entry per (shape, mode) seen


def test_shape_arithmetic_memo_error_names_the_node():
    # Gather index 3 is out of bounds for a rank-2 shape: the same one-line error as the
    # node-by-node path.
    proto = _shape_arith_model()
    for n in proto.graph.node:
        if n.op_type == "Gather":
            n.name = "pick"
    proto.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.asarray(3, np.int64), "zero"))
    m = halfsim.load(proto)
    feeds = {"x": np.ones((2, 3), np.float32), "mode": np.asarray(1, np.int64)}
    with pytest.raises(HalfsimError) as fast:
        m.run(feeds)
    with pytest.raises(HalfsimError) as general:
        m.run(feeds, observe=["y"])
    assert "Gather" in str(fast.value) and "\n" not in str(fast.value)
    assert str(fast.value) == str(general.value)


def _conv1d_model(C, M, k, bias, relu, **attrs):
    rng = np.random.default_rng(k * 100 + C)
    f = TensorProto.FLOAT
    inits = [numpy_helper.from_array(rng.standard_normal((M, C, k)).astype(np.float32), "w")]
    ins = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(M).astype(np.float32), "b"))
        ins.append("b")
    nodes = [helper.make_node("Conv", ins, ["c" if relu else "y"], **attrs)]
    if relu:
        nodes.append(helper.make_node("Relu", ["c"], ["y"]))
    g = helper.make_graph(nodes, "c1", [helper.make_tensor_value_info("x", f, ["n", C, "l"])],
                          [helper.make_tensor_value_info("y", f, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("C,M,k,bias,relu,attrs", [
    (9, 8, 3, True, True, {"pads": [1, 1]}),                       # silero's encoder convs
    (8, 4, 3, True, False, {"pads": [1, 1], "strides": [2]}),
    (1, 10, 16, False, False, {"strides": [8]}),                    # an STFT frame conv
    (6, 5, 3, True, False, {"pads": [2, 0], "dilations": [2]}),
    (7, 3, 1, True, False, {"auto_pad": "VALID"}),                  # DTLN's pointwise convs
    (7, 3, 1, False, False, {"pads": [0, 1], "strides": [2]}),
    (4, 3, 3, True, False, {"auto_pad": "SAME_UPPER"}),             # left to the general path
])
def test_small_conv1d_step_matches_ort_and_the_general_path_bit_for_bit(C, M, k, bias, relu, attrs):
    import onnxruntime as ort
    proto = _conv1d_model(C, M, k, bias, relu, **attrs)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    m = halfsim.load(proto)
    rng = np.random.default_rng(3)
    # Lengths alternate (a plan per input shape, the first call of each through the op); batch 2
    # and a non-contiguous input take the general op.
    for n, L in [(1, 1), (1, 32), (1, 1), (1, 32), (2, 32), (1, 5)]:
        x = rng.standard_normal((n, C, L)).astype(np.float32)
        if L == 5:
            x = np.ascontiguousarray(rng.standard_normal((n, L, C)).astype(np.float32)).transpose(0, 2, 1)
        try:
            want = sess.run(None, {"x": x})[0]
        except Exception:
            with pytest.raises(HalfsimError):  # a kernel longer than the input: the op's error
                m.run({"x": x})
            continue
        for _ in range(2):
            fast = m.run({"x": x})["y"]
            np.testing.assert_allclose(fast, want, rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(fast, m.run({"x": x}, observe="all")["y"])


def test_small_conv1d_step_keeps_the_folded_batchnorm_weights():
    import onnxruntime as ort
    rng = np.random.default_rng(4)
    f = TensorProto.FLOAT
    C, M = 5, 6
    inits = [numpy_helper.from_array(rng.standard_normal((M, C, 3)).astype(np.float32), "w")] + [
        numpy_helper.from_array(v.astype(np.float32), n) for n, v in
        [("sc", rng.uniform(0.5, 2, M)), ("bb", rng.standard_normal(M)), ("mu", rng.standard_normal(M)),
         ("var", rng.uniform(0.1, 3, M))]]
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1]),
                           helper.make_node("BatchNormalization", ["c", "sc", "bb", "mu", "var"], ["y"])],
                          "cb", [helper.make_tensor_value_info("x", f, [1, C, 4])],
                          [helper.make_tensor_value_info("y", f, None)], inits)
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((1, C, 4)).astype(np.float32)
    want = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    m = halfsim.load(proto)
    for _ in range(3):
        np.testing.assert_allclose(m.run({"x": x})["y"], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype,shape", [(np.float32, (3, 4)), (np.float32, ()), (np.float16, (2, 5)), (np.float64, (4,))])
def test_fp32_schedule_direct_elementwise_steps_match_ort_and_the_general_path(dtype, shape):
    # Add/Sub/Mul called as ufuncs, float unary ops and Cast specialized in fp32 schedules.
    import onnxruntime as ort
    et = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"]), helper.make_node("Add", ["sq", "k"], ["p"]),
             helper.make_node("Sqrt", ["p"], ["r"]), helper.make_node("Sub", ["r", "x"], ["d"]),
             helper.make_node("Sigmoid", ["d"], ["s"]), helper.make_node("Tanh", ["x"], ["t"]),
             helper.make_node("Exp", ["t"], ["e"]), helper.make_node("Mul", ["s", "e"], ["m"]),
             helper.make_node("Cast", ["m"], ["y"], to=TensorProto.FLOAT),
             helper.make_node("Cast", ["m"], ["yi"], to=TensorProto.INT32),
             helper.make_node("Add", ["yi", "yi"], ["z"])]
    g = helper.make_graph(nodes, "ew", [helper.make_tensor_value_info("x", et, list(shape))],
                          [helper.make_tensor_value_info(n, t, None) for n, t in
                           (("y", TensorProto.FLOAT), ("z", TensorProto.INT32), ("s", et))],
                          [numpy_helper.from_array(np.asarray(1.5, dtype), "k")])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = np.asarray(np.random.default_rng(2).standard_normal(shape) * 3, dtype)
    want = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    m = halfsim.load(proto)
    fast, general = m.run({"x": x}), m.run({"x": x}, observe="all")
    for i, name in enumerate(["y", "z", "s"]):
        assert fast[name].dtype == want[i].dtype and fast[name].shape == want[i].shape
        np.testing.assert_allclose(fast[name].astype(np.float64), want[i].astype(np.float64), rtol=2e-3, atol=1e-3)
        np.testing.assert_array_equal(fast[name], general[name])


def _view_chain_model():
    """sl..rs: Slice -> Squeeze -> Unsqueeze -> Transpose (of size-1 axes while n == 1) ->
    Reshape; id..fl: Identity -> a real Transpose -> Flatten; s2 is read twice (w and v), so
    the chain from sl2 ends with sq2."""
    i64 = lambda *v: np.array(v, np.int64)  # noqa: E731
    f = TensorProto.FLOAT
    nodes = [helper.make_node("Slice", ["x", "st", "en", "ax"], ["sl"], name="sl"),
             helper.make_node("Squeeze", ["sl", "one"], ["sq"], name="sq"),
             helper.make_node("Unsqueeze", ["sq", "zero"], ["us"], name="us"),
             helper.make_node("Transpose", ["us"], ["tr"], perm=[1, 0, 2], name="tr"),
             helper.make_node("Reshape", ["tr", "shp"], ["y"], name="rs"),
             helper.make_node("Identity", ["x"], ["t"], name="id"),
             helper.make_node("Transpose", ["t"], ["t2"], perm=[2, 1, 0], name="t"),
             helper.make_node("Flatten", ["t2"], ["z"], axis=1, name="fl"),
             helper.make_node("Squeeze", ["x2", "one"], ["s2"], name="sq2"),
             helper.make_node("Add", ["s2", "fone"], ["w"], name="w"),
             helper.make_node("Unsqueeze", ["s2", "zero"], ["v"], name="v"),
             helper.make_node("Slice", ["x", "st", "en", "ax"], ["x2"], name="sl2")]
    nodes = nodes[:8] + [nodes[11]] + nodes[8:11]
    inits = [numpy_helper.from_array(a, n) for n, a in
             [("st", i64(0)), ("en", i64(1)), ("ax", i64(1)), ("one", i64(1)), ("zero", i64(0)),
              ("shp", i64(0, -1)), ("fone", np.ones((), np.float32))]]
    g = helper.make_graph(nodes, "views", [helper.make_tensor_value_info("x", f, ["n", 2, "l"])],
                          [helper.make_tensor_value_info(n, f, None) for n in ("y", "z", "w", "v")], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_view_chains_run_as_one_step_with_the_ops_values_and_errors():
    import onnxruntime as ort
    proto = _view_chain_model()
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    m = halfsim.load(proto)
    rng = np.random.default_rng(8)
    for n, L in [(1, 5), (1, 5), (3, 4), (1, 7), (3, 4)]:  # n = 3: Transpose(1, 0, 2) really moves data
        x = rng.standard_normal((n, 2, L)).astype(np.float32)
        if L == 7:
            x = np.ascontiguousarray(x.transpose(2, 1, 0)).transpose(2, 1, 0)  # a non-contiguous input
        want = dict(zip(["y", "z", "w", "v"], sess.run(None, {"x": x})))
        fast, general = m.run({"x": x}), m.run({"x": x}, observe="all")
        for k in want:
            assert fast[k].shape == want[k].shape
            np.testing.assert_array_equal(fast[k], want[k])
            np.testing.assert_array_equal(fast[k], general[k])
    fg = m._fast[id(m.graph)]
    # sl..rs, id..fl and sl2 -> sq2 (whose output has two readers: the chain ends there), w, v
    assert len(fg.steps_exact) == 12 and len(fg.steps) == 5
    # A tail op that rejects a new shape: its own error, as node by node.
    i64 = lambda *v: np.array(v, np.int64)  # noqa: E731
    g = helper.make_graph([helper.make_node("Slice", ["x", "st", "en", "ax"], ["sl"]),
                           helper.make_node("Squeeze", ["sl", "zero"], ["sq"], name="squeeze_n"),
                           helper.make_node("Unsqueeze", ["sq", "zero"], ["y"])],
                          "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(a, n) for n, a in
                           [("st", i64(0)), ("en", i64(2)), ("ax", i64(1)), ("zero", i64(0))]])
    m2 = halfsim.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    np.testing.assert_array_equal(m2.run({"x": np.ones((1, 4), np.float32)})["y"], np.ones((1, 2), np.float32))
    assert len(m2._fast[id(m2.graph)].steps) == 1
    feeds = {"x": np.ones((2, 4), np.float32)}
    with pytest.raises(HalfsimError) as fast_err:
        m2.run(feeds)
    with pytest.raises(HalfsimError) as general_err:
        m2.run(feeds, observe="all")
    assert str(fast_err.value) == str(general_err.value) and "\n" not in str(fast_err.value)


@pytest.mark.parametrize("a_shape", [(3, 5), (1, 4, 5), (2, 4, 5), (5,), (0, 5), (3, 6)])
def test_matmul_with_constant_b_step_matches_ort_and_the_general_path(a_shape):
    # fp32 schedules send a float32 one-matrix A straight to np.matmul; batches, 1-D A and
    # mismatched shapes go through the op (its values and errors).
    import onnxruntime as ort
    f = TensorProto.FLOAT
    b = np.random.default_rng(6).standard_normal((5, 7)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"], name="mm")], "mm",
                          [helper.make_tensor_value_info("a", f, None)], [helper.make_tensor_value_info("y", f, None)],
                          [numpy_helper.from_array(b, "b")])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m = halfsim.load(proto)
    a = np.random.default_rng(7).standard_normal(a_shape).astype(np.float32)
    if a_shape[-1] != 5:
        with pytest.raises(HalfsimError) as fast:
            m.run({"a": a})
        with pytest.raises(HalfsimError) as general:
            m.run({"a": a}, observe="all")
        assert str(fast.value) == str(general.value) and "MatMul" in str(fast.value)
        return
    want = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"a": a})[0]
    for _ in range(2):
        got = m.run({"a": a})["y"]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got, m.run({"a": a}, observe="all")["y"])


def test_fast_path_outputs_that_are_weights_folded_tensors_or_inputs():
    # Compiled schedules hold weights and folded tensors as constants: outputs naming them,
    # or naming a graph input, still come back (also from an If body).
    f = TensorProto.FLOAT
    W = np.arange(3, dtype=np.float32)
    then_g = helper.make_graph([], "then", [], [helper.make_tensor_value_info("W2", f, None)])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["nx"])], "else", [],
                               [helper.make_tensor_value_info("nx", f, None)])
    nodes = [helper.make_node("Add", ["W", "W"], ["W2"]),  # folded
             helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["b"], then_branch=then_g, else_branch=else_g)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", f, [3])],
                          [helper.make_tensor_value_info(n, f, None) for n in ("W", "W2", "x", "b")],
                          [numpy_helper.from_array(W, "W"), numpy_helper.from_array(np.float32(0), "zero")])
    m = halfsim.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    for sign in (1, -1, 1):
        x = sign * np.ones(3, np.float32)
        for r in (m.run({"x": x}), m.run({"x": x}, observe="all"), m.run({"x": x}, keep_trace=True)):
            np.testing.assert_array_equal(r["W"], W)
            np.testing.assert_array_equal(r["W2"], 2 * W)
            np.testing.assert_array_equal(r["x"], x)
            np.testing.assert_array_equal(r["b"], 2 * W if sign > 0 else -x)
