"""Fault-injection campaigns: bit-exact fault models against numpy/ml_dtypes bit patterns,
Wilson intervals against scipy, the physics of exponent against low-mantissa flips on real
models, seed reproducibility and replay, cone re-runs against full re-runs, and CLI errors."""
from __future__ import annotations

import json
import os
import sys

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import halfsim  # noqa: E402
from halfsim.cli import main  # noqa: E402
from halfsim.demo import data_path  # noqa: E402
from halfsim.faults import inject, split_batch, wilson  # noqa: E402
from halfsim.policy import Policy  # noqa: E402

os.environ.setdefault("HALFSIM_QUIET", "1")


def _tiny(n: int = 64) -> halfsim.Model:
    """X -> Add(X, 0) -> Identity -> Y: the output is the faulty activation itself."""
    z = helper.make_tensor("Z", TensorProto.FLOAT, [n], np.zeros(n, np.float32))
    g = helper.make_graph([helper.make_node("Add", ["X", "Z"], ["A"], name="add"),
                           helper.make_node("Identity", ["A"], ["Y"], name="out")], "tiny",
                          [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, n])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, n])], [z])
    return halfsim.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.fixture(scope="module")
def digits():
    m = halfsim.load(data_path("digits.onnx"))
    with np.load(data_path("digits_test.npz")) as z:
        images = z["image"][:120]
    return m, split_batch({"image": images})


def _x(seed=0, n=64):
    return {"X": np.random.default_rng(seed).uniform(-4, 4, (1, n)).astype(np.float32)}


# ------------------------------------------------------------------ bit-exact fault models

@pytest.mark.parametrize("precision,np_dtype,field,lo,hi", [
    ("fp32", np.float32, "any", 0, 32),
    ("fp16", np.float16, "exponent", 10, 15),
    ("fp16", np.float16, "mantissa", 0, 10),
    ("bf16", ml_dtypes.bfloat16, "any", 0, 16),
    ("e4m3", ml_dtypes.float8_e4m3fn, "any", 0, 8),
])
def test_bitflip_matches_independent_bit_patterns(precision, np_dtype, field, lo, hi):
    m = _tiny()
    prec = Policy("e4m3").add({"storage": "fp8-e4m3"}) if precision == "e4m3" else precision
    res = inject(m, _x(), fault="bitflip", field=field, nodes="add", trials=40, seed=3, precision=prec,
                 metric="max_abs", workers=1)
    udt = {2: np.uint16, 4: np.uint32, 1: np.uint8}[np.dtype(np_dtype).itemsize]
    for r in res.table:
        (b,) = r["bits"]
        assert lo <= b < hi
        before = np.array(r["before"], dtype=np.float64).astype(np.float32).astype(np_dtype)
        with np.errstate(invalid="ignore"):
            want = (before.view(udt) ^ udt(1 << b)).view(np_dtype).astype(np.float64)
        got = np.array([float(v) for v in r["after"]])
        assert np.array_equal(np.isnan(want), np.isnan(got)) and np.array_equal(want[~np.isnan(want)], got[~np.isnan(got)])
        assert r["outcome"] == ("detected" if not np.isfinite(want).all() else "sdc")


def test_fp16_sign_and_exponent_msb_of_one():
    m = _tiny()
    ones = {"X": np.ones((1, 64), np.float32)}
    neg = inject(m, ones, fault="bitflip", bit=15, nodes="add", trials=5, precision="fp16", workers=1,
                 metric="max_abs")
    assert all(r["after"] == [-1.0] and r["outcome"] == "sdc" for r in neg.table)
    # 1.0 = 0x3C00; flipping exponent bit 14 gives 0x7C00 = inf, which reaches the output.
    inf = inject(m, ones, fault="bitflip", bit=14, nodes="add", trials=5, precision="fp16", workers=1)
    assert all(r["after"] == ["inf"] and r["outcome"] == "detected" for r in inf.table)
    assert inf.rates["nonfinite_rate"] == 1.0
    # In fp32 the same bit position is a mantissa bit: 1.0 + 2**-9.
    f32 = inject(m, ones, fault="bitflip", bit=14, nodes="add", trials=3, precision="fp32", workers=1, metric="max_abs")
    assert all(r["after"] == [1.0 + 2.0 ** -9] for r in f32.table)


