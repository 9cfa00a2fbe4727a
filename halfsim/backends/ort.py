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


def cast_rewrite(proto: onnx.ModelProto, fmt: str = "fp16", saturate_weights: bool = True,
                 faithful: bool = True) -> onnx.ModelProto:
    """An independent emulation of `fmt` storage that ORT can run: every float node output is
    followed by Cast(fmt) -> Cast(float), in If/Loop/Scan bodies too, and float weights
    (initializers and Constant nodes, which the presets treat alike) are rounded (saturating, as
    the presets do) with numpy/ml_dtypes. Run it with graph optimizations off.

    faithful: ops whose fp32 result ORT computes with another function than halfsim's fp32 mode
    are expressed in ORT ops that compute halfsim's, so that the comparison measures where
    values are rounded, not two fp32 implementations (a 1-ulp fp32 difference flips the fp16
    rounding of ~1 value in 8000). MLAS's logistic (ORT's Sigmoid, and the gates inside its
    LSTM) has an absolute error near 1e-7: up to ~1e7 ulp on outputs below 1e-3, flipping the
    fp16 rounding of ~1% of the outputs of N(0, 16) inputs. halfsim emulates it bit for bit for
    Sigmoids of >= 16384 elements (kept as they are) and computes smaller ones as
    1 / (1 + exp(-x)) in fp32 (so does the oracle, in ORT's Neg/Exp/Add/Reciprocal); its LSTM
    computes the gate activations in float64, rounded once. An LSTM with static length, constant
    weights and default activations is unrolled into MatMul/Add/Mul and float64
    sigmoid/tanh, rounded to fp16 only at its outputs (a fused op, as halfsim's)."""
    from onnx import TensorProto, helper, numpy_helper
    to = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}[fmt]
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    npt = np.float16 if fmt == "fp16" else _bf16()
    lim = float(np.finfo(np.float16).max) if fmt == "fp16" else float(3.3895314e38)

    def low(a: np.ndarray) -> np.ndarray:
        if saturate_weights:
            a = np.clip(a, -lim, lim)
        return a.astype(npt).astype(np.float32)

    inferred = onnx.shape_inference.infer_shapes(m)
    infos = {}

    def collect(g: onnx.GraphProto) -> None:
        for v in list(g.value_info) + list(g.output) + list(g.input):
            infos.setdefault(v.name, v)
        for n in g.node:
            for a in n.attribute:
                for sg in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    collect(sg)
    collect(inferred.graph)
    opset = max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), default=1)
    float_names = {k for k, v in infos.items() if v.type.tensor_type.elem_type == TensorProto.FLOAT}

    def rewrite(g: onnx.GraphProto) -> None:
        for i, t in enumerate(g.initializer):
            a = numpy_helper.to_array(t)
            if a.dtype == np.float32:
                g.initializer[i].CopyFrom(numpy_helper.from_array(low(a), t.name))
        inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        new_nodes = []
        for n in g.node:
            n2 = onnx.NodeProto()
            n2.CopyFrom(n)
            for a in n2.attribute:
                for sg in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    rewrite(sg)
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
                # A weight: rounded (saturating) like an initializer, no Cast after it.
                for a in n2.attribute:
                    if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                        a.t.CopyFrom(numpy_helper.from_array(low(numpy_helper.to_array(a.t)), a.t.name))
                    elif a.name == "value_float":
                        a.f = float(low(np.array([a.f], np.float32))[0])
                    elif a.name == "value_floats":
                        vals = low(np.array(a.floats, np.float32))
                        del a.floats[:]
                        a.floats.extend(float(v) for v in vals)
                new_nodes.append(n2)
                continue
            body = _faithful_nodes(n2, inits, infos, opset) if faithful else None
            new_nodes.extend(body if body is not None else [n2])
            for j, o in enumerate(n.output):
                if o in float_names:
                    raw = o + "__raw"
                    producer = next(x for x in (body or [n2]) if o in x.output)
                    producer.output[list(producer.output).index(o)] = raw
                    new_nodes.append(helper.make_node("Cast", [raw], [o + "__low"], to=to))
                    new_nodes.append(helper.make_node("Cast", [o + "__low"], [o], to=TensorProto.FLOAT))
        del g.node[:]
        g.node.extend(new_nodes)
    rewrite(m.graph)
    return m


