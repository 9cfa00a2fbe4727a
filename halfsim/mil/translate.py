"""Translate a MIL Program (a CoreML ML program) into an ONNX ModelProto that halfsim's
interpreter runs with its own kernels and precision model.

Every tensor keeps the dtype the program declares (fp16 vars become FLOAT16 tensors, MIL `cast`
an ONNX Cast), so an fp16 program runs with true fp16 semantics exactly like an fp16 ONNX model.
MIL var names are the ONNX tensor names and MIL op names the node names (helper nodes a MIL op
needs are named "<op>/<what>"), so observers, bisection, fault injection and per-layer
comparison speak the program's own names. One small builder per MIL op in `OPS`; a MIL op with
no builder fails at translation time with one line naming it."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..backends.coreml_ops import quiet_import
from ..errors import ModelError

OPSET = 20          # Gelu (20), ReduceX/Split/Pad with tensor inputs (18)
_I64_MAX = np.iinfo(np.int64).max
_I64_MIN = np.iinfo(np.int64).min


def _types():
    return quiet_import("coremltools.converters.mil.mil.types")


def np_dtype(mil_dtype) -> np.dtype:
    t = _types()
    if mil_dtype == t.bool:
        return np.dtype(np.bool_)
    return np.dtype(t.nptype_from_builtin(mil_dtype))


def _onnx_dtype(dt: np.dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dt))


_CAST = {"fp16": TensorProto.FLOAT16, "fp32": TensorProto.FLOAT, "fp64": TensorProto.DOUBLE,
         "int8": TensorProto.INT8, "uint8": TensorProto.UINT8, "int16": TensorProto.INT16,
         "uint16": TensorProto.UINT16, "int32": TensorProto.INT32, "uint32": TensorProto.UINT32,
         "int64": TensorProto.INT64, "bool": TensorProto.BOOL}


class Builder:
    """ONNX nodes, initializers and value infos for one MIL op at a time."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, onnx.TensorProto] = {}
        self.infos: dict[str, onnx.ValueInfoProto] = {}
        self.op: Any = None
        self._k = 0
        self.materialized: dict[str, np.ndarray] = {}  # outputs of constexpr_* ops (compressed weights)
        self._names: set[str] = set()
        self.rename: dict[str, str] = {}  # var name -> tensor name (a block translated twice)

    # -- inputs of the current op ----------------------------------------------------------
    def has(self, key: str) -> bool:
        return getattr(self.op, key, None) is not None

    def val(self, key: str, default: Any = None) -> Any:
        """A constant parameter of the op (Python/numpy value), or `default` when absent."""
        v = getattr(self.op, key, None)
        if v is None:
            return default
        if v.val is None and v.name in self.materialized:
            return self.materialized[v.name]
        if v.val is None:
            raise ModelError(f"MIL op {self.op.op_type} ({self.op.name!r}): parameter {key} is computed at run "
                             "time; halfsim supports only a constant one here")
        return v.val

    def t(self, key_or_var: Any) -> str:
        """ONNX tensor name for an op input (by key) or a MIL var; constants become initializers."""
        var = getattr(self.op, key_or_var) if isinstance(key_or_var, str) else key_or_var
        if isinstance(var, (list, tuple)):
            raise ModelError(f"MIL op {self.op.op_type}: input {key_or_var} is a tuple of tensors")
        producer = getattr(var, "op", None)
        if producer is not None and producer.op_type == "const":
            if var.name not in self.inits:
                value = np.asarray(var.val, dtype=np_dtype(var.dtype))
                self.inits[var.name] = numpy_helper.from_array(value, var.name)
            return var.name
        return self.rename.get(var.name, var.name)

    def const(self, value: Any, dtype: Any = None, hint: str = "c") -> str:
        """A new initializer for a value the translation computes (shapes, axes, pads)."""
        self._k += 1
        name = f"{self.op.name}/{hint}_{self._k}"
        self.inits[name] = numpy_helper.from_array(np.asarray(value, dtype=dtype), name)
        return name

    def i64(self, value: Any, hint: str = "c") -> str:
        return self.const(np.asarray(value, dtype=np.int64).reshape(-1), hint=hint)

    # -- outputs ---------------------------------------------------------------------------
    def out(self, i: int = 0) -> str:
        name = self.op.outputs[i].name
        return self.rename.get(name, name)

    def node(self, op_type: str, inputs: list[str], outputs: list[str] | str | None = None, **attrs) -> str:
        """Append a node; without `outputs` it writes a fresh helper tensor. Returns the first output."""
        mil_outs = {self.out(i) for i in range(len(self.op.outputs))}
        if outputs is None:
            self._k += 1
            outputs = [f"{self.op.name}/{op_type}_{self._k}"]
        elif isinstance(outputs, str):
            outputs = [outputs]
        name = self.op.name
        if not any(o in mil_outs for o in outputs) or name in self._names:  # node names stay unique
            self._k += 1
            name = f"{self.op.name}/{op_type}_{self._k}"
        self._names.add(name)
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=name, **attrs))
        return outputs[0]

    def rank(self, key: str = "x") -> int:
        return len(getattr(self.op, key).shape)

    def shape(self, key: str = "x") -> tuple:
        return tuple(getattr(self.op, key).shape)


Emit = Callable[[Builder], None]
OPS: dict[str, Emit] = {}


def mil_op(*names: str) -> Callable[[Emit], Emit]:
    """Register the decorated function as the builder of these MIL op types."""
    def deco(fn: Emit) -> Emit:
        for n in names:
            OPS[n] = fn
        return fn
    return deco


# -- element-wise -----------------------------------------------------------------------------
_BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "real_div": "Div", "pow": "Pow", "maximum": "Max",
           "minimum": "Min", "equal": "Equal", "less": "Less", "less_equal": "LessOrEqual", "greater": "Greater",
           "greater_equal": "GreaterOrEqual", "logical_and": "And", "logical_or": "Or", "logical_xor": "Xor"}
