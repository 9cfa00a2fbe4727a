"""Compare a halfsim prediction with a reference backend, per output and per layer."""
from __future__ import annotations

import sys
from typing import Any, Mapping

import numpy as np

from . import metrics
from .errors import HalfsimError

BACKENDS = ("halfsim:SPEC", "ort", "ort-fp16", "ort-cuda", "ort-cuda-fp16", "coreml", "onnx:PATH[:SPEC]")


def check_backend(backend: str) -> None:
    """Fail early, before any model runs, on a backend name that cannot work here."""
    import sys as _sys
    if backend.startswith("halfsim:") or backend == "halfsim":
        spec = backend.partition(":")[2] or "fp32"
        from .policy import preset
        preset(spec)
        return
    if backend.startswith("onnx:"):
        from .mil import against
        against.check(backend)
        return
    if backend == "coreml" and _sys.platform != "darwin":
        raise HalfsimError("CoreML predictions need macOS; on Linux use --against halfsim:coreml-fp16 to predict them")
    if backend in ("ort-cuda", "ort-cuda-fp16"):
        import onnxruntime as _ort
        if "CUDAExecutionProvider" not in _ort.get_available_providers():
            raise HalfsimError(f"{backend} needs onnxruntime-gpu and a CUDA GPU (available providers: "
                               f"{', '.join(_ort.get_available_providers())})")
        return
    if backend not in ("ort", "ort-fp16", "coreml"):
        raise HalfsimError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")


def run_backend(model, feeds: Mapping[str, np.ndarray], backend: str, per_layer: bool = False) -> dict[str, np.ndarray]:
    """Outputs (and with per_layer, every intermediate it can expose) of `backend`."""
    if backend.startswith("halfsim:") or backend == "halfsim":
        return _run_halfsim(model, feeds, backend.partition(":")[2] or "fp32", per_layer)[0]
    if backend.startswith("onnx:"):  # another model file run by halfsim (halfsim.mil.against)
        from .mil import against
        return against.run(model, feeds, backend, per_layer)
    if backend == "ort":
        from .backends import ort
        return ort.run(model.proto, feeds, intermediates=per_layer)
    if backend in ("ort-fp16", "ort-cuda", "ort-cuda-fp16"):
        from .backends import ort
        return ort.run_variant(model.proto, feeds, backend, intermediates=per_layer)
    if backend == "coreml":
        from .backends import coreml
        return coreml.run(model, feeds)
    raise HalfsimError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")


def compare(model, feeds: Mapping[str, np.ndarray], precision: Any = "fp32", against: str = "halfsim:fp32",
            per_layer: bool = False) -> dict:
    """JSON-ready report of halfsim at `precision` against `against` (the contract's keys)."""
    return compare_run(model, feeds, precision, against, per_layer)[0]


def compare_run(model, feeds: Mapping[str, np.ndarray], precision: Any = "fp32", against: str = "halfsim:fp32",
                per_layer: bool = False) -> tuple[dict, dict, dict, list]:
    """The report, plus the candidate's and the reference's tensors and the candidate's
    numerical events (for plots)."""
    check_backend(against)
    cand, events = _run_halfsim(model, feeds, precision, per_layer)
    ref = run_backend(model, feeds, against, per_layer)
    report: dict = {"version": 1, "model": str(model.source), "precision": _spec_name(precision),
                    "against": against, "outputs": {}, "events": [e.to_dict() for e in events]}
    for name in model.outputs:
        if name not in ref:
            raise HalfsimError(f"backend {against} did not produce output {name!r}")
        report["outputs"][name] = metrics.all_metrics(cand[name], ref[name])
    if per_layer:
        layers = []
        for node in model.nodes:
            if node.op_type == "Constant":
                continue
            for t in node.outputs:
                if not t or t not in cand or t not in ref:
                    continue
                a, b = cand[t], ref[t]
                if not isinstance(a, np.ndarray) or not isinstance(b, np.ndarray):
                    continue
                if a.dtype.kind != "f" or b.dtype.kind != "f" or a.shape != b.shape:
                    continue
                rec = {"node": node.label, "op_type": node.op_type, "output": t}
                rec.update(metrics.all_metrics(a, b))
                layers.append(rec)
        report["layers"] = layers
        from .report import first_jump
        j = first_jump(layers)
        report["first_jump"] = None if j is None else {k: layers[j][k] for k in ("node", "op_type", "output", "rel_l2")}
    return report, cand, ref, events


def _run_halfsim(model, feeds, precision, per_layer):
    res = model.run(feeds, precision=precision, observe="all" if per_layer else None)
    out = dict(res.observed) if per_layer else {}
    out.update(res)
    return out, list(res.events)


def _spec_name(p: Any) -> str:
    return p if isinstance(p, str) else getattr(p, "name", type(p).__name__)


def format_table(report: dict, file=sys.stdout) -> None:
    cols = ("max_abs", "max_rel", "rel_l2", "cosine", "max_ulp", "nonfinite")
    print(f"halfsim:{report['precision']} against {report['against']}", file=file)
    w = max([len(n) for n in report["outputs"]] + [6])
    print(f"{'output':<{w}}  " + "  ".join(f"{c:>10}" for c in cols), file=file)
    for name, m in report["outputs"].items():
        cells = []
        for c in cols:
            v = m[c]
            cells.append(f"{v:>10d}" if isinstance(v, int) else f"{v:>10.3g}")
        print(f"{name:<{w}}  " + "  ".join(cells), file=file)
