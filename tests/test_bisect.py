"""Drift bisection on models whose culprit is known by construction; exported placements are
checked in halfsim's fp16 execution and in ONNX Runtime, against ORT's fp32 outputs."""
import json
import math
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import halfsim
from halfsim.backends import ort
from halfsim.bisect import evaluate_placement
from halfsim.cli import main
from halfsim.errors import CheckFailed, HalfsimError
from halfsim.metrics import rel_l2
from halfsim.policy import preset

from opcheck import graph_model


def _vi(name, shape):
    return h.make_tensor_value_info(name, T.FLOAT, shape)


def bn_model(seed=0):
    """Conv -> BatchNormalization whose channel-1 variance (2e5) exceeds 65504 -> Relu -> Conv."""
    r = np.random.default_rng(seed)
    nodes = [h.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             h.make_node("BatchNormalization", ["c1", "scale", "bias", "mean", "var"], ["bn"], name="bn"),
             h.make_node("Relu", ["bn"], ["r"], name="relu"),
             h.make_node("Conv", ["r", "w2"], ["y"], name="conv2")]
    inits = {"w1": (r.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32),
             "w2": (r.standard_normal((2, 4, 1, 1)) * 0.5).astype(np.float32),
             "scale": np.array([1.0, 300.0, 0.5, 1.0], np.float32), "bias": np.zeros(4, np.float32),
             "mean": np.array([0.1, -5.0, -0.2, 0.0], np.float32), "var": np.array([1.0, 2e5, 4.0, 0.5], np.float32)}
    m = graph_model(nodes, [_vi("x", [1, 3, 8, 8])], [_vi("y", [1, 2, 8, 8])], inits)
    return m, {"x": r.standard_normal((1, 3, 8, 8)).astype(np.float32)}


def layernorm_model(seed=0, D=64):
    """A LayerNorm decomposed into ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div on activations of
    magnitude ~300: the squared deviations (~9e4) overflow fp16."""
    r = np.random.default_rng(seed)
    nodes = [h.make_node("MatMul", ["x", "w0"], ["h"], name="proj"),
             h.make_node("ReduceMean", ["h"], ["mu"], name="ln_mean", axes=[-1]),
             h.make_node("Sub", ["h", "mu"], ["d"], name="ln_sub"),
             h.make_node("Pow", ["d", "two"], ["d2"], name="ln_pow"),
             h.make_node("ReduceMean", ["d2"], ["var"], name="ln_var", axes=[-1]),
             h.make_node("Add", ["var", "eps"], ["ve"], name="ln_add_eps"),
             h.make_node("Sqrt", ["ve"], ["sd"], name="ln_sqrt"),
             h.make_node("Div", ["d", "sd"], ["n"], name="ln_div"),
             h.make_node("Mul", ["n", "gamma"], ["ng"], name="ln_scale"),
             h.make_node("Add", ["ng", "beta"], ["nb"], name="ln_shift"),
             h.make_node("MatMul", ["nb", "w1"], ["y"], name="head")]
    inits = {"w0": (r.standard_normal((D, D)) * (300 / np.sqrt(D))).astype(np.float32),
             "w1": (r.standard_normal((D, 8)) / np.sqrt(D)).astype(np.float32),
             "two": np.array(2.0, np.float32), "eps": np.array(1e-5, np.float32),
             "gamma": np.ones(D, np.float32), "beta": np.zeros(D, np.float32)}
    m = graph_model(nodes, [_vi("x", [4, D])], [_vi("y", [4, 8])], inits, opset=13)
    return m, {"x": r.standard_normal((4, D)).astype(np.float32)}