def _sigmoid_nodes(x: str, y: str, p: str, one: str) -> list:
    """y = 1 / (1 + exp(-x)) in ORT's Neg/Exp/Add/Reciprocal, in the type of x and of the
    constant `one` (names prefixed p)."""
    from onnx import helper
    return [helper.make_node("Neg", [x], [p + "n"]), helper.make_node("Exp", [p + "n"], [p + "e"]),
            helper.make_node("Add", [p + "e", one], [p + "d"]),
            helper.make_node("Reciprocal", [p + "d"], [y])]


def _static_size(vi) -> int | None:
    dims = vi.type.tensor_type.shape.dim if vi is not None and vi.type.tensor_type.HasField("shape") else None
    if dims is None or any(not d.HasField("dim_value") for d in dims):
        return None
    return int(np.prod([d.dim_value for d in dims], dtype=np.int64))


def _faithful_nodes(n: onnx.NodeProto, inits: dict, infos: dict, opset: int) -> list | None:
    """n as ORT nodes computing what halfsim's fp32 mode computes for it (see cast_rewrite),
    producing n's output names; None to keep n as it is."""
    from onnx import helper, numpy_helper
    if n.domain not in ("", "ai.onnx"):
        return None
    from ..ops.elementwise import _MLAS_MIN
    p = (n.name or n.output[0]) + "__f_"
    if n.op_type == "Sigmoid":
        size = _static_size(infos.get(n.input[0]))
        if (size is not None and size >= _MLAS_MIN) or (size is None and opset < 9):
            return None
        one = helper.make_node("Constant", [], [p + "one"], value=numpy_helper.from_array(np.ones((), np.float32)))
        if size is not None:
            return [one] + _sigmoid_nodes(n.input[0], n.output[0], p, one.output[0])
        # Size unknown before the run: both, chosen by the tensor's size as halfsim chooses.
        lim = helper.make_node("Constant", [], [p + "lim"], value=numpy_helper.from_array(np.array(_MLAS_MIN - 1, np.int64)))
        return [one, lim] + _sigmoid_nodes(n.input[0], p + "small", p, one.output[0]) + [
            helper.make_node("Sigmoid", [n.input[0]], [p + "mlas"]),
            helper.make_node("Size", [n.input[0]], [p + "size"]),
            helper.make_node("Greater", [p + "size", p + "lim"], [p + "big"]),
            helper.make_node("Where", [p + "big", p + "mlas", p + "small"], [n.output[0]])]
    if n.op_type == "LSTM":
        return _lstm_nodes(n, inits, infos, p)
    return None


