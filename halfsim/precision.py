"""Turns a `precision` argument (preset name, Policy, or plan) into a precision plan for a
model. Only fp32 exists until per-op precision lands (issue 4)."""
from __future__ import annotations

from typing import Any

from .errors import HalfsimError
from .interpreter import FP32_PLAN


def make_plan(precision: Any, model: Any):
    if precision is None or precision == "fp32":
        return FP32_PLAN
    if hasattr(precision, "on_outputs") and hasattr(precision, "identity"):
        return precision
    raise HalfsimError(f"unknown precision {precision!r}")
