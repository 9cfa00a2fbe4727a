"""ONNX Runtime backend: run a model (optionally exposing every intermediate as an output)."""
from __future__ import annotations

import os
from typing import Iterable, Mapping

import numpy as np
import onnx

from ..errors import HalfsimError, InputError


def _threads() -> int:
    return int(os.environ.get("HALFSIM_ORT_THREADS", "0"))


def expose_intermediates(proto: onnx.ModelProto, names: Iterable[str] | None = None) -> onnx.ModelProto:
    """A copy of `proto` whose graph outputs also list every node output of the main graph
    (or just `names`), untyped so ORT infers their types."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    existing = {o.name for o in m.graph.output}
    wanted = list(names) if names is not None else [o for n in m.graph.node for o in n.output if o]
    for t in wanted:
        if t not in existing:
            m.graph.output.append(onnx.ValueInfoProto(name=t))
            existing.add(t)
    return m


def session(proto: onnx.ModelProto, providers: list[str] | None = None, optimize: bool = True,
            threads: int | None = None):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = _threads() if threads is None else threads
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(proto.SerializeToString(), so, providers=providers or ["CPUExecutionProvider"])
    except Exception as e:
        msg = str(e).strip().splitlines()
        raise HalfsimError(f"onnxruntime cannot load the model: {msg[0] if msg else type(e).__name__}") from None


def run(proto: onnx.ModelProto, feeds: Mapping[str, np.ndarray], *, intermediates: bool | Iterable[str] = False,
        providers: list[str] | None = None, optimize: bool = True) -> dict[str, np.ndarray]:
    """Run in ORT. With intermediates, graph optimizations are off so that every node output
    of the original graph exists."""
    if intermediates:
        names = None if intermediates is True else list(intermediates)
        proto = expose_intermediates(proto, names)
        optimize = False
    sess = session(proto, providers, optimize)
    want = {i.name for i in sess.get_inputs()}
    missing = sorted(want - set(feeds))
    if missing:
        raise InputError(f"missing input {missing[0]!r} for onnxruntime")
    names = [o.name for o in sess.get_outputs()]
    try:
        vals = sess.run(names, {k: v for k, v in feeds.items() if k in want})
    except Exception as e:
        msg = str(e).strip().splitlines()
        raise HalfsimError(f"onnxruntime failed: {msg[0] if msg else type(e).__name__}") from None
    return dict(zip(names, vals))


def versions() -> dict[str, str]:
    import onnxruntime as ort
    return {"onnxruntime": ort.__version__, "onnx": onnx.__version__}


def cast_rewrite(proto: onnx.ModelProto, fmt: str = "fp16", saturate_weights: bool = True) -> onnx.ModelProto:
    """An independent emulation of `fmt` storage that ORT can run: every float node output is
    followed by Cast(fmt) -> Cast(float), and float weights are rounded (saturating, as the
    presets do) with numpy/ml_dtypes. Run it with graph optimizations off."""
    from onnx import TensorProto, helper, numpy_helper
    to = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}[fmt]
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    g = m.graph
    npt = np.float16 if fmt == "fp16" else _bf16()
    lim = float(np.finfo(np.float16).max) if fmt == "fp16" else float(3.3895314e38)
    for i, t in enumerate(g.initializer):
        a = numpy_helper.to_array(t)
        if a.dtype == np.float32:
            if saturate_weights:
                a = np.clip(a, -lim, lim)
            g.initializer[i].CopyFrom(numpy_helper.from_array(a.astype(npt).astype(np.float32), t.name))
    inferred = onnx.shape_inference.infer_shapes(m)
    float_names = {v.name for v in list(inferred.graph.value_info) + list(inferred.graph.output)
                   if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    new_nodes = []
    for n in g.node:
        n2 = onnx.NodeProto()
        n2.CopyFrom(n)
        new_nodes.append(n2)
        for j, o in enumerate(n.output):
            if o in float_names:
                raw = o + "__raw"
                n2.output[j] = raw
                new_nodes.append(helper.make_node("Cast", [raw], [o + "__low"], to=to))
                new_nodes.append(helper.make_node("Cast", [o + "__low"], [o], to=TensorProto.FLOAT))
    del g.node[:]
    g.node.extend(new_nodes)
    return m


def _bf16():
    import ml_dtypes
    return ml_dtypes.bfloat16


def convert_fp16(proto: onnx.ModelProto, keep_io_types: bool = True) -> onnx.ModelProto:
    """The fp16 model a user would make: onnxconverter-common's converter, and halfsim's own
    converter (halfsim.export) where that one's output does not load in ORT."""
    import warnings
    last = None
    try:
        from onnxconverter_common import float16
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m16 = float16.convert_float_to_float16(proto, keep_io_types=keep_io_types)
        session(m16)
        return m16
    except Exception as e:  # converter crash or a model ORT rejects: try halfsim's converter
        last = e
    try:
        from ..export import convert_fp16 as own
    except ImportError:
        raise HalfsimError(f"fp16 conversion failed: {str(last).splitlines()[0] if str(last) else type(last).__name__}") from None
    m16 = own(proto, keep_io_types=keep_io_types)
    session(m16)
    return m16


def run_variant(proto: onnx.ModelProto, feeds: Mapping[str, np.ndarray], backend: str,
                intermediates: bool = False) -> dict[str, np.ndarray]:
    """ort-fp16 (fp16-converted model on the CPU EP), ort-cuda (CUDA EP, TF32 as ORT defaults),
    ort-cuda-fp16 (fp16-converted model on the CUDA EP). Outputs come back as float32."""
    providers = ["CPUExecutionProvider"]
    if backend.startswith("ort-cuda"):
        import onnxruntime as ort
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise HalfsimError(f"{backend} needs onnxruntime-gpu and a CUDA GPU")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    m = convert_fp16(proto) if backend.endswith("fp16") else proto
    out = run(m, feeds, intermediates=intermediates, providers=providers)
    return {k: (v.astype(np.float32) if isinstance(v, np.ndarray) and v.dtype == np.float16 else v)
            for k, v in out.items()}
