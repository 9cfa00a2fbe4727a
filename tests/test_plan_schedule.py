"""Compiled plan schedules (halfsim/plan_schedule.py) against the general node-by-node path:
the same outputs, numerical events and format tags, bit for bit, over presets, policies with
keep rules and decomposed ops, If/Loop bodies, and dtype changes between runs."""
import os
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP, helper, numpy_helper

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import halfsim  # noqa: E402
from halfsim import plan_schedule  # noqa: E402
from halfsim.errors import ExecutionError  # noqa: E402
from halfsim.policy import Policy, preset  # noqa: E402
from halfsim.precision import make_plan  # noqa: E402

PRESETS = ["fp16", "bf16", "fp16-acc16", "tc-a100-fp16", "coreml-fp16", "fp8-e4m3", "ort-cpu-fp16"]
F = TP.FLOAT


def _init(name, a):
    return numpy_helper.from_array(np.asarray(a), name)


def _model() -> halfsim.Model:
    """Weights beyond fp16's range and below its subnormals, a product that overflows, inf - inf,
    a quotient that underflows,
    a Cast to float16 that overflows, LayerNormalization/Softmax (function bodies), an If whose
    branches read outer tensors and their own weights, and a Loop carrying a state."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 8)).astype(np.float32)
    w[0, 0], w[1, 1], w[2, 2] = 1e5, 1e-9, -7e4
    then_g = helper.make_graph(
        [helper.make_node("Mul", ["kb", "kb"], ["kb2"], name="body_const"),  # weights only: folded, overflows
         helper.make_node("Add", ["y", "k1"], ["t1"]), helper.make_node("Add", ["t1", "kb2"], ["t0"]),
         helper.make_node("Concat", ["t0", "kc"], ["tb"], axis=0),
         helper.make_node("Slice", ["tb", "s0", "s1"], ["ta"])],
        "then", [], [helper.make_tensor_value_info("ta", F, None)],
        [_init("k1", np.full((8,), 3e-8, np.float32)), _init("kc", np.ones((1, 8), np.float32)),
         _init("kb", np.float32(400.0)),
         _init("s0", np.array([0], np.int64)), _init("s1", np.array([2], np.int64))])
    else_g = helper.make_graph([helper.make_node("Mul", ["y", "k2"], ["ea"])], "else", [],
                               [helper.make_tensor_value_info("ea", F, None)], [_init("k2", np.float32(70000.0))])
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]), helper.make_node("Add", ["v_in", "y"], ["s"]),
         helper.make_node("Mul", ["s", "half"], ["v_out"])],
        "body", [helper.make_tensor_value_info("i", TP.INT64, []), helper.make_tensor_value_info("c_in", TP.BOOL, []),
                 helper.make_tensor_value_info("v_in", F, None)],
        [helper.make_tensor_value_info("c_out", TP.BOOL, []), helper.make_tensor_value_info("v_out", F, None)],
        [_init("half", np.float32(0.5))])
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["y"], name="mm"),
        helper.make_node("Mul", ["y", "y"], ["z"], name="square"),
        helper.make_node("Mul", ["big", "big"], ["big_sq"], name="const_square"),  # folded, overflows
        helper.make_node("Add", ["z", "big_sq"], ["z2"], name="add_const"),
        helper.make_node("Sub", ["z2", "z"], ["nan"], name="inf_minus_inf"),
        helper.make_node("Mul", ["y", "big"], ["yb"], name="scale"),
        helper.make_node("Div", ["y", "big2"], ["u0"], name="shrink"),
        helper.make_node("Mul", ["u0", "u0"], ["u"], name="tiny_square"),
        helper.make_node("Cast", ["yb"], ["h"], to=TP.FLOAT16, name="to_half"),
        helper.make_node("Cast", ["h"], ["hf"], to=TP.FLOAT, name="from_half"),
        helper.make_node("LayerNormalization", ["y", "g", "b"], ["ln"], axis=-1, name="ln"),
        helper.make_node("Softmax", ["ln"], ["sm"], axis=-1, name="softmax"),
        helper.make_node("Relu", ["sm"], ["r"], name="relu"),
        helper.make_node("If", ["cond"], ["br"], then_branch=then_g, else_branch=else_g, name="branch"),
        helper.make_node("Loop", ["trip", "", "v0"], ["vT"], body=body, name="loop"),
        helper.make_node("Shape", ["x"], ["shp"], name="shape"),
        helper.make_node("Reshape", ["r", "shp"], ["out"], name="reshape"),
    ]
    g = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", F, ["n", 8]), helper.make_tensor_value_info("cond", TP.BOOL, []),
         helper.make_tensor_value_info("v0", F, ["n", 8])],
        [helper.make_tensor_value_info(t, F, None) for t in ("out", "nan", "hf", "br", "vT", "u")],
        [_init("W", w), _init("big", np.float32(300.0)), _init("big2", np.float32(3e4)), _init("g", np.ones(8, np.float32)),
         _init("b", np.zeros(8, np.float32)), _init("trip", np.array(3, np.int64))])
    return halfsim.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def _feeds(cond=True, n=3, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8)).astype(np.float32)
    x[0, 0] = 2.0  # y[0, 0] ~ 2e5: beyond fp16
    return {"x": x, "cond": np.array(cond), "v0": rng.standard_normal((n, 8)).astype(np.float32)}


def _policies():
    out = [(p, preset(p)) for p in PRESETS]
    out.append(("fp16+keep", preset("fp16").keep_fp32(["square", "softmax", "loop"])))
    out.append(("decomposed", Policy("dec16").add({"storage": "fp16", "accumulate": "fp32", "fused": False})))
    out.append(("io16", Policy("io16", io="fp16", weights="bf16").add({"storage": "fp16"}, op_type=["MatMul", "Add"])))
    return out


def _run(model, feeds, policy, general: bool):
    plan = make_plan(policy, model)
    # keep_trace runs take the general path (every tensor kept); plain runs the compiled one
    r = model.run(feeds, precision=plan, keep_trace=general)
    return r, plan


def _assert_same(a, b, pa, pb):
    assert list(a) == list(b)
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.dtype == y.dtype and x.shape == y.shape, k
        assert x.tobytes() == y.tobytes(), k  # bit for bit, NaN payloads and -0.0 included
    assert [e.to_dict() for e in a.events] == [e.to_dict() for e in b.events]
    assert pa.tags == pb.tags


def _compiled(model, policy) -> bool:
    _, schedules = plan_schedule._stores(make_plan(policy, model))
    return isinstance(schedules.get(id(model.graph)), plan_schedule._Schedule)


@pytest.mark.parametrize("name,policy", _policies(), ids=[n for n, _ in _policies()])
def test_compiled_equals_general(name, policy):
    m = _model()
    for cond in (True, False, True):
        feeds = _feeds(cond)
        ref, pref = _run(m, feeds, policy, general=True)
        for _ in range(2):  # the first plain run may record, the next one replays
            got, pgot = _run(m, feeds, policy, general=False)
            _assert_same(ref, got, pref, pgot)
    assert _compiled(m, policy)


def test_events_are_exercised():
    """The model above raises every kind of event under fp16 (else the equality is weak)."""
    m = _model()
    _run(m, _feeds(), "fp16", False)
    r, _ = _run(m, _feeds(), "fp16", False)
    assert _compiled(m, "fp16")
    kinds = {(e.kind, e.constant) for e in r.events}
    assert {("overflow", False), ("nan", False), ("underflow", False), ("saturated", True)} <= kinds
    assert any(e.op_type == "Cast" for e in r.events)
    # events of folded nodes, replayed: the main graph's and an If body's (then branch)
    assert {"const_square", "body_const"} <= {e.node for e in r.events if e.kind == "overflow"}


def test_shape_change_and_rule_hits():
    """Another batch size reuses the schedule (decisions depend on dtypes, not shapes); the
    policy's rule hits (unused-rule warnings) are counted as on the general path."""
    m = _model()
    pol = preset("fp16").keep_fp32(["square", "no_such_node"])
    for n in (3, 5, 1):
        ref, pref = _run(m, _feeds(n=n), pol.copy(), general=True)
        p2 = pol.copy()
        got, pgot = _run(m, _feeds(n=n), p2, general=False)
        _assert_same(ref, got, pref, pgot)
        assert [r.op_type or r.name for r in p2.unused_rules()] == [r.op_type or r.name for r in pref.policy.unused_rules()]
    assert _compiled(m, pol)


