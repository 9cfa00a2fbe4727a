"""CoreML ML programs on any platform: read a .mlpackage/.mlmodel with coremltools, translate its
MIL ops into an ONNX graph in the program's own dtypes, and run that with halfsim's interpreter."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import onnx

from .loader import SUFFIXES, is_coreml_path, load_program, read_spec  # noqa: F401
from .translate import OPS, to_onnx, unsupported_ops  # noqa: F401

if TYPE_CHECKING:
    from ..interpreter import Model


def program_to_onnx(src: Any, function: str = "main") -> onnx.ModelProto:
    """ONNX translation of an ML program given as a .mlpackage/.mlmodel path or a MIL Program."""
    if isinstance(src, (str, os.PathLike)):
        return to_onnx(load_program(src), function, source=os.fspath(src))
    return to_onnx(src, function)


def load(src: Any, function: str = "main") -> "Model":
    """A halfsim Model running the ML program (path or MIL Program)."""
    from ..interpreter import Model
    source = os.fspath(src) if isinstance(src, (str, os.PathLike)) else "<memory>"
    return Model(program_to_onnx(src, function), source=source)
