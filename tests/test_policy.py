"""Policies: rule matching, presets, TOML/JSON round trips, bad input."""
import json
import subprocess
import sys

import numpy as np
import pytest
from onnx import helper, numpy_helper

import halfsim
from halfsim.errors import HalfsimError
from halfsim.policy import OpPrecision, Policy, preset, preset_names

CONTRACT_PRESETS = ["fp32", "fp16", "fp16-acc16", "bf16", "bf16-acc32", "tf32", "fp8-e4m3", "fp8-e5m2",
                    "ort-cpu-fp16", "coreml-fp16", "autocast-fp16"]


def _model():
    W = np.eye(4, dtype=np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="enc.0.mm"),
             helper.make_node("Relu", ["h"], ["r"], name="enc.0.act"),
             helper.make_node("MatMul", ["r", "W"], ["h2"], name="enc.1.mm"),
             helper.make_node("Relu", ["h2"], ["y"], name="head")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [2, 4])],
                          [helper.make_tensor_value_info("y", 1, [2, 4])], [numpy_helper.from_array(W, "W")])
    return halfsim.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.mark.parametrize("name", CONTRACT_PRESETS)
def test_contract_presets_exist_and_round_trip(name, tmp_path):
    p = preset(name)
    for ext in ("toml", "json"):
        f = tmp_path / f"p.{ext}"
        p.save(str(f))
        q = Policy.load(str(f))
        assert q.to_dict() == p.to_dict()


def test_rules_match_by_type_glob_regex_output_and_index():
    m = _model()
    p = Policy("t")
    p.add({"storage": "fp16"})
    p.add({"accumulate": "fp16"}, op_type="MatMul")
    p.add({"storage": "bf16"}, name="enc.1.*")
    p.add({"storage": "fp32"}, regex=r"^head$")
    p.add({"fused": False}, output="h*")
    p.add({"order": "pairwise"}, index=[0, 2])
    got = {n.label: p.resolve(n) for n in m.nodes}
    assert got["enc.0.mm"] == OpPrecision(storage="fp16", accumulate="fp16", fused=False, order="pairwise")
    assert got["enc.0.act"] == OpPrecision(storage="fp16", order="pairwise")
    assert got["enc.1.mm"] == OpPrecision(storage="bf16", accumulate="fp16", fused=False)
    assert got["head"] == OpPrecision(storage="fp32")


def test_later_rules_override_and_keep_fp32():
    m = _model()
    p = preset("fp16").keep_fp32(["enc.1.mm"])
    precs = {n.label: p.resolve(n) for n in m.nodes}
    assert precs["enc.1.mm"] == OpPrecision()
    assert precs["enc.0.mm"].storage == "fp16"


def test_unused_rule_is_reported():
    m = _model()
    p = Policy("t").add({"storage": "fp16"}, op_type="Conv")
    for n in m.nodes:
        p.resolve(n)
    assert [r.op_type for r in p.unused_rules()] == [("Conv",)]


@pytest.mark.parametrize("bad, msg", [
    ({"rule": [{"storage": "fp17"}]}, "fp17"),
    ({"rule": [{"storag": "fp16"}]}, "storag"),
    ({"rule": [{"order": "random"}]}, "random"),
    ({"rule": [{"regex": "("}]}, "regex"),
    ({"rule": [{"index": [1]}]}, "index"),
    ({"bogus": 1}, "bogus"),
    ({"base": "fp99"}, "fp99"),
])
def test_invalid_policies(bad, msg):
    with pytest.raises(HalfsimError, match=msg):
        Policy.from_dict(bad)


def test_unknown_preset():
    with pytest.raises(HalfsimError, match="unknown precision 'fp17'"):
        preset("fp17")
    assert "tc-a100-fp16" in preset_names()


def test_policy_file_errors(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text("name = [unclosed\n")
    with pytest.raises(HalfsimError, match="invalid policy file"):
        Policy.load(str(f))
    with pytest.raises(HalfsimError, match="not found"):
        Policy.load(str(tmp_path / "missing.toml"))


def test_base_plus_overrides_from_toml(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text('base = "fp16"\nname = "mine"\n\n[[rule]]\nop_type = "Relu"\nstorage = "fp32"\n')
    p = Policy.load(str(f))
    m = _model()
    assert p.name == "mine"
    assert p.resolve(m.node("enc.0.act")).storage == "fp32"
    assert p.resolve(m.node("enc.0.mm")).storage == "fp16"


def test_cli_bad_policy_and_unknown_precision(tmp_path):
    mp = tmp_path / "m.onnx"
    import onnx
    onnx.save(_model().proto, str(mp))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rule": [{"storage": "fp99"}]}))
    for args, msg in ((["--policy", str(bad)], "fp99"), (["--precision", "fp17"], "fp17")):
        r = subprocess.run([sys.executable, "-m", "halfsim", "run", str(mp), "-o", str(tmp_path / "o.npz")] + args,
                           capture_output=True, text=True)
        assert r.returncode == 2, r.stderr
        assert msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