def _switching_model():
    """An If whose branches make different dtypes (float32 or float16): the consumer's
    decisions change with the branch taken."""
    then_g = helper.make_graph([helper.make_node("Identity", ["x"], ["o1"])], "then", [],
                               [helper.make_tensor_value_info("o1", F, None)])
    else_g = helper.make_graph([helper.make_node("Cast", ["x"], ["o2"], to=TP.FLOAT16)], "else", [],
                               [helper.make_tensor_value_info("o2", TP.FLOAT16, None)])
    nodes = [helper.make_node("If", ["cond"], ["a"], then_branch=then_g, else_branch=else_g),
             helper.make_node("Mul", ["a", "a"], ["b"]),
             helper.make_node("Cast", ["b"], ["y"], to=F)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [4]),
                                       helper.make_tensor_value_info("cond", TP.BOOL, [])],
                          [helper.make_tensor_value_info("y", F, [4])])
    return halfsim.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def test_dtype_change_falls_back_to_general_path():
    m = _switching_model()
    x = np.array([1.0, 300.0, 1e-6, -2.5], np.float32)
    seq = [True, True, False, True, False, False, True, False, True, True]
    for cond in seq:
        feeds = {"x": x, "cond": np.array(cond)}
        ref, pref = _run(m, feeds, "fp16", general=True)
        got, pgot = _run(m, feeds, "fp16", general=False)
        _assert_same(ref, got, pref, pgot)
        assert got["y"].dtype == np.float32 and np.isinf(got["y"][1])  # 300^2 > 65504 either way
    # the branch switches made the main graph's schedule miss (and give up after a few)
    _, schedules = plan_schedule._stores(make_plan("fp16", m))
    assert schedules.get(id(m.graph)) is plan_schedule._DEAD


