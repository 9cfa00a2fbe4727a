"""What coremltools' FP16 compute-precision pass keeps in fp32, read from the installed
coremltools at run time (so the preset follows coremltools rather than a copy that drifts)."""
from __future__ import annotations

import functools
import logging

# ONNX ops that coremltools converts to each MIL op type that the FP16 pass may skip.
_MIL_TO_ONNX = {
    "cast": ("Cast", "CastLike"),
    "while_loop": ("Loop", "Scan"),
    "cond": ("If",),
    "make_list": ("SequenceEmpty", "SequenceConstruct"),
    "list_gather": ("SequenceAt",),
    "list_scatter": ("SequenceInsert",),
    "list_read": ("SequenceAt",),
    "list_write": ("SequenceInsert",),
    "list_length": ("SequenceLength",),
    # Recurrent ops exist in fp32 only before iOS17 (coremltools' default target is iOS15).
    "lstm": ("LSTM",),
    "gru": ("GRU",),
    "rnn": ("RNN",),
}
# Constants at or above this magnitude are treated as infinities by the pass (attention masks).
INF_THRESHOLD = 1e38


def quiet_import(module: str):
    """Import a coremltools module without its warnings about the macOS-only native library."""
    import importlib
    log = logging.getLogger("coremltools")
    old = log.level
    log.setLevel(logging.ERROR)
    try:
        return importlib.import_module(module)
    finally:
        log.setLevel(old)


@functools.lru_cache(maxsize=1)
def unsupported_mil_ops() -> frozenset[str]:
    """The MIL op types coremltools' FP16ComputePrecision pass never casts to fp16."""
    try:
        FP16ComputePrecision = quiet_import(
            "coremltools.converters.mil.mil.passes.defs.quantization").FP16ComputePrecision
    except Exception:  # coremltools missing or reorganised: no skip list, say so in the policy
        return frozenset()
    return frozenset(getattr(FP16ComputePrecision, "_UNSUPPORTED_FP16_OPS", ()))


@functools.lru_cache(maxsize=4)
def fp32_only_mil_ops(target: str = "iOS15") -> frozenset[str]:
    """MIL op types whose float inputs accept no fp16 at deployment `target` (the pass cannot
    cast them, so they stay fp32: lstm, gru and rnn before iOS17)."""
    try:
        registry = quiet_import("coremltools.converters.mil.mil.ops.registry").SSAOpRegistry.core_ops
        types = quiet_import("coremltools.converters.mil.mil.types")
        tgt = getattr(quiet_import("coremltools").target, target).value
    except Exception:  # coremltools missing or reorganised
        return frozenset()
    out = set()
    for name, versions in registry.items():
        known = [v for v in versions if v.value <= tgt]
        if not known:
            continue
        cls = versions[max(known, key=lambda v: v.value)]
        domains = []
        for t in cls.input_spec.input_types.values():
            tid = getattr(t, "_type_domain_id", None)  # "T": resolved per op class
            d = cls.type_domains.get(tid) if tid else getattr(t, "_type_domain", None)
            if d and types.fp32 in d:
                domains.append(d)
        if domains and all(types.fp16 not in d for d in domains):
            out.add(name)
    return frozenset(out)


def coreml_fp32_onnx_ops() -> set[str]:
    """ONNX op types whose MIL counterparts the installed coremltools keeps in fp32 (at its
    default ML-program target, iOS15)."""
    out: set[str] = set()
    for mil in unsupported_mil_ops() | fp32_only_mil_ops():
        out.update(_MIL_TO_ONNX.get(mil, ()))
    return out