_UNARY = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "exp": "Exp", "sqrt": "Sqrt",
          "abs": "Abs", "floor": "Floor", "ceil": "Ceil", "round": "Round", "sign": "Sign", "sin": "Sin",
          "cos": "Cos", "tan": "Tan", "asin": "Asin", "acos": "Acos", "atan": "Atan", "sinh": "Sinh",
          "cosh": "Cosh", "atanh": "Atanh", "erf": "Erf", "softplus": "Softplus", "softsign": "Softsign",
          "logical_not": "Not", "identity": "Identity"}


def _binary(b: Builder) -> None:
    b.node(_BINARY[b.op.op_type], [b.t("x"), b.t("y")], b.out())


def _unary(b: Builder) -> None:
    b.node(_UNARY[b.op.op_type], [b.t("x")], b.out())


for _n in _BINARY:
    OPS[_n] = _binary
for _n in _UNARY:
    OPS[_n] = _unary


def _scalar(b: Builder, value: float, like: str = "x") -> str:
    return b.const(value, dtype=np_dtype(getattr(b.op, like).dtype), hint="k")


@mil_op("not_equal")
def _not_equal(b: Builder) -> None:
    b.node("Not", [b.node("Equal", [b.t("x"), b.t("y")])], b.out())


@mil_op("floor_div")
def _floor_div(b: Builder) -> None:
    if np_dtype(b.op.x.dtype).kind == "f":
        b.node("Floor", [b.node("Div", [b.t("x"), b.t("y")])], b.out())
    else:  # integer floor division: ONNX Div truncates toward zero, so go through float
        q = b.node("Floor", [b.node("Div", [b.node("Cast", [b.t("x")], to=TensorProto.DOUBLE),
                                            b.node("Cast", [b.t("y")], to=TensorProto.DOUBLE)])])
        b.node("Cast", [q], b.out(), to=_onnx_dtype(np_dtype(b.op.x.dtype)))


@mil_op("mod")
def _mod(b: Builder) -> None:  # Python's %: the result takes the divisor's sign
    if np_dtype(b.op.x.dtype).kind == "f":  # ONNX float Mod is C fmod: x - floor(x / y) * y instead
        q = b.node("Floor", [b.node("Div", [b.t("x"), b.t("y")])])
        b.node("Sub", [b.t("x"), b.node("Mul", [q, b.t("y")])], b.out())
    else:
        b.node("Mod", [b.t("x"), b.t("y")], b.out(), fmod=0)


@mil_op("rsqrt")
def _rsqrt(b: Builder) -> None:  # 1 / sqrt(x + epsilon)
    x = b.node("Add", [b.t("x"), _scalar(b, b.val("epsilon", 1e-12))])
    b.node("Reciprocal", [b.node("Sqrt", [x])], b.out())


@mil_op("inverse")
def _inverse(b: Builder) -> None:  # 1 / (x + epsilon)
    b.node("Reciprocal", [b.node("Add", [b.t("x"), _scalar(b, b.val("epsilon", 1e-4))])], b.out())


@mil_op("log")
def _log(b: Builder) -> None:  # log(x + epsilon)
    eps = b.val("epsilon", 0.0)
    x = b.t("x") if eps == 0 else b.node("Add", [b.t("x"), _scalar(b, eps)])
    b.node("Log", [x], b.out())


@mil_op("square")
def _square(b: Builder) -> None:
    b.node("Mul", [b.t("x"), b.t("x")], b.out())


@mil_op("exp2")
def _exp2(b: Builder) -> None:
    b.node("Pow", [_scalar(b, 2.0), b.t("x")], b.out())


@mil_op("silu")
def _silu(b: Builder) -> None:
    b.node("Mul", [b.t("x"), b.node("Sigmoid", [b.t("x")])], b.out())


@mil_op("relu6")
def _relu6(b: Builder) -> None:
    b.node("Clip", [b.t("x"), _scalar(b, 0.0), _scalar(b, 6.0)], b.out())


@mil_op("clip")
def _clip(b: Builder) -> None:
    b.node("Clip", [b.t("x"), b.t("alpha"), b.t("beta")], b.out())


@mil_op("leaky_relu")
def _leaky_relu(b: Builder) -> None:
    b.node("LeakyRelu", [b.t("x")], b.out(), alpha=float(b.val("alpha", 0.01)))


@mil_op("elu")
def _elu(b: Builder) -> None:
    b.node("Elu", [b.t("x")], b.out(), alpha=float(b.val("alpha", 1.0)))


@mil_op("sigmoid_hard")
def _sigmoid_hard(b: Builder) -> None:
    b.node("HardSigmoid", [b.t("x")], b.out(), alpha=float(b.val("alpha", 0.2)), beta=float(b.val("beta", 0.5)))


@mil_op("thresholded_relu")
def _thresholded_relu(b: Builder) -> None:
    b.node("ThresholdedRelu", [b.t("x")], b.out(), alpha=float(b.val("alpha", 1.0)))


@mil_op("linear_activation")
def _linear_activation(b: Builder) -> None:
    b.node("Add", [b.node("Mul", [b.t("x"), _scalar(b, b.val("alpha"))]), _scalar(b, b.val("beta", 0.0))], b.out())


@mil_op("scaled_tanh")
def _scaled_tanh(b: Builder) -> None:
    t = b.node("Tanh", [b.node("Mul", [b.t("x"), _scalar(b, b.val("beta", 1.0))])])
    b.node("Mul", [t, _scalar(b, b.val("alpha", 1.0))], b.out())


@mil_op("prelu")
def _prelu(b: Builder) -> None:  # alpha is per channel (axis 1 of x)
    alpha = np.asarray(b.val("alpha")).reshape((-1,) + (1,) * (b.rank() - 2))
    b.node("PRelu", [b.t("x"), b.const(alpha, dtype=np_dtype(b.op.x.dtype), hint="slope")], b.out())