def attention_model(seed=0, S=6, D=8):
    """softmax(q k^T + (1 - mask) * float32.min) v, the mask constant written as a Constant node."""
    r = np.random.default_rng(seed)
    fmin = np.array(np.finfo(np.float32).min, np.float32)
    nodes = [h.make_node("Constant", [], ["fmin"], name="neg_inf_const", value=nh.from_array(fmin, "fmin")),
             h.make_node("Constant", [], ["one"], name="one_const", value=nh.from_array(np.array(1.0, np.float32), "one")),
             h.make_node("Transpose", ["k"], ["kt"], name="kT", perm=[0, 2, 1]),
             h.make_node("MatMul", ["q", "kt"], ["s"], name="scores"),
             h.make_node("Sub", ["one", "mask"], ["inv"], name="mask_inv"),
             h.make_node("Mul", ["inv", "fmin"], ["madd"], name="mask_scale"),
             h.make_node("Add", ["s", "madd"], ["sm"], name="mask_add"),
             h.make_node("Softmax", ["sm"], ["p"], name="softmax", axis=-1),
             h.make_node("MatMul", ["p", "v"], ["y"], name="context")]
    m = graph_model(nodes, [_vi("q", [2, S, D]), _vi("k", [2, S, D]), _vi("v", [2, S, D]), _vi("mask", [2, 1, S])],
               [_vi("y", [2, S, D])], {})

    def feeds(masked: bool):
        mask = np.ones((2, 1, S), np.float32)
        if masked:
            mask[0, 0, 4:] = 0
            mask[1, 0, 3:] = 0
        return {"q": r.standard_normal((2, S, D)).astype(np.float32),
                "k": r.standard_normal((2, S, D)).astype(np.float32),
                "v": r.standard_normal((2, S, D)).astype(np.float32), "mask": mask}
    return m, feeds


def _ort_drift(m, proto, feeds_list):
    """rel L2 of a model against ORT's fp32 run of the original (independent of halfsim)."""
    worst = 0.0
    for f in feeds_list:
        ref = ort.run(m, f)
        got = proto(f) if callable(proto) else ort.run(proto, f)
        for k in ref:
            worst = max(worst, rel_l2(got[k], ref[k]))
    return worst


def _check_placement(m, feeds_list, keep, tol, constants=(), base=None):
    """Independent checks of a keep-set: it meets tol (halfsim fp16 with Policy.keep_fp32, against
    ORT fp32), and dropping any single node (with the kept Constant nodes that feed only it)
    breaks it (1-minimality)."""
    hm = halfsim.load(m)
    feeds_of = {c: {n.name for n in m.graph.node if any(o in n.input for o in
                                                        next(x for x in m.graph.node if x.name == c).output)}
                for c in constants}

    def drift(names):
        pol = (base or preset("fp16")).keep_fp32(names)
        return _ort_drift(m, lambda f: hm.run(f, precision=pol), feeds_list)
    assert drift(list(keep) + list(constants)) <= tol
    for n in keep:
        rest = [x for x in keep if x != n] + [c for c in constants if feeds_of[c] != {n}]
        assert drift(rest) > tol, f"{n} can be dropped"


def _check_export(m, res, path, feeds_list, tol):
    assert os.path.exists(path)
    exported = onnx.load(path)
    hx = halfsim.load(exported)
    assert _ort_drift(m, lambda f: hx.run(f), feeds_list) <= tol  # true fp16 semantics
    assert _ort_drift(m, exported, feeds_list) <= tol              # loads and runs in ORT
    v = res.verified
    assert v["backend"] == "ort" and v["passed"] and v["halfsim_achieved"] <= tol and v["achieved"] <= tol
    kept = set(res.keep_fp32)
    # Nodes in the keep-set read fp32 weights; the others fp16.
    types = {t.name: t.data_type for t in exported.graph.initializer}
    for n in exported.graph.node:
        for t in n.input:
            if t in types and types[t] in (T.FLOAT, T.FLOAT16) and n.op_type != "Resize":
                assert types[t] == (T.FLOAT if n.name in kept else T.FLOAT16), (n.name, t)


def test_bn_variance_overflow(tmp_path):
    m, feeds = bn_model()
    res = halfsim.bisect(m, feeds, precision="fp16", metric="rel_l2", tol=1e-2, export=str(tmp_path / "bn16.onnx"))
    assert res.baseline > 0.1
    assert res.attribution[0]["node"] == "bn"
    assert res.keep_fp32 == ["bn"] and res.minimal and res.achieved <= 1e-2
    _check_placement(m, [feeds], res.keep_fp32, 1e-2)
    _check_export(m, res, str(tmp_path / "bn16.onnx"), [feeds], 1e-2)
    assert res.evaluations >= 2 * len(res.attribution)


def test_decomposed_layernorm_overflow(tmp_path):
    m, feeds = layernorm_model()
    res = halfsim.bisect(m, feeds, tol=1e-2, export=str(tmp_path / "ln16.onnx"))
    assert math.isclose(res.baseline, 1.0) or res.baseline > 0.5
    # The variance path, and nothing else: Pow overflows, ReduceMean/Add/Sqrt would re-round it.
    assert res.keep_fp32 == ["ln_pow", "ln_var", "ln_add_eps", "ln_sqrt"]
    assert res.attribution[0]["node"] == "ln_pow" or res.attribution[0]["drift_alone"] == res.attribution[0 + 1]["drift_alone"]
    assert "ln_pow" in [r["node"] for r in res.attribution[:4]]
    assert res.minimal
    _check_placement(m, [feeds], res.keep_fp32, 1e-2)
    _check_export(m, res, str(tmp_path / "ln16.onnx"), [feeds], 1e-2)


