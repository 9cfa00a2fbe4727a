"""Real fp16 failures are predicted: rapidocr PP-OCRv4 det (a BatchNormalization whose variance
exceeds the fp16 maximum) and magika (a LayerNorm written as primitive ops that loses its variance
in fp16) break under the `fp16` preset, and not under `fp32`; `halfsim validate` tabulates it."""
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import halfsim  # noqa: E402
from halfsim import metrics  # noqa: E402
from validation import fetch, recipes  # noqa: E402

ENTRIES = {e["name"]: e for e in fetch.load_manifest()}


def _load(name):
    try:
        path = str(fetch.fetch(name))
    except fetch.FetchError as e:
        if e.network:
            pytest.skip(f"package index unreachable, cannot fetch {name}: {e}")
        raise
    feeds = recipes.build_inputs(ENTRIES[name]["recipe"], onnx.load(path))
    return path, halfsim.load(path), feeds


@pytest.mark.parametrize("name", ["rapidocr_det", "magika"])
def test_fp16_breaks_where_it_breaks_on_hardware(name):
    from halfsim.backends import ort
    path, model, feeds = _load(name)
    ref = ort.run(onnx.load(path), feeds)
    fp32 = model.run(feeds)
    fp16 = model.run(feeds, precision="fp16")
    for k in model.outputs:
        assert metrics.rel_l2(fp32[k], ref[k]) < 1e-5
    assert max(metrics.rel_l2(fp16[k], ref[k]) for k in model.outputs) > 0.3
    if name == "rapidocr_det":
        # The saturated statistics are reported as events on the BatchNormalization.
        assert any(e.op_type == "BatchNormalization" and e.kind == "saturated" and e.constant for e in fp16.events)
    # bf16 has fp32's range: no such failure.
    bf16 = model.run(feeds, precision="bf16")
    assert max(metrics.rel_l2(bf16[k], ref[k]) for k in model.outputs) < 0.1


def test_validate_command(tmp_path):
    _load("dtln_model_2")
    j = tmp_path / "v.json"
    r = subprocess.run([sys.executable, "-m", "halfsim", "validate", "--models", "dtln_model_2", "--precision", "fp16",
                        "--json", str(j), "--md", str(tmp_path / "v.md")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    rep = json.loads(j.read_text())
    assert rep["version"] == 1 and rep["fp32"][0]["status"] == "pass"
    assert 0 < rep["presets"][0]["fp16"] < 0.01
    bad = subprocess.run([sys.executable, "-m", "halfsim", "validate", "--models", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown validation model 'nope'" in bad.stderr


@pytest.mark.parametrize("name, culprit", [("rapidocr_det", "p2o.BatchNormalization.1"),
                                           ("magika", "jax2tf_get_logits_/pjit_get_logits_/MagikaV2/LayerNorm_1/Sum_1")])
def test_per_layer_report_first_jump_is_the_known_culprit(name, culprit, tmp_path):
    _, _, feeds = _load(name)
    npz = tmp_path / "in.npz"
    np.savez(npz, **feeds)
    j, html = tmp_path / "r.json", tmp_path / "r.html"
    r = subprocess.run([sys.executable, "-m", "halfsim", "compare", str(fetch.fetch(name)), "--inputs", str(npz),
                        "--precision", "fp16", "--against", "ort", "--per-layer", "--json", str(j), "--html", str(html)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    rep = json.loads(j.read_text())
    assert rep["first_jump"]["node"] == culprit
    assert culprit in html.read_text()


def test_unwritable_html_path(tmp_path):
    r = subprocess.run([sys.executable, "-m", "halfsim", "compare", os.path.join(os.path.dirname(halfsim.__file__), "data",
                        "digits.onnx"), "--html", str(tmp_path / "no" / "such" / "dir" / "r.html")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "cannot write" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["silero_vad", "magika", "nudenet", "minilm_int8"])
def test_ort_fp16_backend_converts_models_the_stock_converter_breaks(name):
    """onnxconverter-common's output does not load in ORT for these; the ort-fp16 backend falls
    back to halfsim's converter, and the converted model loads and runs."""
    import warnings

    from onnxconverter_common import float16

    from halfsim.backends import ort
    path, _, feeds = _load(name)
    proto = onnx.load(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stock = float16.convert_float_to_float16(proto, keep_io_types=True)
    with pytest.raises(halfsim.HalfsimError):
        ort.session(stock)
    out = ort.run_variant(proto, feeds, "ort-fp16")
    ref = ort.run(proto, feeds)
    for k, v in ref.items():
        if v.dtype.kind == "f":
            assert out[k].shape == v.shape and np.isfinite(out[k]).all()
            assert metrics.rel_l2(out[k], v) < 0.05