def test_stuck_at_and_value_faults():
    m = _tiny()
    ones = {"X": np.ones((1, 64), np.float32)}
    # 1.0 in fp32 = 0x3F800000: bit 29 is already 1 (stuck-at-1 masked), stuck-at-0 gives 2**-64.
    r1 = inject(m, ones, fault="stuck-at-1", bit=29, nodes="add", trials=4, workers=1)
    assert all(r["outcome"] == "masked" and r["after"] == [1.0] for r in r1.table)
    r0 = inject(m, ones, fault="stuck-at-0", bit=29, nodes="add", trials=4, workers=1, metric="max_abs")
    assert all(r["after"] == [float(np.array(0x1F800000, np.uint32).view(np.float32))] for r in r0.table)
    assert all(r["outcome"] == "sdc" for r in r0.table)
    x = _x(1)
    mx = inject(m, x, fault="max", nodes="add", trials=10, precision="fp16", workers=1, metric="max_abs")
    for r in mx.table:
        assert r["after"] == [float(np.copysign(65504.0, r["before"][0]))]
    nan = inject(m, x, fault="nan", trials=6, workers=1, count=3)
    assert all(r["elements"] == 3 and r["outcome"] == "detected" for r in nan.table)
    rnd = inject(m, x, fault="random", trials=20, precision="bf16", workers=1, metric="max_abs")
    for r in rnd.table:
        v = np.float32(r["after"][0])
        assert np.isfinite(v) and float(v.astype(ml_dtypes.bfloat16)) == float(v)


def test_precision_faults():
    m = _tiny()
    big = {"X": np.full((1, 64), 70000.0, np.float32)}
    r = inject(m, big, fault="force-fp16", nodes="add", trials=3, workers=1)
    assert all(t["outcome"] == "detected" for t in r.table)  # 70000 overflows fp16 to inf
    exact = {"X": np.full((1, 64), 1.5, np.float32)}
    r = inject(m, exact, fault="force-fp8-e4m3", nodes="add", trials=3, workers=1, metric="max_abs")
    assert all(t["outcome"] == "masked" for t in r.table)  # 1.5 is an e4m3 value
    odd = {"X": np.full((1, 64), 1.1, np.float32)}
    r = inject(m, odd, fault="force-fp8-e4m3", nodes="add", trials=3, workers=1, metric="max_abs")
    want = abs(float(np.float32(1.1).astype(ml_dtypes.float8_e4m3fn)) - float(np.float32(1.1)))  # 1.125 - 1.1
    assert all(t["outcome"] == "sdc" and t["metric"] == pytest.approx(want, rel=1e-6) for t in r.table)
    tiny = {"X": np.full((1, 64), 1e-6, np.float32)}  # an fp16 subnormal: flushed under ftz
    r = inject(m, tiny, fault="ftz", nodes="add", trials=2, precision="fp16", workers=1, metric="max_abs")
    assert all(t["outcome"] == "sdc" for t in r.table)


# ------------------------------------------------------------------ statistics

@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (1, 1000), (517, 1000), (7, 13)])
def test_wilson_against_scipy(k, n):
    from scipy.stats import binomtest
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = wilson(k, n)
    assert lo == pytest.approx(ci.low, abs=1e-12) and hi == pytest.approx(ci.high, abs=1e-12)


# ------------------------------------------------------------------ real models

def test_digits_exponent_flips_far_more_harmful_than_low_mantissa(digits):
    m, inputs = digits
    exp = inject(m, inputs, field="exponent", trials=400, seed=0, workers=1)
    man = inject(m, inputs, fault="bitflip", bit=[0, 1, 2, 3], trials=400, seed=0, workers=1)
    e, w = exp.rates, man.rates
    # Physical sanity of the whole chain: a flip of a low mantissa bit changes a value by at most
    # 2**-20 relative and cannot change a prediction here; exponent flips scale values by 2**k.
    assert w["sdc_rate"] == 0.0 and w["nonfinite_rate"] == 0.0
    harm = e["sdc_rate"] + e["nonfinite_rate"]
    assert harm > 0.03 and e["sdc_ci95"][0] > w["sdc_ci95"][1] - 0.01
    assert [b["field"] for b in man.by_bit] == ["mantissa"] * 4
    assert {b["field"] for b in exp.by_bit} == {"exponent"}
    # The by_node rows partition the trials.
    assert sum(d["trials"] for d in exp.by_node) == 400


