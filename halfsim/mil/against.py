"""The `onnx:PATH[:SPEC]` compare backend: another model (an ONNX file, or an ML program) run by
halfsim at SPEC (default fp32) on the same inputs, for comparing a CoreML program's predictions
with the ONNX model it came from.

The two models rarely share names, so inputs and outputs are matched by name, else by position;
intermediate tensors (for --per-layer) by name, where a name differing only by coremltools'
precision suffixes (`_cast_fp16`, `_to_fp16`...) still matches."""
from __future__ import annotations

import os
import re
from typing import Mapping

import numpy as np

from ..errors import HalfsimError, InputError

PREFIX = "onnx:"
_SUFFIX = re.compile(r"(_cast_fp(16|32)|_to_fp(16|32))+$")


def parse(backend: str) -> tuple[str, str]:
    """(path, precision spec) of `onnx:PATH[:SPEC]`; SPEC is taken only when it names a preset."""
    from ..policy import preset_names
    rest = backend[len(PREFIX):]
    head, sep, tail = rest.rpartition(":")
    if sep and head and tail in preset_names():
        return head, tail
    return rest, "fp32"


def check(backend: str) -> None:
    path, _ = parse(backend)
    if not path:
        raise HalfsimError("--against onnx:PATH needs a model path (onnx:OTHER.onnx or onnx:OTHER.onnx:PRESET)")
    if not os.path.exists(path):
        raise HalfsimError(f"--against {backend}: no such model {path}")


def _feeds(model, other, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The candidate's feeds for the other model: by input name, else by position; cast to the
    other model's declared dtype (CoreML has no int64, ONNX exports often do)."""
    names = [vi.name for vi in model.inputs]
    out = {}
    for i, vi in enumerate(other.inputs):
        if vi.name in feeds:
            x = feeds[vi.name]
        elif i < len(names) and names[i] in feeds and len(other.inputs) == len(names):
            x = feeds[names[i]]
        else:
            raise InputError(f"cannot match input {vi.name!r} of {other.source} to the inputs {names}")
        x = np.asarray(x)
        out[vi.name] = x.astype(vi.dtype) if vi.dtype is not None and x.dtype != vi.dtype else x
    return out


def _key(name: str) -> str:
    return _SUFFIX.sub("", name)


def _match_layers(model, other, observed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The other model's intermediates under the candidate's tensor names: same name, else the
    same name modulo precision suffixes, else the same producing node (a FLOAT16 program renames
    `var_21` of op `linear_0` to `linear_0_cast_fp16`); only where the match is unique."""
    cand: dict[str, list[str]] = {}
    for n in model.nodes:
        for t in n.outputs:
            if t:
                cand.setdefault(_key(t), []).append(t)
        if len(n.outputs) == 1 and n.outputs[0]:
            cand.setdefault("node:" + _key(n.label), []).append(n.outputs[0])
    producer = {t: n.label for n in other.nodes if len(n.outputs) == 1 for t in n.outputs}
    out: dict[str, np.ndarray] = {}
    for t, v in observed.items():
        hits = cand.get(_key(t)) or (cand.get("node:" + _key(producer[t])) if t in producer else None)
        if hits and len(hits) == 1 and hits[0] not in out:
            out[hits[0]] = v
    return out


def run(model, feeds: Mapping[str, np.ndarray], backend: str, per_layer: bool = False) -> dict[str, np.ndarray]:
    """The other model's outputs keyed by the candidate's output names (matched by name, else by
    position), plus with per_layer its intermediates under the candidate's names where they match."""
    from .. import load
    path, spec = parse(backend)
    other = load(path)
    res = other.run(_feeds(model, other, feeds), precision=spec, observe="all" if per_layer else None)
    out: dict[str, np.ndarray] = {}
    if per_layer:
        out.update(_match_layers(model, other, res.observed))
    theirs = list(other.outputs)
    for i, name in enumerate(model.outputs):
        if name in res:
            out[name] = res[name]
        elif len(theirs) == len(model.outputs):
            out[name] = res[theirs[i]]
        else:
            raise HalfsimError(f"cannot match output {name!r} to the outputs of {path} ({', '.join(theirs)})")
    return out