def test_attention_mask_float32_min(tmp_path):
    m, make = attention_model()
    clean, masked = make(False), make(True)
    # With constants overflowing to inf (a converter that casts instead of clamping, as the
    # presets' default does), float32.min becomes -inf and 0 * -inf gives NaN: the Mul that
    # scales the mask must stay fp32, and its Constant travels with it.
    from halfsim.policy import Policy
    casting = Policy.from_dict({"base": "fp16", "weights_overflow": "inf"})
    res = halfsim.bisect(m, [clean, masked], precision=casting, tol=1e-2, export=str(tmp_path / "att16.onnx"))
    assert math.isinf(res.baseline)
    assert res.keep_fp32 == ["mask_scale"] and res.keep_fp32_derived == ["neg_inf_const"]
    assert res.attribution[0]["node"] == "mask_scale" and math.isinf(res.attribution[0]["drift_recovered"])
    _check_placement(m, [clean, masked], res.keep_fp32, 1e-2, constants=res.keep_fp32_derived, base=casting)
    _check_export(m, res, str(tmp_path / "att16.onnx"), [clean, masked], 1e-2)


def test_attention_mask_saturating_constants_stay_finite():
    # The presets' default clamps the float32.min constant to -65504 (as fp16 converters do):
    # the masked logits stay finite and there is no NaN to bisect.
    m, make = attention_model()
    out = halfsim.load(m).run(make(True), precision="fp16")
    assert all(np.isfinite(v).all() for v in out.values())


def test_inputs_list_and_nothing_to_keep():
    m, feeds = layernorm_model()
    small = {"x": feeds["x"] * np.float32(0.01)}  # activations ~3: no overflow
    res = halfsim.bisect(m, [small], tol=1e-2)
    assert res.keep_fp32 == [] and res.baseline <= 1e-2 and res.achieved == res.baseline
    assert any("already meets" in n for n in res.notes) and res.search_evaluations == 0
    res = halfsim.bisect(m, [small, feeds], tol=1e-2)  # the tolerance must hold on every input
    assert "ln_pow" in res.keep_fp32 and res.achieved <= 1e-2
    _check_placement(m, [small, feeds], res.keep_fp32, 1e-2)


def test_deterministic_and_evaluate_placement():
    m, feeds = layernorm_model(seed=3)
    a = halfsim.bisect(m, feeds, tol=1e-3)
    b = halfsim.bisect(halfsim.load(m), feeds, tol=1e-3)
    assert a.keep_fp32 == b.keep_fp32 and a.attribution == b.attribution and a.evaluations == b.evaluations
    assert evaluate_placement(m, feeds, "fp16", a.keep_fp32) == a.achieved
    assert halfsim.bisect.evaluate_placement(m, feeds, "fp16", []) == a.baseline
    j = a.to_json()
    json.dumps(j)
    for k in ("version", "attribution", "keep_fp32", "metric", "tol", "achieved", "evaluations", "seconds", "minimal"):
        assert k in j
    assert j["version"] == 1 and j["metric"] == "rel_l2"


def test_other_metrics_and_callable():
    m, feeds = bn_model()
    for metric, tol in (("max_abs", 0.05), ("cosine", 1e-4), ("max_ulp", 1e7)):
        res = halfsim.bisect(m, feeds, metric=metric, tol=tol)
        assert res.keep_fp32 == ["bn"], metric
    # Task loss on labelled data: the fraction of pixels whose argmax over channels flips.
    hm = halfsim.load(m)
    inputs = [bn_model(seed=s)[1] for s in range(3)]
    labels = [hm.run(f)["y"].argmax(1) for f in inputs]

    def flips(outs):
        return float(np.mean([np.mean(o["y"].argmax(1) != lab) for o, lab in zip(outs, labels)]))
    res = halfsim.bisect(hm, inputs, metric=flips, tol=0.0, reference=None)
    assert res.keep_fp32 == ["bn"] and res.achieved == 0.0 and res.metric == "flips"
    assert res.baseline > 0


