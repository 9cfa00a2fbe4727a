"""The bundled demo model: halfsim agrees with ORT, keeps its accuracy, and `halfsim demo` works."""
import subprocess
import sys

import numpy as np
import onnx

import halfsim
from halfsim import metrics
from halfsim.backends import ort
from halfsim.demo import data_path


def test_digits_fp32_matches_ort_and_is_accurate():
    proto = onnx.load(data_path("digits.onnx"))
    with np.load(data_path("digits_test.npz")) as z:
        x, y = z["image"], z["label"]
    got = halfsim.load(proto).run({"image": x})["probs"]
    want = ort.run(proto, {"image": x})["probs"]
    assert metrics.rel_l2(got, want) < 1e-5
    assert np.mean(got.argmax(1) == y) > 0.95


def test_demo_command(tmp_path):
    html = tmp_path / "r.html"
    r = subprocess.run([sys.executable, "-m", "halfsim", "demo", "--html", str(html)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    for p in ("fp32", "fp16", "bf16", "fp8-e4m3"):
        assert f"\n{p} " in r.stdout
    text = html.read_text()
    assert "<svg" in text and "Drift per layer" in text
