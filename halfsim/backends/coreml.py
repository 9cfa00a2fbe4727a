"""CoreML backend: coremltools' own conversion (MIL program or torch module to an ML program at
FLOAT16 or FLOAT32 compute precision), reading saved .mlpackage/.mlmodel files, listing which ops
of an ML program run in fp16, and real predictions on macOS.

coremltools converts and saves on any platform; compiling and predicting needs macOS, so `run`
raises a one-line HalfsimError elsewhere (use halfsim's `coreml-fp16` preset to predict instead).
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
import sys
from typing import Any, Mapping

import numpy as np

from ..errors import HalfsimError, ModelError
from .coreml_ops import quiet_import

PRECISIONS = ("FLOAT16", "FLOAT32")
MACOS_ONLY = "CoreML predictions need macOS; on Linux use --against halfsim:coreml-fp16 to predict them"

# MIL DataType enum values (coremltools.proto.MIL_pb2.DataType) to halfsim/numpy names.
_DTYPES = {10: "fp16", 11: "fp32", 12: "fp64", 13: "bf16", 40: "fp8-e4m3", 41: "fp8-e5m2", 1: "bool",
           2: "string", 21: "int8", 22: "int16", 23: "int32", 24: "int64", 31: "uint8", 32: "uint16",
           33: "uint32", 34: "uint64"}


def _ct():
    try:
        return quiet_import("coremltools")
    except ImportError as e:
        raise HalfsimError(f"the CoreML backend needs coremltools (pip install coremltools): {e}") from None


@contextlib.contextmanager
def _quiet():
    """Hide coremltools' pass progress bars (tqdm on stderr) and its info logging."""
    import logging
    log = logging.getLogger("coremltools")
    old = log.level
    log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        log.setLevel(old)


def _precision(ct, compute_precision: Any):
    if isinstance(compute_precision, ct.precision):
        return compute_precision
    name = str(compute_precision).upper().replace("FP", "FLOAT")
    if name not in PRECISIONS:
        raise HalfsimError(f"unknown compute precision {compute_precision!r} (choose from {', '.join(PRECISIONS)})")
    return getattr(ct.precision, name)


def _is_torch(source: Any) -> bool:
    return any(c.__module__.split(".")[0] == "torch" for c in type(source).__mro__)


def convert(source: Any, compute_precision: Any = "FLOAT16", inputs: list | None = None,
            example_inputs: Any = None, minimum_deployment_target: Any = None):
    """An ML-program MLModel converted by coremltools at `compute_precision` ("FLOAT16" or "FLOAT32").

    `source` is a MIL Program (coremltools.converters.mil Builder; it is copied, coremltools'
    passes would otherwise rewrite it in place) or a torch module (traced with `example_inputs`
    unless already a ScriptModule or ExportedProgram; `inputs` are ct.TensorType specs, derived
    from the example inputs when omitted)."""
    ct = _ct()
    prec = _precision(ct, compute_precision)
    Program = quiet_import("coremltools.converters.mil.mil").Program
    kwargs: dict[str, Any] = dict(convert_to="mlprogram", compute_precision=prec)
    if minimum_deployment_target is not None:
        kwargs["minimum_deployment_target"] = minimum_deployment_target
    if isinstance(source, Program):
        source = copy.deepcopy(source)
    elif _is_torch(source):
        try:
            import torch
        except ImportError:  # pragma: no cover - a torch object without torch cannot happen
            raise HalfsimError("converting a torch module needs torch (pip install torch)") from None
        if not isinstance(source, (torch.jit.ScriptModule, getattr(getattr(torch, "export", None), "ExportedProgram", ()))):
            if example_inputs is None:
                raise HalfsimError("converting a torch module needs example_inputs to trace it")
            ex = tuple(example_inputs) if isinstance(example_inputs, (list, tuple)) else (example_inputs,)
            source = torch.jit.trace(source.eval(), ex)
            if inputs is None:
                inputs = [ct.TensorType(name=f"input_{i}", shape=tuple(t.shape)) for i, t in enumerate(ex)]
        if inputs is not None:
            kwargs["inputs"] = inputs
    elif isinstance(source, (str, os.PathLike)):
        raise HalfsimError(f"convert takes a MIL program or a torch module, not a path ({os.fspath(source)}); "
                           "coremltools no longer converts ONNX")
    else:
        raise HalfsimError(f"convert takes a MIL program or a torch module, not {type(source).__name__}")
    # On Linux the converted model cannot be compiled: skip loading it instead of warning.
    kwargs["skip_model_load"] = sys.platform != "darwin"
    try:
        with _quiet():
            return ct.convert(source, **kwargs)
    except HalfsimError:
        raise
    except Exception as e:
        msg = " ".join(str(e).split())[:300]
        raise ModelError(f"coremltools could not convert the model: {type(e).__name__}: {msg}") from None