def test_budget_runs_out():
    m, feeds = layernorm_model()
    res = halfsim.bisect(m, feeds, tol=1e-2, max_evaluations=2)
    assert res.budget_exhausted and not res.minimal
    assert any("budget" in n for n in res.notes)
    assert res.achieved <= 1e-2  # still a set that meets the tolerance
    assert res.search_evaluations <= 2


def test_bad_input():
    m, feeds = bn_model()
    with pytest.raises(CheckFailed, match="unreachable"):
        halfsim.bisect(m, feeds, tol=1e-12, reference="ort")
    with pytest.raises(HalfsimError, match="unknown metric 'l3'"):
        halfsim.bisect(m, feeds, metric="l3")

    def broken(outs):
        raise KeyError("logits")
    with pytest.raises(HalfsimError, match="metric function 'broken' raised KeyError: 'logits'"):
        halfsim.bisect(m, feeds, metric=broken, reference=None)
    with pytest.raises(HalfsimError, match="tol"):
        halfsim.bisect(m, feeds, tol=-1)
    with pytest.raises(HalfsimError, match="inputs"):
        halfsim.bisect(m, [], tol=1e-2)


def test_cli(tmp_path, capsys):
    m, feeds = bn_model()
    mp, xp = str(tmp_path / "m.onnx"), str(tmp_path / "x.npz")
    onnx.save(m, mp)
    np.savez(xp, **feeds)
    js, hp, ex = str(tmp_path / "b.json"), str(tmp_path / "b.html"), str(tmp_path / "e.onnx")
    assert main(["bisect", mp, "--inputs", xp, "--metric", "rel_l2", "--tol", "1e-2", "--json", js, "--html", hp,
                 "--export", ex]) == 0
    d = json.load(open(js))
    assert d["version"] == 1 and d["keep_fp32"] == ["bn"] and d["minimal"] is True
    assert d["attribution"][0]["node"] == "bn" and set(d["attribution"][0]) >= {"node", "op_type", "drift_alone",
                                                                               "drift_recovered"}
    assert d["verified"]["backend"] == "ort" and d["verified"]["achieved"] <= 1e-2
    assert d["verified"]["halfsim_achieved"] <= 1e-2
    assert "<svg" in open(hp).read()
    capsys.readouterr()
    assert main(["bisect", mp, "--inputs", xp, "--metric", "nope", "--tol", "1e-2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown metric" in err
    assert main(["bisect", mp, "--inputs", xp, "--metric", "rel_l2", "--tol", "1e-12", "--reference", "ort"]) == 1
    assert "unreachable" in capsys.readouterr().err
    assert main(["bisect", mp, "--seed", "1", "--metric", "rel_l2", "--tol", "1e-2", "--precision", "bf16",
                 "--export", ex]) == 2
    assert main(["bisect", str(tmp_path / "missing.onnx"), "--metric", "rel_l2", "--tol", "1e-2"]) == 2


def _validation(name):
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from validation.fetch import entry, fetch
    from validation.recipes import build_inputs
    try:
        path = fetch(name)
    except Exception as e:  # no network and no cache
        pytest.skip(f"{name} not available: {e}")
    return str(path), build_inputs(entry(name)["recipe"], str(path))


@pytest.mark.slow
def test_rapidocr_det_bn_variance(tmp_path):
    path, feeds = _validation("rapidocr_det")
    try:
        m = halfsim.load(path)
        m.run(feeds)
    except HalfsimError as e:
        pytest.skip(f"halfsim cannot run rapidocr_det yet: {e}")
    x = feeds["x"][:, :, :64, :128].copy()  # a smaller crop keeps the cone re-runs quick
    res = halfsim.bisect(m, {"x": x}, tol=1e-2, export=str(tmp_path / "det16.onnx"))
    assert res.baseline > 0.1 and res.achieved <= 1e-2
    bns = {n.label for n in m.nodes if n.op_type == "BatchNormalization"}
    assert bns & set(res.keep_fp32), res.keep_fp32
    assert res.verified["passed"] and res.verified["achieved"] <= 1e-2


@pytest.mark.slow
def test_magika(tmp_path):
    path, feeds = _validation("magika")
    try:
        m = halfsim.load(path)
        m.run(feeds)
    except HalfsimError as e:
        pytest.skip(f"halfsim cannot run magika yet: {e}")
    res = halfsim.bisect(m, feeds, tol=1e-2, export=str(tmp_path / "magika16.onnx"))
    assert res.baseline > 1e-2 and res.achieved <= 1e-2
    assert res.verified["passed"] and res.verified["ort_loads"]