def test_errors_match_general_path():
    """A Reshape whose target comes from the data fails with the same one-line error."""
    nodes = [helper.make_node("Add", ["x", "x"], ["d"]), helper.make_node("Reshape", ["d", "s"], ["y"], name="rs")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [6]),
                                       helper.make_tensor_value_info("s", TP.INT64, [2])],
                          [helper.make_tensor_value_info("y", F, None)])
    m = halfsim.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    x = np.arange(6, dtype=np.float32)
    for _ in range(2):
        m.run({"x": x, "s": np.array([2, 3], np.int64)}, precision="fp16")
    assert _compiled(m, "fp16")
    msgs = []
    for general in (True, False):
        with pytest.raises(ExecutionError) as e:
            m.run({"x": x, "s": np.array([4, 3], np.int64)}, precision="fp16", keep_trace=general)
        msgs.append(str(e.value))
    assert msgs[0] == msgs[1] and "reshape" in msgs[0] and "\n" not in msgs[0]


def test_digits_model():
    from halfsim.demo import data_path
    m = halfsim.load(data_path("digits.onnx"))
    with np.load(data_path("digits_test.npz")) as z:
        feeds = {"image": z["image"][:50]}
    for p in ("fp16", "bf16", "fp16-acc16", "tc-a100-fp16"):
        ref, pref = _run(m, feeds, p, general=True)
        _run(m, feeds, p, general=False)
        got, pgot = _run(m, feeds, p, general=False)
        _assert_same(ref, got, pref, pgot)
        assert _compiled(m, p)


def _validation_model(name):
    from validation import fetch, recipes
    try:
        path = str(fetch.fetch(name))
    except fetch.FetchError as e:
        pytest.skip(f"cannot fetch {name}: {e}")
    e = fetch.entry(name)
    return halfsim.load(path), recipes.build_inputs(e["recipe"], onnx.load(path))


@pytest.mark.parametrize("name", ["silero_vad", "dtln_model_2"])
def test_validation_models(name):
    """Real models: silero's If bodies (LSTM weights concatenated per call), dtln's LSTM/Conv."""
    m, feeds = _validation_model(name)
    for p in ("fp16", "fp16-acc16", "coreml-fp16"):
        ref, pref = _run(m, feeds, p, general=True)
        _run(m, feeds, p, general=False)
        got, pgot = _run(m, feeds, p, general=False)
        _assert_same(ref, got, pref, pgot)
        assert _compiled(m, p)
