"""CoreML backend: coremltools' own conversion at FLOAT16/FLOAT32, saved .mlpackage read back,
per-op precision of the ML program, and predictions only on macOS."""
import sys

import numpy as np
import pytest

pytest.importorskip("coremltools")

from halfsim.backends import coreml  # noqa: E402
from halfsim.backends.coreml_ops import quiet_import  # noqa: E402
from halfsim.errors import HalfsimError  # noqa: E402

COMPUTE_OPS = {"conv", "relu", "reduce_mean", "linear", "softmax"}


def _program():
    mb = quiet_import("coremltools.converters.mil").Builder
    rng = np.random.default_rng(0)
    w_conv = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w_lin = rng.standard_normal((5, 4)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, 8, 8))])
    def prog(x):
        y = mb.conv(x=x, weight=w_conv, pad_type="same")
        y = mb.relu(x=y)
        y = mb.reduce_mean(x=y, axes=[2, 3])
        y = mb.linear(x=y, weight=w_lin)
        return mb.softmax(x=y, axis=-1)
    return prog


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("coreml")
    prog = _program()
    paths = {}
    for prec in ("FLOAT16", "FLOAT32"):
        m = coreml.convert(prog, compute_precision=prec)
        paths[prec] = d / f"model_{prec}.mlpackage"
        m.save(str(paths[prec]))
    return paths


def test_fp16_program_runs_compute_ops_in_fp16(saved):
    ops = coreml.fp16_ops(coreml.load(saved["FLOAT16"]))
    by_type = {}
    for op in ops:
        by_type.setdefault(op["type"], []).append(op["dtype"])
    assert COMPUTE_OPS <= set(by_type)
    for t in COMPUTE_OPS:
        assert by_type[t] == ["fp16"], (t, by_type[t])
    # coremltools' own FP16ComputePrecision pass: cast the fp32 input to fp16 and the output back.
    casts = [op for op in ops if op["type"] == "cast"]
    assert [c["dtype"] for c in casts] == ["fp16", "fp32"]
    assert all(op["type"] != "const" for op in ops)
    summary = coreml.precision_summary(saved["FLOAT16"])
    assert summary == {"fp16": len(COMPUTE_OPS) + 1, "fp32": 1}


def test_fp32_program_has_no_fp16_ops(saved):
    ops = coreml.fp16_ops(coreml.load(saved["FLOAT32"]))
    assert {op["type"] for op in ops} == COMPUTE_OPS
    assert all(op["dtype"] == "fp32" for op in ops)
    assert not any(op["type"] == "cast" for op in ops)
    # with consts: the FLOAT32 weights stay fp32, the FLOAT16 ones are stored in fp16
    consts32 = [op for op in coreml.fp16_ops(saved["FLOAT32"], include_const=True) if op["type"] == "const"]
    consts16 = [op for op in coreml.fp16_ops(saved["FLOAT16"], include_const=True) if op["type"] == "const"]
    assert "fp16" not in {c["dtype"] for c in consts32}
    assert "fp16" in {c["dtype"] for c in consts16}


def test_convert_does_not_mutate_program_and_reads_spec():
    prog = _program()
    m16 = coreml.convert(prog, "FLOAT16")
    m32 = coreml.convert(prog, "fp32")  # same program again: still converted at fp32
    assert any(op["dtype"] == "fp16" for op in coreml.fp16_ops(m16))
    assert all(op["dtype"] == "fp32" for op in coreml.fp16_ops(m32.get_spec()))


def test_convert_bad_inputs():
    with pytest.raises(HalfsimError, match="compute precision"):
        coreml.convert(_program(), "FLOAT8")
    with pytest.raises(HalfsimError, match="MIL program or a torch module"):
        coreml.convert("model.onnx")
    with pytest.raises(HalfsimError, match="MIL program or a torch module"):
        coreml.convert(42)


def test_load_bad_inputs(tmp_path):
    with pytest.raises(HalfsimError, match="no such CoreML model"):
        coreml.load(tmp_path / "missing.mlpackage")
    bad = tmp_path / "junk.mlmodel"
    bad.write_bytes(b"not a protobuf at all \xff\xfe")
    with pytest.raises(HalfsimError) as e:
        coreml.fp16_ops(coreml.load(bad))
    assert "\n" not in str(e.value)


def write_neural_network(path) -> None:
    """A one-layer (relu) neural-network .mlmodel: the pre-ML-program CoreML format."""
    ct = quiet_import("coremltools")
    nn = quiet_import("coremltools.models.neural_network")
    dt = quiet_import("coremltools.models.datatypes")
    b = nn.NeuralNetworkBuilder([("x", dt.Array(3))], [("y", dt.Array(3))])
    b.add_activation("relu", "RELU", "x", "y")
    ct.models.MLModel(b.spec, skip_model_load=True).save(str(path))


def test_neural_network_mlmodel_is_not_an_ml_program(tmp_path):
    path = tmp_path / "nn.mlmodel"
    write_neural_network(path)
    with pytest.raises(HalfsimError, match="not an ML program") as e:
        coreml.fp16_ops(coreml.load(path))
    assert "\n" not in str(e.value)


@pytest.mark.skipif(sys.platform == "darwin", reason="on macOS CoreML really predicts")
def test_run_needs_macos(saved):
    with pytest.raises(HalfsimError) as e:
        coreml.run(saved["FLOAT16"], {"x": np.zeros((1, 3, 8, 8), np.float32)})
    assert "macOS" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.skipif(sys.platform != "darwin", reason="CoreML predictions need macOS (coremltools cannot compile models elsewhere)")
def test_run_predicts_on_macos(saved):  # pragma: no cover - macOS only
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    out32 = coreml.run(saved["FLOAT32"], {"x": x})
    out16 = coreml.run(coreml.load(saved["FLOAT16"]), {"x": x})
    (k,) = out32
    assert out32[k].shape == (1, 5) and np.allclose(out32[k].sum(), 1, atol=1e-3)
    assert np.allclose(out16[k], out32[k], atol=1e-2)
    import halfsim  # a halfsim Model of the program predicts through its file
    assert np.array_equal(coreml.run(halfsim.load(saved["FLOAT32"]), {"x": x})[k], out32[k])


@pytest.mark.skipif(sys.platform == "darwin", reason="on macOS CoreML really predicts")
def test_compare_ml_program_against_coreml_needs_macos(saved):
    from halfsim.cli import main
    assert main(["compare", str(saved["FLOAT16"]), "--against", "coreml"]) == 2