def load(path: str | os.PathLike, compile: bool | None = None):
    """A saved .mlpackage or .mlmodel as an MLModel (compiled for predictions only on macOS)."""
    ct = _ct()
    p = os.fspath(path)
    if not os.path.exists(p):
        raise ModelError(f"no such CoreML model: {p}")
    if compile is None:
        compile = sys.platform == "darwin"
    try:
        with _quiet():
            return ct.models.MLModel(p, skip_model_load=not compile)
    except Exception as e:
        msg = " ".join(str(e).split())[:300]
        raise ModelError(f"cannot read CoreML model {p}: {type(e).__name__}: {msg}") from None


def _spec(model_or_spec: Any):
    if isinstance(model_or_spec, (str, os.PathLike)):
        model_or_spec = load(model_or_spec, compile=False)
    if hasattr(model_or_spec, "get_spec"):
        return model_or_spec.get_spec()
    if hasattr(model_or_spec, "WhichOneof"):
        return model_or_spec
    raise HalfsimError(f"expected a CoreML MLModel, spec or path, not {type(model_or_spec).__name__}")


def _tensor_dtype(value_type) -> str | None:
    kind = value_type.WhichOneof("type")
    if kind == "tensorType":
        return _DTYPES.get(value_type.tensorType.dataType, f"dtype{value_type.tensorType.dataType}")
    if kind == "listType":
        return _tensor_dtype(value_type.listType.type)
    return None


def _walk(block, out: list, include_const: bool, path: str) -> None:
    for op in block.operations:
        dtypes = [d for d in (_tensor_dtype(o.type) for o in op.outputs) if d is not None]
        float_dt = [d for d in dtypes if d in ("fp16", "fp32", "fp64", "bf16")]
        dtype = "fp16" if "fp16" in float_dt else (float_dt[0] if float_dt else (dtypes[0] if dtypes else "none"))
        if include_const or op.type != "const":
            out.append({"name": op.outputs[0].name if op.outputs else "", "type": op.type, "dtype": dtype,
                        "outputs": [o.name for o in op.outputs], "block": path})
        for i, sub in enumerate(op.blocks):
            _walk(sub, out, include_const, f"{path}/{op.type}[{i}]")


def fp16_ops(model_or_spec: Any, include_const: bool = False, function: str = "main") -> list[dict]:
    """The ops of an ML program in order, each {"name", "type", "dtype", "outputs", "block"} where
    dtype is the precision the op runs in: "fp16" when any output is fp16, else its float output
    type ("fp32"), else its first output's type (int32, bool...). Consts are left out unless asked."""
    spec = _spec(model_or_spec)
    kind = spec.WhichOneof("Type")
    if kind != "mlProgram":
        raise ModelError(f"not an ML program (the model is a {kind}): only ML programs have per-op precision")
    funcs = spec.mlProgram.functions
    if function not in funcs:
        raise ModelError(f"ML program has no function {function!r} (has {', '.join(funcs)})")
    f = funcs[function]
    key = f.opset if f.opset in f.block_specializations else next(iter(f.block_specializations))
    out: list[dict] = []
    _walk(f.block_specializations[key], out, include_const, function)
    return out


def precision_summary(model_or_spec: Any) -> dict[str, int]:
    """How many (non-const) ops run in each dtype, e.g. {"fp16": 5, "fp32": 1}."""
    counts: dict[str, int] = {}
    for op in fp16_ops(model_or_spec):
        counts[op["dtype"]] = counts.get(op["dtype"], 0) + 1
    return counts


def run(model: Any, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Real CoreML predictions (macOS only): `model` is an MLModel, a .mlpackage/.mlmodel path or
    a halfsim Model loaded from one (so `compare m.mlpackage --against coreml` works)."""
    if sys.platform != "darwin":
        raise HalfsimError(MACOS_ONLY)
    ct = _ct()
    src = getattr(model, "source", None)  # a halfsim Model of an ML program: predict its file
    if isinstance(src, (str, os.PathLike)) and os.fspath(src).rstrip("/\\").lower().endswith((".mlpackage", ".mlmodel")):
        model = src
    if isinstance(model, (str, os.PathLike)):
        model = load(model, compile=True)
    if not isinstance(model, ct.models.MLModel):
        raise HalfsimError(f"CoreML runs a converted MLModel or a .mlpackage/.mlmodel path, not "
                           f"{type(model).__name__} (coremltools no longer converts ONNX: convert the source "
                           "model with halfsim.backends.coreml.convert)")
    try:
        res = model.predict({k: np.asarray(v) for k, v in feeds.items()})
    except Exception as e:
        msg = " ".join(str(e).split())[:300]
        raise HalfsimError(f"CoreML prediction failed: {type(e).__name__}: {msg}") from None
    return {k: np.asarray(v) for k, v in res.items()}
