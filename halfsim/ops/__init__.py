"""ONNX ops, one module per family, registered with `@op` from .registry."""
from .registry import op, resolve, registered, MS_DOMAIN  # noqa: F401
