"""Self-contained HTML reports (inline SVG plots from matplotlib)."""
from __future__ import annotations

import html
import io
import math
import platform
from typing import Any, Mapping

import numpy as np

from .errors import HalfsimError


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    _plt().close(fig)
    s = buf.getvalue()
    return s[s.index("<svg"):]


def versions() -> dict[str, str]:
    import numba
    import onnx
    import onnxruntime

    from . import __version__
    return {"halfsim": __version__, "numpy": np.__version__, "numba": numba.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}


def first_jump(layers: list[dict], key: str = "rel_l2", factor: float = 10.0, min_drift: float = 1e-2) -> int | None:
    """Index of the first layer whose drift is large (above `min_drift`) and at least `factor`
    times the largest drift before it: where rounding noise turns into a failure."""
    best = 0.0
    for i, layer in enumerate(layers):
        v = layer.get(key, 0.0)
        if not math.isfinite(v):
            return i
        if v > max(factor * best, min_drift):
            return i
        best = max(best, v)
    return None


def layer_drift_svg(layers: list[dict], title: str) -> str:
    plt = _plt()
    vals = np.array([min(layer["rel_l2"], 1e3) for layer in layers], dtype=float)
    nonfinite = [i for i, layer in enumerate(layers) if not math.isfinite(layer["rel_l2"])]
    fig, ax = plt.subplots(figsize=(10, 3.6))
    ax.semilogy(np.arange(len(vals)), np.maximum(vals, 1e-12), marker="o", ms=3, lw=1)
    for i in nonfinite:
        ax.axvline(i, color="red", alpha=0.4)
    j = first_jump(layers)
    if j is not None:
        ax.axvline(j, color="orange", ls="--", label=f"first jump: {layers[j]['node']} ({layers[j]['op_type']})")
        ax.legend(loc="upper left", fontsize=8)
    step = max(1, len(layers) // 30)
    ax.set_xticks(range(0, len(layers), step))
    ax.set_xticklabels([layers[i]["op_type"] for i in range(0, len(layers), step)], rotation=70, fontsize=7)
    ax.set_ylabel("rel L2 vs reference")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    return _svg(fig)


def ulp_hist_svg(cand: np.ndarray, ref: np.ndarray, name: str, fmt: str = "fp32") -> str:
    from .formats import ulp_distance
    plt = _plt()
    a = np.asarray(cand, dtype=np.float32).ravel()
    b = np.asarray(ref, dtype=np.float32).ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    d = np.asarray(ulp_distance(a[ok], b[ok], fmt), dtype=np.float64)
    fig, ax = plt.subplots(figsize=(5, 3))
    bins = np.concatenate([[0, 1], np.logspace(0, max(1.0, math.log10(max(d.max(initial=1), 2)) + 0.1), 30)[1:]])
    ax.hist(np.maximum(d, 0), bins=bins)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel(f"distance in {fmt} ULPs")
    ax.set_ylabel("elements")
    ax.set_title(f"{name}: error histogram")
    return _svg(fig)


def _table(rows: list[dict], cols: list[str]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return html.escape(str(v))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


_CSS = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;"
        "margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}"
        "th{background:#f3f3f3}h1{font-size:22px}h2{font-size:17px;margin-top:1.6em}.plot svg{max-width:100%;height:auto}")


def compare_html(report: Mapping, samples: Mapping[str, tuple] | None = None, events: list | None = None,
                 extra: str = "") -> str:
    title = f"halfsim:{report['precision']} against {report['against']}"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p>model: {html.escape(str(report.get('model', '')))}</p>", extra]
    rows = [{"output": k, **v} for k, v in report["outputs"].items()]
    parts.append("<h2>Outputs</h2>" + _table(rows, ["output", "max_abs", "max_rel", "rel_l2", "cosine", "max_ulp", "nonfinite"]))
    for name, (c, r) in (samples or {}).items():
        parts.append(f"<div class='plot'>{ulp_hist_svg(c, r, name)}</div>")
    layers = report.get("layers")
    if layers:
        j = first_jump(layers)
        parts.append("<h2>Drift per layer (topological order)</h2>")
        if j is not None:
            parts.append(f"<p>First large jump: <b>{html.escape(layers[j]['node'])}</b> ({html.escape(layers[j]['op_type'])}), "
                         f"rel L2 {layers[j]['rel_l2']:.3g}.</p>")
        parts.append(f"<div class='plot'>{layer_drift_svg(layers, title)}</div>")
        parts.append(_table(layers, ["node", "op_type", "output", "rel_l2", "max_abs", "max_ulp", "nonfinite"]))
    if events:
        parts.append("<h2>Overflow, saturation, underflow and NaN sites</h2>")
        parts.append(_table([e.to_dict() if hasattr(e, "to_dict") else e for e in events],
                            ["node", "op_type", "tensor", "kind", "count", "constant"]))
    parts.append("<h2>Versions</h2>" + _table([versions()], list(versions())))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_compare_html(report: Mapping, path: str, samples=None, events=None, extra: str = "") -> None:
    text = compare_html(report, samples, events, extra)
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise HalfsimError(f"cannot write {path}: {e.strerror}") from None