@mil_op("gelu")
def _gelu(b: Builder) -> None:
    mode = str(b.val("mode", "EXACT")).upper()
    if mode == "EXACT":
        b.node("Gelu", [b.t("x")], b.out())
    elif mode == "TANH_APPROXIMATION":
        b.node("Gelu", [b.t("x")], b.out(), approximate="tanh")
    elif mode == "SIGMOID_APPROXIMATION":  # x * sigmoid(1.702 x)
        s = b.node("Sigmoid", [b.node("Mul", [b.t("x"), _scalar(b, 1.702)])])
        b.node("Mul", [b.t("x"), s], b.out())
    else:
        raise ModelError(f"MIL gelu ({b.op.name!r}): unknown mode {mode}")


@mil_op("softmax")
def _softmax(b: Builder) -> None:
    b.node("Softmax", [b.t("x")], b.out(), axis=int(b.val("axis", -1)))


@mil_op("cast")
def _cast(b: Builder) -> None:
    dt = str(b.val("dtype"))
    if dt not in _CAST:
        raise ModelError(f"MIL cast ({b.op.name!r}) to {dt} is not supported")
    b.node("Cast", [b.t("x")], b.out(), to=_CAST[dt])


@mil_op("select")
def _select(b: Builder) -> None:
    b.node("Where", [b.t("cond"), b.t("a"), b.t("b")], b.out())


# -- linear algebra ---------------------------------------------------------------------------
@mil_op("linear")
def _linear(b: Builder) -> None:
    # x @ W^T + b as ONE op (Gemm on the flattened rows), so an fp16 program rounds once like
    # CoreML's linear, not after the product and again after the bias.
    w = b.t("weight")
    n, k = (int(d) for d in b.shape("weight"))
    bias = b.t("bias") if b.has("bias") else b.const(np.zeros(n), dtype=np_dtype(b.op.x.dtype), hint="bias")
    if b.rank() == 2:
        b.node("Gemm", [b.t("x"), w, bias], b.out(), transB=1)
        return
    rows = b.node("Reshape", [b.t("x"), b.i64([-1, k])])
    y = b.node("Gemm", [rows, w, bias], transB=1)
    lead = b.node("Slice", [b.node("Shape", [b.t("x")]), b.i64([0]), b.i64([-1])])
    b.node("Reshape", [y, b.node("Concat", [lead, b.i64([n])], axis=0)], b.out())


def _swap_last(b: Builder, name: str, rank: int) -> str:
    perm = list(range(rank))
    perm[-2:] = perm[-1], perm[-2]
    return b.node("Transpose", [name], perm=perm)


@mil_op("matmul")
def _matmul(b: Builder) -> None:
    x, y = b.t("x"), b.t("y")
    if b.val("transpose_x", False) and b.rank("x") >= 2:
        x = _swap_last(b, x, b.rank("x"))
    if b.val("transpose_y", False) and b.rank("y") >= 2:
        y = _swap_last(b, y, b.rank("y"))
    b.node("MatMul", [x, y], b.out())


@mil_op("einsum")
def _einsum(b: Builder) -> None:
    b.node("Einsum", [b.t(v) for v in b.op.values], b.out(), equation=str(b.val("equation")))


@mil_op("scaled_dot_product_attention")
def _sdpa(b: Builder) -> None:
    # softmax((Q / sqrt(E)) K^T + mask) V, step by step as coremltools decomposes it before
    # iOS18 (Q scaled first; each step rounded to the declared type); a bool mask keeps where True.
    e = b.shape("query")[-1]
    if not isinstance(e, (int, np.integer)):
        raise ModelError(f"MIL scaled_dot_product_attention ({b.op.name!r}) needs a static embedding size")
    kt = _swap_last(b, b.t("key"), b.rank("key"))
    q = b.node("Mul", [b.t("query"), _scalar(b, 1.0 / np.sqrt(float(e)), "query")])
    s = b.node("MatMul", [q, kt])
    if b.has("attn_mask"):
        mask = b.t("attn_mask")
        if np_dtype(b.op.attn_mask.dtype) == np.bool_:
            mask = b.node("Where", [mask, _scalar(b, 0.0, "query"), _scalar(b, -np.inf, "query")])
        s = b.node("Add", [s, mask])
    b.node("MatMul", [b.node("Softmax", [s], axis=-1), b.t("value")], b.out())