def _lstm_nodes(n: onnx.NodeProto, inits: dict, infos: dict, p: str) -> list | None:
    """An LSTM unrolled over its static length, per direction and gate g in (i, o, f, c):
    a_g = X.W_g^T + H.R_g^T + Wb_g + Rb_g, c' = f*c + i*tanh(a_c), h' = o*tanh(c'), with ops of
    every opset from 7 (Gather, MatMul, Reshape, Concat). Only the plain form (default
    activations, no clip, peepholes, coupled gates, sequence_lens, layout 1); else None."""
    from onnx import TensorProto, helper, numpy_helper
    attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
    acts = [a.decode().lower() if isinstance(a, bytes) else a.lower() for a in attrs.get("activations", [])]
    direction = attrs.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    ins = list(n.input) + [""] * (8 - len(n.input))
    if ((acts and acts != ["sigmoid", "tanh", "tanh"] * (len(acts) // 3)) or attrs.get("clip") is not None
            or attrs.get("input_forget", 0) or attrs.get("layout", 0) or ins[4] or ins[7]
            or ins[1] not in inits or ins[2] not in inits or (ins[3] and ins[3] not in inits)):
        return None
    vi = infos.get(ins[0])
    dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim] if vi else []
    if len(dims) != 3 or None in dims[:2]:
        return None
    T, B = dims[0], dims[1]
    W, R = inits[ins[1]], inits[ins[2]]
    nd, H = R.shape[0], R.shape[2]
    bias = inits[ins[3]] if ins[3] else np.zeros((nd, 8 * H), np.float32)
    out = list(n.output) + [""] * (3 - len(n.output))
    nodes = [helper.make_node("Constant", [], [p + "one"], value=numpy_helper.from_array(np.ones((), np.float64)))]

    def const(name: str, a: np.ndarray) -> str:
        nodes.append(helper.make_node("Constant", [], [p + name], value=numpy_helper.from_array(np.ascontiguousarray(a))))
        return p + name

    def node(op: str, inputs: list, name: str, **kw) -> str:
        nodes.append(helper.make_node(op, inputs, [p + name], **kw))
        return p + name

    def tanh(x: str, name: str) -> str:  # in float64, rounded once
        t64 = node("Tanh", [node("Cast", [x], name + "64", to=TensorProto.DOUBLE)], name + "t")
        return node("Cast", [t64], name, to=TensorProto.FLOAT)

    ys, yh, yc = [], [], []
    for d in range(nd):
        states = []
        for k, idx in ((0, 5), (1, 6)):
            if ins[idx]:
                states.append(node("Gather", [ins[idx], const(f"d{k}{d}", np.array(d, np.int64))], f"s{k}{d}", axis=0))
            else:
                states.append(const(f"z{k}{d}", np.zeros((B, H), np.float32)))
        h, c = states
        rt, b, xw = {}, {}, {}
        for j, g in enumerate("iofc"):
            rows = slice(j * H, (j + 1) * H)
            rt[g] = const(f"r{g}{d}", R[d, rows].T)
            b[g] = const(f"b{g}{d}", bias[d, rows] + bias[d, 4 * H:][rows])
            xw[g] = node("MatMul", [ins[0], const(f"w{g}{d}", W[d, rows].T)], f"xw{g}{d}")
        hs = {}
        for t in (range(T - 1, -1, -1) if direction == "reverse" or d == 1 else range(T)):
            q = f"{d}_{t}_"
            ti = const(q + "t", np.array(t, np.int64))
            a = {g: node("Add", [node("Add", [node("Gather", [xw[g], ti], q + g + "x", axis=0),
                                               node("MatMul", [h, rt[g]], q + g + "h")], q + g + "xh"), b[g]], q + g)
                 for g in "iofc"}
            gate = {}
            for g in "iof":
                nodes.extend(_sigmoid_nodes(node("Cast", [a[g]], q + g + "64", to=TensorProto.DOUBLE), p + q + g + "s",
                                            p + q + g + "_", p + "one"))
                gate[g] = node("Cast", [p + q + g + "s"], q + g + "g", to=TensorProto.FLOAT)
            c = node("Add", [node("Mul", [gate["f"], c], q + "fc"),
                             node("Mul", [gate["i"], tanh(a["c"], q + "tc")], q + "ic")], q + "cs")
            h = node("Mul", [gate["o"], tanh(c, q + "th")], q + "hn")
            hs[t] = h
        ys.append(hs)
        yh.append(h)
        yc.append(c)
    if out[0]:
        shape = const("y4", np.array([1, 1, B, H], np.int64))
        per_t = [node("Concat", [node("Reshape", [ys[d][t], shape], f"y{d}_{t}") for d in range(nd)], f"yt{t}", axis=1)
                 for t in range(T)]
        nodes.append(helper.make_node("Concat", per_t, [out[0]], axis=0))
    shape3 = const("y3", np.array([1, B, H], np.int64))
    for k, (name, vals) in enumerate(((out[1], yh), (out[2], yc))):
        if name:
            nodes.append(helper.make_node("Concat", [node("Reshape", [v, shape3], f"o{k}{d}") for d, v in enumerate(vals)],
                                          [name], axis=0))
    return nodes


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