def test_validation_model_exponent_vs_mantissa():
    try:
        from validation.fetch import entry, fetch
        from validation.recipes import build_inputs
        p = fetch("magika")
    except Exception as e:  # no cache and no network
        pytest.skip(f"magika not available: {e}")
    m = halfsim.load(str(p))
    feeds = build_inputs(entry("magika")["recipe"], str(p))
    kw = dict(nodes="*LayerNorm_1*", trials=60, seed=1, workers=1)
    exp = inject(m, feeds, field="exponent", **kw)
    man = inject(m, feeds, fault="bitflip", bit=0, **kw)
    assert man.rates["sdc_rate"] + man.rates["nonfinite_rate"] <= 0.05
    assert exp.rates["sdc_rate"] + exp.rates["nonfinite_rate"] >= 0.2


# ------------------------------------------------------------------ determinism and cone re-runs

def test_seed_reproducible_and_replay(digits):
    m, inputs = digits
    kw = dict(field="any", trials=60, workers=1, precision="fp16")
    a = inject(m, inputs, seed=5, **kw)
    b = inject(m, inputs, seed=5, **kw)
    c = inject(m, inputs, seed=6, **kw)
    assert a.table == b.table
    assert a.table != c.table
    for i in (0, 17, 59):
        assert a.replay(i) == a.table[i]
    with pytest.raises(halfsim.HalfsimError):
        a.replay(60)


@pytest.mark.parametrize("target,precision,fault", [("activations", "fp32", "bitflip"),
                                                     ("activations", "fp16", "bitflip"),
                                                     ("weights", "fp32", "bitflip"),
                                                     ("weights", "fp16", "inf"),
                                                     ("activations", "fp32", "force-fp8-e5m2")])
def test_cone_reruns_equal_full_reruns(digits, target, precision, fault):
    m, inputs = digits
    kw = dict(fault=fault, field="any", target=target, precision=precision, trials=40, seed=2, metric="rel_l2")
    fast = inject(m, inputs[:20], workers=1, **kw)
    slow = inject(m, inputs[:20], naive=True, **kw)
    strip = [{k: v for k, v in r.items() if k != "error"} for r in fast.table]
    assert strip == [{k: v for k, v in r.items() if k != "error"} for r in slow.table]


def test_permanent_weight_fault_and_constants(digits):
    m, inputs = digits
    r = inject(m, inputs[:10], fault="nan", target="weights", nodes="/Div", trials=3, permanent=True, workers=1)
    assert {t["tensor"] for t in r.table} == {"/Constant_output_0"}
    assert all(t["input"] is None and t["outcome"] == "detected" for t in r.table)


def test_process_pool_equals_serial(digits):
    m, inputs = digits
    kw = dict(field="exponent", trials=40, seed=11, precision="fp16")
    serial = inject(m, inputs[:30], workers=1, **kw)
    pooled = inject(m, inputs[:30], workers=2, **kw)
    assert pooled.info["execution"] == "processes"
    assert pooled.table == serial.table


# ------------------------------------------------------------------ outputs and errors

def test_json_and_html(digits, tmp_path):
    m, inputs = digits
    r = inject(m, inputs[:20], field="any", trials=50, seed=0, workers=1)
    j = json.loads(json.dumps(r.to_json()))
    for k in ("version", "trials", "sdc_rate", "sdc_ci95", "nonfinite_rate", "masked_rate", "by_node", "by_bit",
              "seed", "fault", "target"):
        assert k in j
    assert j["version"] == 1 and j["trials"] == 50 and len(j["sdc_ci95"]) == 2
    assert abs(j["sdc_rate"] + j["nonfinite_rate"] + j["masked_rate"] - 1) < 1e-12
    assert set(j["by_node"][0]) >= {"node", "op_type", "trials", "sdc_rate", "sdc_ci95", "nonfinite_rate"}
    out = tmp_path / "r.html"
    r.write_html(str(out))
    text = out.read_text()
    assert text.count("<svg") == 2 and "/conv1/Conv" in text


