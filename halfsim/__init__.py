"""halfsim: predict what an FP32-trained ONNX model outputs when a runtime runs it in FP16,
bf16, TF32 or FP8, and inject numerical faults, on any CPU."""
from .errors import HalfsimError, ModelError, InputError, UnsupportedOpError, ExecutionError, CheckFailed  # noqa: F401
from .formats import Format, format, round, encode, decode, ulp_distance  # noqa
from .interpreter import load, Model, RunResult, Trace  # noqa: F401
from .faults import inject  # noqa
from .bisect import bisect  # noqa

__version__ = "0.1.0"
