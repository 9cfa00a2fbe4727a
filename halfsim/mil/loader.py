"""Read a CoreML ML program (.mlpackage or .mlmodel) on any platform: the protobuf spec with
coremltools, then coremltools' milproto frontend turns it into a MIL Program whose constants are
resolved from the weight blob (coremltools' blob reader works on Linux; only predictions need
macOS). Every failure is a one-line ModelError naming the file and the problem."""
from __future__ import annotations

import os
from typing import Any

from ..backends.coreml import _ct, _quiet
from ..backends.coreml_ops import quiet_import
from ..errors import HalfsimError, ModelError

SUFFIXES = (".mlpackage", ".mlmodel")


def is_coreml_path(src: Any) -> bool:
    """True for a path naming a .mlpackage or .mlmodel (the suffix decides, like coremltools)."""
    if not isinstance(src, (str, os.PathLike)):
        return False
    return os.fspath(src).rstrip("/\\").lower().endswith(SUFFIXES)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300] or type(e).__name__


def _blob_files(spec) -> set[str]:
    """Names of the weight files the program's constants point at."""
    names: set[str] = set()

    def walk(block):
        for op in block.operations:
            for v in op.attributes.values():
                if v.WhichOneof("value") == "blobFileValue":
                    names.add(v.blobFileValue.fileName.split("/")[-1])
            for sub in op.blocks:
                walk(sub)

    for f in spec.mlProgram.functions.values():
        for b in f.block_specializations.values():
            walk(b)
    return names


def read_spec(path: str | os.PathLike):
    """(spec, weights_dir) of a saved ML program; ModelError for anything else."""
    ct = _ct()
    p = os.fspath(path).rstrip("/\\")
    if not os.path.exists(p):
        raise ModelError(f"no such CoreML model: {p}")
    try:
        with _quiet():
            m = ct.models.MLModel(p, skip_model_load=True)
            spec = m.get_spec()
    except Exception as e:
        raise ModelError(f"cannot read CoreML model {p}: {type(e).__name__}: {_one_line(e)}") from None
    kind = spec.WhichOneof("Type")
    if kind != "mlProgram":
        raise ModelError(f"{p} is a CoreML {kind} model, not an ML program: halfsim runs ML programs only "
                         "(convert it with coremltools using convert_to='mlprogram')")
    wdir = m.weights_dir or ""
    for name in sorted(_blob_files(spec)):
        f = os.path.join(wdir, name)
        if not os.path.isfile(f):
            raise ModelError(f"{p}: weight file {name} is missing (expected {f})")
    return spec, wdir


def load_program(path: str | os.PathLike):
    """A saved ML program as a MIL Program with every weight read from its blob."""
    spec, wdir = read_spec(path)
    milproto = quiet_import("coremltools.converters.mil.frontend.milproto.load")
    try:
        with _quiet():
            return milproto.load(spec, spec.specificationVersion, wdir)
    except HalfsimError:
        raise
    except Exception as e:
        # A truncated or overwritten weight.bin fails here (the blob reader checks offsets and
        # sentinels); so do programs the installed coremltools cannot parse.
        raise ModelError(f"cannot load the ML program {os.fspath(path)} (corrupt weights or program?): "
                         f"{type(e).__name__}: {_one_line(e)}") from None