def test_cli_inject(tmp_path, capsys):
    z = np.load(data_path("digits_test.npz"))
    np.savez(tmp_path / "x.npz", image=z["image"][:30])
    js = tmp_path / "o.json"
    rc = main(["inject", data_path("digits.onnx"), "--inputs", str(tmp_path / "x.npz"), "--per-sample",
               "--fault", "bitflip", "--field", "exponent", "--trials", "30", "--seed", "4", "--workers", "1",
               "--json", str(js), "--html", str(tmp_path / "o.html")])
    assert rc == 0
    j = json.loads(js.read_text())
    assert j["trials"] == 30 and j["seed"] == 4 and j["inputs"] == 30
    api = inject(halfsim.load(data_path("digits.onnx")), split_batch({"image": z["image"][:30]}), trials=30, seed=4,
                 workers=1)
    assert j["sdc_rate"] == api.rates["sdc_rate"]


@pytest.mark.parametrize("args,msg", [
    (["--fault", "cosmic-ray"], "unknown fault kind"),
    (["--fault", "bitflip", "--nodes", "nothing*"], "matches no node"),
    (["--fault", "bitflip", "--trials", "0"], "trials must be a positive"),
    (["--fault", "bitflip", "--field", "middle"], "unknown bit field"),
    (["--fault", "bitflip", "--target", "biases"], "unknown target"),
    (["--fault", "bitflip", "--bit", "40"], "out of range"),
    (["--fault", "bitflip", "--scheduler", "tcp://127.0.0.1:9"], "cannot reach dask scheduler"),
])
def test_cli_errors(args, msg, capsys):
    rc = main(["inject", data_path("digits.onnx"), "--shape", "image=2,1,8,8", "--trials", "5"] + args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("halfsim: error:") and msg in err[0]


# ------------------------------------------------------------------ batch-row re-runs (opt-in)

def test_batch_rows_equal_full_reruns(digits):
    m, _ = digits
    with np.load(data_path("digits_test.npz")) as z:
        images = z["image"][:120]
    inputs = [{"image": images[i:i + 30]} for i in range(0, 120, 30)]
    kw = dict(field="any", precision="fp16", trials=60, seed=8, metric="rel_l2")
    rows = inject(m, inputs, workers=1, batch_rows=True, **kw)
    slow = inject(m, inputs, naive=True, **kw)
    assert rows.info["batch_rows"] and any(rows._campaign._row_checked.values())
    assert rows.table == slow.table


def test_batch_rows_fall_back_when_rows_mix():
    """Y = X - mean over the batch: a fault in one row changes every row; the check must
    refuse row re-runs and the outcomes must equal full re-runs."""
    ax = helper.make_tensor("ax", TensorProto.INT64, [1], [0])
    g = helper.make_graph([helper.make_node("Relu", ["X"], ["R"], name="relu"),
                           helper.make_node("ReduceMean", ["R", "ax"], ["Mn"], name="mean", keepdims=1),
                           helper.make_node("Sub", ["R", "Mn"], ["Y"], name="sub")], "mix",
                          [helper.make_tensor_value_info("X", TensorProto.FLOAT, [8, 16])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [8, 16])], [ax])
    m = halfsim.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]))
    x = {"X": np.abs(np.random.default_rng(0).standard_normal((8, 16))).astype(np.float32) + 0.5}
    kw = dict(nodes="relu", field="exponent", trials=20, seed=0, metric="max_abs")
    rows = inject(m, x, workers=1, batch_rows=True, **kw)
    assert rows._campaign._row_checked == {"R": False}
    assert rows.table == inject(m, x, naive=True, **kw).table
    assert rows.rates["sdc_rate"] + rows.rates["nonfinite_rate"] == 1.0
