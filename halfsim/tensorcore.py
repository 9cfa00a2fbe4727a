"""Bit-accurate NVIDIA tensor-core accumulation (the tc-* presets).

A tensor core computes D = C + sum of K exact products in one block: the products and C are
aligned to the largest exponent among them (a product's exponent is ea+eb), bits beyond 23 +
`extra_bits` fraction bits are truncated, the aligned terms are added exactly and the sum is
normalized once, rounded toward zero to fp32 or to nearest-even to fp16. Long dot products chain
blocks, each block's result being the next block's C. The parameters of each GPU come from
Fasi et al. (2021) and Khattak & Mikaitis ("Accurate Models of NVIDIA Tensor Cores"); the V100
and A100 ones are checked bit for bit against the GPU measurements in tests/data/tensorcore.

Not measured here, modelled by choice: zero products take no part in the alignment; a
subnormal input or fp16 C aligns at its format's minimum exponent; an fp32 result that overflows
toward zero stops at the largest finite value (IEEE round-toward-zero); an exactly zero sum is +0,
and a nonzero one that rounds to zero keeps its sign (IEEE).
The H100 fp8 model (K=32, 13 fraction bits: extra_bits=-10) follows the paper, not our data.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence, Union

import numpy as np

from . import formats as _formats
from .errors import HalfsimError

__all__ = ["TensorCoreModel", "MODELS", "get_model", "model_names", "block_fma", "gemm"]

_ROUNDINGS = ("toward-zero", "nearest-even")
_OUT_FORMATS = ("fp32", "fp16")
_IN_FORMATS = ("fp16", "bf16", "tf32", "fp8-e4m3", "fp8-e5m2")


@dataclass(frozen=True)
class TensorCoreModel:
    """One tensor-core configuration.

    k: products per block; extra_bits: alignment bits kept beyond fp32's 23 fraction bits
    (negative keeps fewer: the H100 fp8 accumulator has 13); block_rounding: "toward-zero" or
    "nearest-even", applied when the block sum is normalized to out_format ("fp32" or "fp16");
    in_formats: input formats the unit accepts, the first being the default."""
    name: str
    k: int
    extra_bits: int
    block_rounding: str
    out_format: str
    in_formats: tuple[str, ...]

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or not 1 <= self.k <= 64:
            raise HalfsimError(f"tensor-core model {self.name!r}: k must be an integer in 1..64, not {self.k!r}")
        if isinstance(self.extra_bits, bool) or not isinstance(self.extra_bits, (int, np.integer)) \
                or not -20 <= self.extra_bits <= 4:
            # the window w = 23 + extra_bits must keep terms below 2^29 (see kernels.tensorcore)
            raise HalfsimError(f"tensor-core model {self.name!r}: extra_bits must be in -20..4, "
                               f"not {self.extra_bits!r}")
        if self.block_rounding not in _ROUNDINGS:
            raise HalfsimError(f"tensor-core model {self.name!r}: block_rounding must be one of "
                               f"{', '.join(_ROUNDINGS)}, not {self.block_rounding!r}")
        if self.out_format not in _OUT_FORMATS:
            raise HalfsimError(f"tensor-core model {self.name!r}: out_format must be fp32 or fp16, "
                               f"not {self.out_format!r}")
        if not self.in_formats or any(f not in _IN_FORMATS for f in self.in_formats):
            raise HalfsimError(f"tensor-core model {self.name!r}: in_formats must be taken from "
                               f"{', '.join(_IN_FORMATS)}, not {self.in_formats!r}")

    def with_output(self, out_format: str) -> "TensorCoreModel":
        """The same unit writing out_format, with the rounding the GPUs use for it: toward zero
        for fp32, nearest-even for fp16 (measured on V100 and A100)."""
        if out_format == self.out_format:
            return self
        if out_format not in _OUT_FORMATS:
            raise HalfsimError(f"tensor-core output must be fp32 or fp16, not {out_format!r}")
        rounding = "toward-zero" if out_format == "fp32" else "nearest-even"
        return replace(self, name=f"{self.name}-out{out_format[2:]}", out_format=out_format,
                       block_rounding=rounding)


def _m(name: str, k: int, extra: int, ins: tuple[str, ...]) -> TensorCoreModel:
    return TensorCoreModel(name, k, extra, "toward-zero", "fp32", ins)


MODELS: dict[str, TensorCoreModel] = {m.name: m for m in (
    _m("tc-v100-fp16", 4, 0, ("fp16",)),
    _m("tc-a100-fp16", 8, 1, ("fp16",)),
    _m("tc-a100-bf16", 8, 1, ("bf16",)),
    _m("tc-a100-tf32", 4, 1, ("tf32",)),
    _m("tc-h100-fp16", 16, 2, ("fp16",)),
    _m("tc-h100-bf16", 16, 2, ("bf16",)),
    _m("tc-h100-tf32", 8, 2, ("tf32",)),
    # fp8: two 16-products halves joined into one 32-product block, 13 fraction bits kept
    _m("tc-h100-fp8", 32, -10, ("fp8-e4m3", "fp8-e5m2")),
    _m("tc-h100-fp8-e4m3", 32, -10, ("fp8-e4m3",)),
    _m("tc-h100-fp8-e5m2", 32, -10, ("fp8-e5m2",)),
)}


def model_names() -> list[str]:
    return list(MODELS)


def get_model(name: Union[str, TensorCoreModel]) -> TensorCoreModel:
    """The model for a name such as "tc-a100-fp16" (a TensorCoreModel is returned as is)."""
    if isinstance(name, TensorCoreModel):
        return name
    if not isinstance(name, str):
        raise HalfsimError(f"tensor-core model must be a name or a TensorCoreModel, not {type(name).__name__}")
    key = name.strip().lower()
    if key in MODELS:
        return MODELS[key]
    raise HalfsimError(f"unknown tensor-core model {name!r} (known: {', '.join(MODELS)})")


def _in_pair(model: TensorCoreModel, in_format: Union[None, str, Sequence[str]]) -> tuple[str, str]:
    if in_format is None:
        pair = (model.in_formats[0],) * 2
    elif isinstance(in_format, str):
        pair = (in_format,) * 2
    elif isinstance(in_format, (tuple, list)) and len(in_format) == 2 and all(isinstance(f, str) for f in in_format):
        pair = tuple(in_format)
    else:
        raise HalfsimError(f"in_format must be a format name or a pair (format of a, format of b), not {in_format!r}")
    pair = tuple(_formats.format(f).name for f in pair)
    for f in pair:
        if f not in model.in_formats:
            raise HalfsimError(f"{model.name} takes {', '.join(model.in_formats)} inputs, not {f}")
    return pair  # type: ignore[return-value]


def _to_format(x: np.ndarray, fmt: str) -> np.ndarray:
    # tf32 units read the top 19 bits of an fp32 operand: truncation, not rounding
    if fmt == "tf32" and x.dtype == np.float32:  # a mask on the bits (NaNs stay NaN)
        t = (x.view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)
        return np.where(np.isnan(x), x, t)
    rounding = "toward-zero" if fmt == "tf32" else "nearest-even"
    return _formats.round(x, fmt, rounding=rounding)


def _float_array(x: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(x)
    except Exception as e:  # ragged lists and the like
        raise HalfsimError(f"{what} is not an array: {e}") from None
    if arr.dtype.kind not in "fiub":
        raise HalfsimError(f"{what} must hold numbers, not {arr.dtype}")
    return arr.astype(np.float64) if arr.dtype.kind in "iub" else arr  # integers: exact in float64


def _kernel_array(x: np.ndarray) -> np.ndarray:
    # C-contiguous, writable float32: one numba signature for all calls (broadcast views are
    # read-only, which numba types apart and would compile again)
    return np.require(x, np.float32, ["C", "W"])


def _params(model: TensorCoreModel, pair: tuple[str, str]) -> tuple:
    from .kernels.tensorcore import FORMATS
    ma, emin_a = FORMATS[pair[0]][:2]
    mb, emin_b = FORMATS[pair[1]][:2]
    return (int(model.k), 23 + int(model.extra_bits), ma, emin_a, mb, emin_b,
            model.out_format == "fp16", model.block_rounding == "nearest-even")


def _prep_c(c: Any, shape: tuple[int, ...], model: TensorCoreModel) -> np.ndarray:
    if c is None:
        return np.zeros(shape, np.float32)
    carr = _float_array(c, "c")
    try:
        carr = np.broadcast_to(carr, shape)
    except ValueError:
        raise HalfsimError(f"c of shape {carr.shape} does not broadcast to the result shape {shape}") from None
    # C enters the accumulator, which holds the output format (fp32: exact for float32 input)
    return _kernel_array(_formats.round(carr, model.out_format))


def block_fma(a: Any, b: Any, c: Any = None, model: Union[str, TensorCoreModel] = "tc-a100-fp16", *,
              out: str | None = None, in_format: Union[None, str, Sequence[str]] = None) -> np.ndarray:
    """One tensor-core block D = C + sum_i a_i*b_i, vectorized over leading dims.

    a, b: [..., K] with K <= model.k (shorter blocks are zero-padded), rounded to the input
    format first; c: broadcastable to [...] or None (zero). Returns float32 [...] (holding fp16
    values when the output is fp16). Computed by the int64 reference path."""
    from .kernels.tensorcore import block_fma_batch
    m = get_model(model)
    if out is not None:
        m = m.with_output(out)
    pair = _in_pair(m, in_format)
    a = _float_array(a, "a")
    b = _float_array(b, "b")
    if a.ndim == 0 or b.ndim == 0:
        raise HalfsimError("block_fma: a and b need a last axis of products")
    if a.shape[-1] != b.shape[-1]:
        raise HalfsimError(f"block_fma: a has {a.shape[-1]} products per block, b {b.shape[-1]}")
    if a.shape[-1] > m.k:
        raise HalfsimError(f"block_fma: {a.shape[-1]} products exceed {m.name}'s block of {m.k} (use gemm)")
    try:
        lead = np.broadcast_shapes(a.shape[:-1], b.shape[:-1], () if c is None else np.shape(c))
    except ValueError:
        raise HalfsimError(f"block_fma: shapes a {a.shape}, b {b.shape}, c {np.shape(c)} do not broadcast") from None
    kk = a.shape[-1]
    n = int(np.prod(lead, dtype=np.int64))
    a2 = _kernel_array(np.broadcast_to(_to_format(a, pair[0]), lead + (kk,))).reshape(n, kk)
    b2 = _kernel_array(np.broadcast_to(_to_format(b, pair[1]), lead + (kk,))).reshape(n, kk)
    c1 = _prep_c(c, lead, m).reshape(n)
    return block_fma_batch(a2, b2, c1, *_params(m, pair)).reshape(lead)


def gemm(a: Any, b: Any, model: Union[str, TensorCoreModel], c: Any = None, *, out: str | None = None,
         in_format: Union[None, str, Sequence[str]] = None) -> np.ndarray:
    """Matrix product a @ b (+ c) as the model's tensor cores compute it; numpy matmul shapes.

    a [..., M, K] (or [K]), b [..., K, N] (or [K]) with broadcast batch dims; inputs are rounded
    to the input format (nearest-even; tf32 truncates as the hardware does), K is split into
    blocks of model.k (the last one zero-padded), chained with each block's result as the next
    C. c broadcasts to the result (None: zero) and is first rounded to the output format.
    out: "fp32" or "fp16" overrides the model's output (see TensorCoreModel.with_output).
    Returns float32 of the matmul result shape."""
    from .kernels.tensorcore import _gemm_kernel
    if isinstance(model, np.ndarray):
        raise HalfsimError("gemm(a, b, model, c=None): the third argument is the model; pass c by keyword")
    m = get_model(model)
    if out is not None:
        m = m.with_output(out)
    pair = _in_pair(m, in_format)
    a = _float_array(a, "a")
    b = _float_array(b, "b")
    if a.ndim == 0 or b.ndim == 0:
        raise HalfsimError("gemm: a and b must have at least one dimension (matmul rules)")
    va, vb = a.ndim == 1, b.ndim == 1
    a2 = a[None, :] if va else a
    b2 = b[:, None] if vb else b
    if a2.shape[-1] != b2.shape[-2]:
        raise HalfsimError(f"gemm: inner dimensions differ: a {a.shape} @ b {b.shape}")
    try:
        batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    except ValueError:
        raise HalfsimError(f"gemm: batch dimensions of a {a.shape} and b {b.shape} do not broadcast") from None
    M, K = a2.shape[-2:]
    N = b2.shape[-1]
    res_shape = batch + (M, N)
    shape = batch + ((M,) if not va else ()) + ((N,) if not vb else ())
    nbat = int(np.prod(batch, dtype=np.int64))
    a3 = _kernel_array(np.broadcast_to(_to_format(a2, pair[0]), batch + (M, K))).reshape(nbat, M, K)
    b3 = _kernel_array(np.broadcast_to(_to_format(b2, pair[1]), batch + (K, N))).reshape(nbat, K, N)
    if c is None:
        c3 = np.zeros((nbat, M, N), np.float32)
    else:
        carr = _float_array(c, "c")
        try:
            carr = np.broadcast_to(carr, shape).reshape(res_shape)
        except ValueError:
            raise HalfsimError(f"gemm: c of shape {carr.shape} does not broadcast to the result {shape}") from None
        c3 = _prep_c(carr, res_shape, m).reshape(nbat, M, N)
    d = _gemm_kernel(a3, b3, c3, *_params(m, pair))
    return d.reshape(shape)