# -- convolution and pooling ------------------------------------------------------------------
def _pads(b: Builder, kernel: list[int], strides: list[int], dilations: list[int]) -> list[int]:
    """ONNX pads [begins..., ends...] for the op's pad_type (valid, custom, same, same_lower)."""
    nd = len(kernel)
    kind = str(b.val("pad_type", "valid"))
    if kind == "valid":
        return [0] * (2 * nd)
    if kind == "custom":
        p = [int(v) for v in b.val("pad", [0] * (2 * nd))]  # MIL: [b0, e0, b1, e1, ...]
        return p[0::2] + p[1::2]
    if kind in ("same", "same_lower"):
        spatial = b.shape("x")[-nd:]
        if not all(isinstance(d, (int, np.integer)) for d in spatial):
            raise ModelError(f"MIL {b.op.op_type} ({b.op.name!r}): pad_type {kind} needs static spatial sizes")
        begin, end = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dilations):
            out = -(-int(size) // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - int(size), 0)
            small, big = total // 2, total - total // 2
            begin.append(small if kind == "same" else big)
            end.append(big if kind == "same" else small)
        return begin + end
    raise ModelError(f"MIL {b.op.op_type} ({b.op.name!r}): unknown pad_type {kind}")


def _conv_params(b: Builder) -> tuple[list[str], list[int], list[int], list[int]]:
    """Inputs (x, weight[, bias]), kernel, strides and dilations of conv / conv_transpose."""
    kernel = [int(d) for d in b.shape("weight")[2:]]
    strides = [int(s) for s in b.val("strides", [1] * len(kernel))]
    dil = [int(d) for d in b.val("dilations", [1] * len(kernel))]
    ins = [b.t("x"), b.t("weight")] + ([b.t("bias")] if b.has("bias") else [])
    return ins, kernel, strides, dil


@mil_op("conv")
def _conv(b: Builder) -> None:
    ins, kernel, strides, dil = _conv_params(b)
    b.node("Conv", ins, b.out(), kernel_shape=kernel, strides=strides, dilations=dil,
           pads=_pads(b, kernel, strides, dil), group=int(b.val("groups", 1)))


@mil_op("conv_transpose")
def _conv_transpose(b: Builder) -> None:
    ins, kernel, strides, dil = _conv_params(b)
    nd = len(kernel)
    kind = str(b.val("pad_type", "valid"))
    attrs: dict[str, Any] = dict(kernel_shape=kernel, strides=strides, dilations=dil, group=int(b.val("groups", 1)))
    out_shape = tuple(b.op.outputs[0].shape)
    if kind in ("valid", "custom"):
        p = [int(v) for v in b.val("pad", [0] * (2 * nd))] if kind == "custom" else [0] * (2 * nd)
        attrs["pads"] = p[0::2] + p[1::2]
        if out_shape and all(isinstance(d, (int, np.integer)) for d in out_shape):
            # MIL may ask for a larger output (output_shape); ONNX gets it as output_padding.
            x = b.shape("x")[-nd:]
            natural = [(int(x[i]) - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - attrs["pads"][i]
                       - attrs["pads"][i + nd] for i in range(nd)]
            extra = [int(out_shape[-nd + i]) - natural[i] for i in range(nd)]
            if any(extra):
                attrs["output_padding"] = extra
    else:
        raise ModelError(f"MIL conv_transpose ({b.op.name!r}): pad_type {kind} is not supported (valid, custom are)")
    b.node("ConvTranspose", ins, b.out(), **attrs)


def _pool(b: Builder, onnx_op: str, **extra) -> None:
    kernel = [int(k) for k in b.val("kernel_sizes")]
    nd = len(kernel)
    strides = [int(s) for s in b.val("strides", [1] * nd)]
    b.node(onnx_op, [b.t("x")], b.out(), kernel_shape=kernel, strides=strides,
           pads=_pads(b, kernel, strides, [1] * nd), ceil_mode=int(bool(b.val("ceil_mode", False))), **extra)


@mil_op("max_pool")
def _max_pool(b: Builder) -> None:
    _pool(b, "MaxPool")


@mil_op("avg_pool")
def _avg_pool(b: Builder) -> None:
    _pool(b, "AveragePool", count_include_pad=int(not b.val("exclude_padding_from_average", False)))


# -- normalization ----------------------------------------------------------------------------
def _ones_or(b: Builder, key: str, shape: tuple, fill: float) -> str:
    if b.has(key):
        return b.t(key)
    return b.const(np.full(shape, fill), dtype=np_dtype(b.op.x.dtype), hint=key)


@mil_op("batch_norm")
def _batch_norm(b: Builder) -> None:
    c = (int(b.shape("mean")[0]),)
    b.node("BatchNormalization", [b.t("x"), _ones_or(b, "gamma", c, 1.0), _ones_or(b, "beta", c, 0.0),
                                  b.t("mean"), b.t("variance")], b.out(), epsilon=float(b.val("epsilon", 1e-5)))


@mil_op("instance_norm")
def _instance_norm(b: Builder) -> None:
    c = (int(b.shape("x")[1]),)
    b.node("InstanceNormalization", [b.t("x"), _ones_or(b, "gamma", c, 1.0), _ones_or(b, "beta", c, 0.0)],
           b.out(), epsilon=float(b.val("epsilon", 1e-5)))


@mil_op("layer_norm")
def _layer_norm(b: Builder) -> None:
    r = b.rank()
    axes = sorted(int(a) % r for a in b.val("axes", list(range(r))))
    if axes != list(range(axes[0], r)):
        raise ModelError(f"MIL layer_norm ({b.op.name!r}) over axes {axes}: halfsim supports trailing axes only")
    norm_shape = tuple(int(d) for d in b.shape()[axes[0]:])
    b.node("LayerNormalization", [b.t("x"), _ones_or(b, "gamma", norm_shape, 1.0), _ones_or(b, "beta", norm_shape, 0.0)],
           b.out(), axis=axes[0], epsilon=float(b.val("epsilon", 1e-5)))


@mil_op("l2_norm")
def _l2_norm(b: Builder) -> None:  # x / sqrt(sum of squares over the last 3 axes + epsilon)
    r = b.rank()
    ss = b.node("ReduceSumSquare", [b.t("x"), b.i64(list(range(r - 3, r)))], keepdims=1)
    den = b.node("Sqrt", [b.node("Add", [ss, _scalar(b, b.val("epsilon", 1e-6))])])
    b.node("Div", [b.t("x"), den], b.out())


# -- reductions -------------------------------------------------------------------------------
_REDUCE = {"reduce_sum": "ReduceSum", "reduce_mean": "ReduceMean", "reduce_max": "ReduceMax",
           "reduce_min": "ReduceMin", "reduce_prod": "ReduceProd", "reduce_l1_norm": "ReduceL1",
           "reduce_l2_norm": "ReduceL2", "reduce_log_sum": "ReduceLogSum",
           "reduce_log_sum_exp": "ReduceLogSumExp", "reduce_sum_square": "ReduceSumSquare"}


def _reduce(b: Builder) -> None:
    axes = b.val("axes")
    ins = [b.t("x")] + ([b.i64(axes)] if axes is not None else [])
    b.node(_REDUCE[b.op.op_type], ins, b.out(), keepdims=int(bool(b.val("keep_dims", False))))


for _n in _REDUCE:
    OPS[_n] = _reduce


@mil_op("reduce_argmax", "reduce_argmin")
def _reduce_arg(b: Builder) -> None:
    kind = "ArgMax" if b.op.op_type == "reduce_argmax" else "ArgMin"
    idx = b.node(kind, [b.t("x")], axis=int(b.val("axis", -1)), keepdims=int(bool(b.val("keep_dims", False))))
    b.node("Cast", [idx], b.out(), to=_onnx_dtype(np_dtype(b.op.outputs[0].dtype)))


# -- shapes and indexing ----------------------------------------------------------------------
def _int_tensor(b: Builder, key: str) -> str:
    """An integer parameter (shape, begin...) as an int64 ONNX tensor, constant or computed."""
    v = getattr(b.op, key)
    if v.val is not None:
        return b.i64(v.val, hint=key)
    return b.node("Cast", [b.t(v)], to=TensorProto.INT64)


@mil_op("reshape")
def _reshape(b: Builder) -> None:
    b.node("Reshape", [b.t("x"), _int_tensor(b, "shape")], b.out())


@mil_op("transpose")
def _transpose(b: Builder) -> None:
    r = b.rank()  # MIL allows negative axes in perm; ONNX does not
    b.node("Transpose", [b.t("x")], b.out(), perm=[int(p) % r for p in b.val("perm")])


@mil_op("expand_dims")
def _expand_dims(b: Builder) -> None:
    b.node("Unsqueeze", [b.t("x"), b.i64(b.val("axes"))], b.out())


@mil_op("squeeze")
def _squeeze(b: Builder) -> None:
    axes = b.val("axes")
    b.node("Squeeze", [b.t("x")] + ([b.i64(axes)] if axes is not None else []), b.out())


@mil_op("flatten2d")
def _flatten2d(b: Builder) -> None:
    b.node("Flatten", [b.t("x")], b.out(), axis=int(b.val("axis", 1)))


@mil_op("shape")
def _shape(b: Builder) -> None:
    b.node("Cast", [b.node("Shape", [b.t("x")])], b.out(), to=_onnx_dtype(np_dtype(b.op.outputs[0].dtype)))


@mil_op("concat")
def _concat(b: Builder) -> None:
    if b.val("interleave", False):
        raise ModelError(f"MIL concat ({b.op.name!r}) with interleave=True is not supported")
    b.node("Concat", [b.t(v) for v in b.op.values], b.out(), axis=int(b.val("axis")))


@mil_op("stack")
def _stack(b: Builder) -> None:
    axis = int(b.val("axis"))
    parts = [b.node("Unsqueeze", [b.t(v), b.i64([axis])]) for v in b.op.values]
    b.node("Concat", parts, b.out(), axis=axis)


@mil_op("split")
def _split(b: Builder) -> None:
    axis = int(b.val("axis"))
    outs = [o.name for o in b.op.outputs]
    sizes = b.val("split_sizes")
    ins = [b.t("x")] + ([b.i64(sizes)] if sizes is not None else [])
    attrs = {} if sizes is not None else {"num_outputs": len(outs)}
    b.node("Split", ins, outs, axis=axis, **attrs)


@mil_op("tile")
def _tile(b: Builder) -> None:
    b.node("Tile", [b.t("x"), _int_tensor(b, "reps")], b.out())


@mil_op("slice_by_index")
def _slice_by_index(b: Builder) -> None:
    r = b.rank()
    begin = [int(v) for v in b.val("begin")]
    end = [int(v) for v in b.val("end")]
    stride = [int(v) for v in b.val("stride", [1] * r)]
    bmask = list(b.val("begin_mask", [False] * r))
    emask = list(b.val("end_mask", [False] * r))
    smask = list(b.val("squeeze_mask", [False] * r))
    starts, ends, steps = [], [], []
    for i in range(r):
        s, e, st = begin[i], end[i], stride[i]
        if smask[i]:  # a pure index: one element at begin
            e, st = (_I64_MAX if s == -1 else s + 1), 1
        else:
            if bmask[i]:
                s = 0 if st > 0 else _I64_MAX
            if emask[i]:
                e = _I64_MAX if st > 0 else _I64_MIN
        starts.append(s), ends.append(e), steps.append(st)
    squeeze = [i for i in range(r) if smask[i]]
    y = b.node("Slice", [b.t("x"), b.i64(starts), b.i64(ends), b.i64(list(range(r))), b.i64(steps)],
               None if squeeze else b.out())
    if squeeze:
        b.node("Squeeze", [y, b.i64(squeeze)], b.out())


@mil_op("slice_by_size")
def _slice_by_size(b: Builder) -> None:
    begin = [int(v) for v in b.val("begin")]
    size = [int(v) for v in b.val("size")]
    ends = [_I64_MAX if n == -1 else s + n for s, n in zip(begin, size)]
    b.node("Slice", [b.t("x"), b.i64(begin), b.i64(ends), b.i64(list(range(len(begin))))], b.out())


@mil_op("gather")
def _gather(b: Builder) -> None:
    if int(b.val("batch_dims", 0)) != 0:
        raise ModelError(f"MIL gather ({b.op.name!r}) with batch_dims != 0 is not supported")
    b.node("Gather", [b.t("x"), b.t("indices")], b.out(), axis=int(b.val("axis", 0)))


@mil_op("gather_along_axis")
def _gather_along_axis(b: Builder) -> None:
    b.node("GatherElements", [b.t("x"), b.t("indices")], b.out(), axis=int(b.val("axis", 0)))


@mil_op("gather_nd")
def _gather_nd(b: Builder) -> None:
    idx = b.node("Cast", [b.t("indices")], to=TensorProto.INT64)
    b.node("GatherND", [b.t("x"), idx], b.out(), batch_dims=int(b.val("batch_dims", 0)))


@mil_op("pad")
def _pad(b: Builder) -> None:
    r = b.rank()
    p = [int(v) for v in b.val("pad")]
    n = len(p) // 2  # MIL pads the last n axes: [b0, e0, b1, e1, ...]
    begins = [0] * (r - n) + p[0::2]
    ends = [0] * (r - n) + p[1::2]
    mode = str(b.val("mode", "constant"))
    onnx_mode = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}.get(mode)
    if onnx_mode is None:
        raise ModelError(f"MIL pad ({b.op.name!r}) mode {mode} is not supported")
    ins = [b.t("x"), b.i64(begins + ends)]
    if mode == "constant":
        ins.append(_scalar(b, float(b.val("constant_val", 0.0))))
    b.node("Pad", ins, b.out(), mode=onnx_mode)


def _resize(b: Builder, mode: str, coord: str, **extra) -> None:
    out = b.op.outputs[0].shape
    if not all(isinstance(d, (int, np.integer)) for d in out):
        raise ModelError(f"MIL {b.op.op_type} ({b.op.name!r}) needs static shapes")
    # Output sizes (not scales) so the sampling grid spacing is in/out, as MIL defines it.
    b.node("Resize", [b.t("x"), "", "", b.i64(out)], b.out(), mode=mode, coordinate_transformation_mode=coord, **extra)


@mil_op("upsample_nearest_neighbor", "resize_nearest_neighbor")
def _upsample_nearest(b: Builder) -> None:
    if b.op.op_type == "upsample_nearest_neighbor":  # source pixel floor(out / scale): ONNX scales
        scales = [1.0] * (b.rank() - 2) + [float(b.val("scale_factor_height", 1)), float(b.val("scale_factor_width", 1))]
        b.node("Resize", [b.t("x"), "", b.const(scales, np.float32, "scales")], b.out(), mode="nearest",
               coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        return
    _resize(b, "nearest", "asymmetric", nearest_mode="floor")


@mil_op("upsample_bilinear", "resize_bilinear")
def _upsample_bilinear(b: Builder) -> None:
    if b.op.op_type == "resize_bilinear":
        mode = str(b.val("sampling_mode", "DEFAULT")).upper()
        # DEFAULT and OFFSET_CORNERS sample grids no ONNX coordinate mode reproduces.
        coord = {"ALIGN_CORNERS": "align_corners", "STRICT_ALIGN_CORNERS": "align_corners",
                 "UNALIGN_CORNERS": "half_pixel"}.get(mode)
        if coord is None:
            raise ModelError(f"MIL resize_bilinear ({b.op.name!r}) sampling_mode {mode} is not supported")
    else:
        align = bool(b.val("align_corners", True))
        half = bool(b.val("half_pixel_centers", not align))
        coord = "align_corners" if align else ("half_pixel" if half else "asymmetric")
    _resize(b, "linear", coord)


@mil_op("topk")
def _topk(b: Builder) -> None:
    tmp = f"{b.op.name}/indices_i64"
    b.node("TopK", [b.t("x"), b.i64([int(b.val("k", 1))])], [b.out(0), tmp], axis=int(b.val("axis", -1)),
           largest=int(not b.val("ascending", False)), sorted=int(bool(b.val("sort", True))))
    if len(b.op.outputs) > 1:  # iOS16 return_indices=False leaves the indices out
        b.node("Cast", [tmp], b.out(1), to=_onnx_dtype(np_dtype(b.op.outputs[1].dtype)))


@mil_op("cumsum")
def _cumsum(b: Builder) -> None:
    b.node("CumSum", [b.t("x"), b.i64(int(b.val("axis", 0)))], b.out(),
           exclusive=int(bool(b.val("exclusive", False))), reverse=int(bool(b.val("reverse", False))))


# -- recurrent --------------------------------------------------------------------------------
_ACT = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu"}
_IFOZ_TO_IOFC = [0, 2, 1, 3]  # MIL gate blocks (input, forget, output, cell) -> ONNX (i, o, f, c)


def _gates(w: np.ndarray, order: list[int]) -> np.ndarray:
    return np.concatenate([np.split(np.asarray(w), len(order))[i] for i in order])


def _acts(b: Builder, keys: tuple[tuple[str, str], ...]) -> list[str]:
    acts = [str(b.val(k, d)) for k, d in keys]
    if any(a not in _ACT for a in acts):
        raise ModelError(f"MIL {b.op.op_type} ({b.op.name!r}) activations {acts}: halfsim supports sigmoid, tanh, relu")
    return [_ACT[a] for a in acts]


def _initial(b: Builder, key: str, dirs: int, hidden: int) -> str:
    """MIL [b, dirs*H] state -> ONNX [dirs, b, H]."""
    return b.node("Transpose", [b.node("Reshape", [b.t(key), b.i64([0, dirs, hidden])])], perm=[1, 0, 2])


def _recurrent_outputs(b: Builder, y: str, states: list[str], direction: str) -> None:
    """ONNX Y [s, dirs, b, H] -> MIL output 0 ([s, b, dirs*H], or [1, b, dirs*H]: the final state);
    each ONNX final state [dirs, b, H] -> the MIL output after it ([b, dirs*H])."""
    for i, src in enumerate(states, start=1):
        b.node("Reshape", [b.node("Transpose", [src], perm=[1, 0, 2]), b.i64([0, -1])], b.out(i))
    if b.val("output_sequence", False):
        if direction == "reverse":  # MIL lists a reverse RNN's states in processing order, ONNX by input time
            y = b.node("Slice", [y, b.i64([-1]), b.i64([_I64_MIN]), b.i64([0]), b.i64([-1])])
        b.node("Reshape", [b.node("Transpose", [y], perm=[0, 2, 1, 3]), b.i64([0, 0, -1])], b.out(0))
    else:  # both directions' last steps: the final state
        b.node("Unsqueeze", [b.out(1), b.i64([0])], b.out(0))


@mil_op("lstm")
def _lstm(b: Builder) -> None:
    direction = str(b.val("direction", "forward"))
    dirs = 2 if direction == "bidirectional" else 1
    acts = _acts(b, (("recurrent_activation", "sigmoid"), ("cell_activation", "tanh"), ("activation", "tanh")))
    dt = np_dtype(b.op.x.dtype)
    hidden = int(b.shape("weight_hh")[1])
    suffixes = ("", "_back") if dirs == 2 else ("",)
    W = np.stack([_gates(b.val("weight_ih" + s), _IFOZ_TO_IOFC) for s in suffixes])
    R = np.stack([_gates(b.val("weight_hh" + s), _IFOZ_TO_IOFC) for s in suffixes])
    # MIL has one summed bias; ONNX adds Wb and Rb, so Rb is zero.
    B = np.stack([np.concatenate([_gates(b.val("bias" + s, np.zeros(4 * hidden)), _IFOZ_TO_IOFC),
                                  np.zeros(4 * hidden)]) for s in suffixes])
    ins = [b.t("x"), b.const(W, dt, "W"), b.const(R, dt, "R"), b.const(B, dt, "B"), "",
           _initial(b, "initial_h", dirs, hidden), _initial(b, "initial_c", dirs, hidden)]
    if b.has("peephole"):  # MIL (i, f, o) -> ONNX (i, o, f)
        ins.append(b.const(np.stack([_gates(b.val("peephole" + s, np.zeros(3 * hidden)), [0, 2, 1])
                                     for s in suffixes]), dt, "P"))
    if b.val("clip") is not None:  # MIL clips the cell state; ONNX's clip bounds gate inputs
        raise ModelError(f"MIL lstm ({b.op.name!r}) with clip is not supported")
    y, yh, yc = (f"{b.op.name}/{k}" for k in ("Y", "Y_h", "Y_c"))
    b.node("LSTM", ins, [y, yh, yc], hidden_size=hidden, direction=direction, activations=acts * dirs)
    _recurrent_outputs(b, y, [yh, yc], direction)


@mil_op("gru")
def _gru(b: Builder) -> None:
    # MIL gates (reset, output/new, update) -> ONNX (z, r, h). The reset gate scales h before
    # the recurrent product (ONNX linear_before_reset=0); both biases sit outside it.
    if b.val("reset_after", False):
        raise ModelError(f"MIL gru ({b.op.name!r}) with reset_after=True is not supported")
    direction = str(b.val("direction", "forward"))
    acts = _acts(b, (("recurrent_activation", "sigmoid"), ("activation", "tanh")))
    dt = np_dtype(b.op.x.dtype)
    hidden = int(b.shape("weight_hh")[1])
    order = [2, 0, 1]
    bias = _gates(b.val("bias", np.zeros(3 * hidden)) + b.val("input_bias", np.zeros(3 * hidden)), order)
    ins = [b.t("x"), b.const(_gates(b.val("weight_ih"), order)[None], dt, "W"),
           b.const(_gates(b.val("weight_hh"), order)[None], dt, "R"),
           b.const(np.concatenate([bias, np.zeros(3 * hidden)])[None], dt, "B"), "", _initial(b, "initial_h", 1, hidden)]
    y, yh = f"{b.op.name}/Y", f"{b.op.name}/Y_h"
    b.node("GRU", ins, [y, yh], hidden_size=hidden, direction=direction, activations=acts, linear_before_reset=0)
    _recurrent_outputs(b, y, [yh], direction)


@mil_op("rnn")
def _rnn(b: Builder) -> None:
    direction = str(b.val("direction", "forward"))
    dt = np_dtype(b.op.x.dtype)
    hidden = int(b.shape("weight_hh")[1])
    bias = np.concatenate([np.asarray(b.val("bias", np.zeros(hidden))), np.zeros(hidden)])
    ins = [b.t("x"), b.const(np.asarray(b.val("weight_ih"))[None], dt, "W"),
           b.const(np.asarray(b.val("weight_hh"))[None], dt, "R"), b.const(bias[None], dt, "B"), "",
           _initial(b, "initial_h", 1, hidden)]
    y, yh = f"{b.op.name}/Y", f"{b.op.name}/Y_h"
    b.node("RNN", ins, [y, yh], hidden_size=hidden, direction=direction,
           activations=_acts(b, (("activation", "tanh"),)))
    _recurrent_outputs(b, y, [yh], direction)


# -- the program ------------------------------------------------------------------------------
def _value_info(var) -> onnx.ValueInfoProto:
    shape = [int(d) if isinstance(d, (int, np.integer)) else str(d) for d in var.shape]
    return helper.make_tensor_value_info(var.name, _onnx_dtype(np_dtype(var.dtype)), shape)


def _opset_name(func) -> str:
    v = getattr(func, "opset_version", None)
    return getattr(v, "name", None) or "unknown opset"


def unsupported_ops(program, function: str = "main") -> list[tuple[str, str]]:
    """(op type, op name) of every op in the function that halfsim cannot translate, in order."""
    out = []

    def walk(ops):
        for op in ops:
            if op.op_type != "const" and op.op_type not in OPS and not op.op_type.startswith("constexpr_"):
                out.append((op.op_type, op.name))
            for block in op.blocks:
                walk(block.operations)
    walk(program.functions[function].operations)
    return out


def _materialize(b: Builder, op) -> None:
    """A constexpr_* op (palettized, quantized or sparse weights): decompressed once at load by
    coremltools' own materialization, then an ordinary initializer in the declared dtype."""
    vals = op.materialized_val_inference()
    vals = vals if isinstance(vals, (list, tuple)) else [vals]
    for var, v in zip(op.outputs, vals):
        a = np.asarray(v, dtype=np_dtype(var.dtype))
        b.materialized[var.name] = a
        b.inits[var.name] = numpy_helper.from_array(a, var.name)


def translate_ops(b: Builder, operations) -> None:
    """Append the ONNX nodes of MIL ops (a function's or a nested block's) to `b.nodes`."""
    for op in operations:
        if op.op_type == "const":
            continue  # constants become initializers where an op reads them
        b.op = op
        try:
            if op.op_type.startswith("constexpr_"):
                _materialize(b, op)
                continue
            OPS[op.op_type](b)
        except ModelError:
            raise
        except Exception as e:
            msg = " ".join(str(e).split())[:200]
            raise ModelError(f"cannot translate MIL op {op.op_type} ({op.name!r}): {type(e).__name__}: {msg}") from None
        if not b.rename:
            for o in op.outputs:
                b.infos[o.name] = _value_info(o)


def _block_vars(block) -> list[str]:
    """Names of every var a block's ops write, nested blocks included."""
    out = []
    for op in block.operations:
        out += [o.name for o in op.outputs]
        for sub in op.blocks:
            out += _block_vars(sub)
    return out


def _inline(b: Builder, block, inputs: list[str], tag: str) -> list[str]:
    """Translate `block` once more with its inputs bound to `inputs` and every var it writes
    renamed `<var>/<tag>`; the names of its outputs."""
    saved, op = dict(b.rename), b.op
    b.rename.update({v.name: t for v, t in zip(block.inputs, inputs)})
    b.rename.update({n: f"{n}/{tag}" for n in _block_vars(block)})
    translate_ops(b, block.operations)
    outs = [b.t(v) for v in block.outputs]
    b.rename, b.op = saved, op
    return outs


def _scalar_bool(b: Builder, name: str) -> str:
    return b.node("Reshape", [name, b.i64([])])


@mil_op("while_loop")
def _while_loop(b: Builder) -> None:
    # ONNX Loop tests its condition before each iteration: the MIL cond block runs once on the
    # initial vars outside the loop and again on each iteration's new vars inside the body.
    op = b.op
    cond_block, body_block = op.blocks
    init = [b.t(v) for v in op.loop_vars]
    first = _scalar_bool(b, _inline(b, cond_block, init, "first")[0])
    it, c_in = f"{op.name}/iter", f"{op.name}/cond_in"
    carried = [b.rename.get(v.name, v.name) for v in body_block.inputs]

    def body() -> tuple[list[str], list]:
        new = [b.t(v) for v in body_block.outputs]
        c_out = _scalar_bool(b, _inline(b, cond_block, new, "next")[0])
        return [c_out] + new, [None] + list(body_block.outputs)

    inputs = [helper.make_tensor_value_info(it, TensorProto.INT64, []),
              helper.make_tensor_value_info(c_in, TensorProto.BOOL, [])]
    inputs += [helper.make_tensor_value_info(n, _onnx_dtype(np_dtype(v.dtype)), None)
               for n, v in zip(carried, body_block.inputs)]
    graph = _subgraph(b, body_block, f"{op.name}/body", inputs, body)
    b.node("Loop", ["", first] + init, [b.out(i) for i in range(len(op.outputs))], body=graph)


def _subgraph(b: Builder, block, name: str, inputs: list, finish: Callable[[], tuple[list[str], list]]):
    """An ONNX subgraph of a MIL block: its ops, then `finish()` -> (output names, their MIL vars,
    None for a bool scalar). Outer tensors and initializers are read from the enclosing scope."""
    outer_nodes, outer_infos, op = b.nodes, b.infos, b.op
    b.nodes, b.infos = [], {}
    translate_ops(b, block.operations)
    b.op = op
    names, vars_ = finish()
    outs = [b.node("Identity", [n]) for n in names]  # subgraph outputs get names of their own
    nodes, infos = b.nodes, b.infos
    b.nodes, b.infos = outer_nodes, outer_infos
    out_vi = [helper.make_tensor_value_info(n, TensorProto.BOOL if v is None else _onnx_dtype(np_dtype(v.dtype)),
                                            [] if v is None else None) for n, v in zip(outs, vars_)]
    return helper.make_graph(nodes, name, inputs, out_vi, value_info=list(infos.values()))


@mil_op("cond")
def _cond(b: Builder) -> None:
    op = b.op
    branches = {}
    for key, block in zip(("then_branch", "else_branch"), op.blocks):
        branches[key] = _subgraph(b, block, f"{op.name}/{key}", [],
                                  lambda block=block: ([b.t(v) for v in block.outputs], list(block.outputs)))
    b.node("If", [_scalar_bool(b, b.t("pred"))], [b.out(i) for i in range(len(op.outputs))], **branches)


_SCATTER = {"update": "none", "add": "add", "mul": "mul", "max": "max", "min": "min"}


@mil_op("scatter")
def _scatter(b: Builder) -> None:  # slices of data along axis replaced (or combined) by updates
    mode = str(b.val("mode", "add"))
    if mode not in _SCATTER:
        raise ModelError(f"MIL scatter ({b.op.name!r}) mode {mode} is not supported")
    r = b.rank("data")
    axis = int(b.val("axis", 0)) % r
    perm = [axis] + [i for i in range(r) if i != axis]
    back = [perm.index(i) for i in range(r)]
    data, upd = b.t("data"), b.t("updates")
    if axis:
        data = b.node("Transpose", [data], perm=perm)
        upd = b.node("Transpose", [upd], perm=[axis] + [i for i in range(b.rank("updates")) if i != axis])
    idx = b.node("Unsqueeze", [b.node("Cast", [b.t("indices")], to=TensorProto.INT64), b.i64([-1])])
    y = b.node("ScatterND", [data, idx, upd], None if axis else b.out(), reduction=_SCATTER[mode])
    if axis:
        b.node("Transpose", [y], b.out(), perm=back)


def to_onnx(program, function: str = "main", source: str = "<memory>") -> onnx.ModelProto:
    """The ONNX model equivalent to a MIL Program's function, in the program's own dtypes."""
    if function not in program.functions:
        raise ModelError(f"ML program has no function {function!r} (has {', '.join(program.functions)})")
    func = program.functions[function]
    opset = _opset_name(func)
    bad = unsupported_ops(program, function)
    if bad:
        kinds = sorted({t for t, _ in bad})
        raise ModelError(f"unsupported MIL op {bad[0][0]} (op {bad[0][1]!r}) in {source} ({opset})"
                         + (f"; also unsupported: {', '.join(k for k in kinds if k != bad[0][0])}" if len(kinds) > 1 else ""))
    b = Builder()
    translate_ops(b, func.operations)
    inputs = [_value_info(v) for v in func.inputs.values()]
    outputs = []
    for v in func.outputs:
        if getattr(v.op, "op_type", None) == "const":  # folded by coremltools (a static shape...)
            b.op = v.op
            b.node("Identity", [b.const(np.asarray(v.val, dtype=np_dtype(v.dtype)), hint="value")], v.name)
        outputs.append(_value_info(v))
    out_names = {o.name for o in outputs}
    graph = helper.make_graph(b.nodes, function, inputs, outputs, initializer=list(b.inits.values()),
                              value_info=[vi for k, vi in b.infos.items() if k not in out_names])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="halfsim.mil", doc_string=f"translated from the ML program {source} ({opset})")
    model.ir_version = 9
    return model
