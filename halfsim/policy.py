"""Per-op precision and policies.

An OpPrecision says, for one node: the format its float outputs are stored in (`storage`),
the format elementwise arithmetic is rounded to (`compute`, defaults to storage), the format
of running sums (`accumulate`) and their order, whether composites (Softmax, LayerNorm, Gelu)
are `fused` (computed internally at the accumulate format, rounded once) or decomposed (every
internal step rounded to compute), the format GEMM operands are rounded to before their
products (`operands`, e.g. tf32 or fp8), and an optional tensor-core model for GEMM-shaped ops.

A Policy is an ordered list of rules. Every rule whose matcher selects a node applies, in
order, and sets the fields it names: later rules override earlier ones, so a preset followed by
"keep these nodes in fp32" rules does what it says. Policies load from TOML or JSON and print
back in the same form."""
from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any, Iterable

from .errors import HalfsimError

GEMM_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum", "FusedMatMul", "Attention",
            "MultiHeadAttention", "LSTM", "GRU", "RNN")
# Ops that PyTorch CUDA autocast forces to fp32 (softmax, norms, reductions, exp/log/pow...).
AUTOCAST_FP32_OPS = ("Softmax", "LogSoftmax", "LayerNormalization", "GroupNormalization",
                     "InstanceNormalization", "BatchNormalization", "Exp", "Log", "Pow", "Sqrt",
                     "Reciprocal", "ReduceSum", "ReduceMean", "ReduceProd", "ReduceL1", "ReduceL2",
                     "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "CumSum",
                     "SimplifiedLayerNormalization", "SkipLayerNormalization", "LpNormalization",
                     "MeanVarianceNormalization", "Softplus", "Erf")
AUTOCAST_FP16_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum", "FusedMatMul", "LSTM", "GRU", "RNN")

ORDERS = ("sequential", "pairwise", "blocked")
OVERFLOWS = ("inf", "saturate")
SUBNORMALS = ("keep", "ftz", "daz", "ftz+daz")


@dataclass(frozen=True)
class OpPrecision:
    storage: str = "fp32"            # or "inherit": widest format among the float inputs
    compute: str | None = None       # None: same as storage
    accumulate: str = "fp32"
    order: str = "sequential"
    block: int = 32
    fma: bool = True
    fused: bool = True
    operands: str | None = None      # GEMM operand format (tf32, fp8-e4m3, ...); None: storage
    operand_rounding: str = "nearest-even"
    tensor_core: str | None = None   # a halfsim.tensorcore model name for GEMM-shaped ops
    overflow: str = "inf"            # computed activations: inf or saturate
    subnormals: str = "keep"

    def validate(self) -> "OpPrecision":
        from .formats import format as _fmt
        for f in ("storage", "compute", "accumulate", "operands"):
            v = getattr(self, f)
            if v is None or (f == "storage" and v == "inherit"):
                continue
            _fmt(v)  # raises a ValueError naming the unknown format
        if self.order not in ORDERS:
            raise HalfsimError(f"unknown accumulation order {self.order!r} (choose from {', '.join(ORDERS)})")
        if self.overflow not in OVERFLOWS:
            raise HalfsimError(f"unknown overflow behaviour {self.overflow!r} (choose from {', '.join(OVERFLOWS)})")
        if self.subnormals not in SUBNORMALS:
            raise HalfsimError(f"unknown subnormal behaviour {self.subnormals!r} (choose from {', '.join(SUBNORMALS)})")
        if self.block < 1:
            raise HalfsimError("block must be at least 1")
        if self.tensor_core is not None:
            from .tensorcore import get_model
            get_model(self.tensor_core)
        return self


_PREC_FIELDS = {f.name for f in fields(OpPrecision)}
_NULLABLE = ("compute", "operands", "tensor_core")
_MATCH_KEYS = ("op_type", "name", "regex", "output", "index")


@dataclass
class Rule:
    """Selects nodes (all given matchers must hold) and sets precision fields."""
    set: dict[str, Any]
    op_type: tuple[str, ...] | None = None
    name: str | None = None          # glob on the node name
    regex: str | None = None         # regular expression searched in the node name
    output: str | None = None        # glob on any output tensor name
    index: tuple[int, int] | None = None  # topological index range [lo, hi)
    hits: int = field(default=0, compare=False)

    def matches(self, node) -> bool:
        if self.op_type is not None and node.op_type not in self.op_type:
            return False
        if self.name is not None and not fnmatch.fnmatchcase(node.label, self.name):
            return False
        if self.regex is not None and not re.search(self.regex, node.label):
            return False
        if self.output is not None and not any(fnmatch.fnmatchcase(o, self.output) for o in node.outputs if o):
            return False
        if self.index is not None and not (self.index[0] <= node.index < self.index[1]):
            return False
        return True

    def to_dict(self) -> dict:
        d: dict[str, Any] = {}
        if self.op_type is not None:
            d["op_type"] = list(self.op_type)
        for k in ("name", "regex", "output"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        if self.index is not None:
            d["index"] = list(self.index)
        # None resets a nullable field (e.g. operands when keeping a node in fp32); files spell it "none".
        d.update({k: ("none" if v is None else v) for k, v in self.set.items()})
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "rule") -> "Rule":
        if not isinstance(d, dict):
            raise HalfsimError(f"{where}: a rule must be a table/object")
        unknown = set(d) - set(_MATCH_KEYS) - _PREC_FIELDS
        if unknown:
            raise HalfsimError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        sets = {k: (None if v == "none" and k in _NULLABLE else v) for k, v in d.items() if k in _PREC_FIELDS}
        try:
            replace(OpPrecision(), **sets).validate()
        except TypeError as e:
            raise HalfsimError(f"{where}: {e}") from None
        ot = d.get("op_type")
        if isinstance(ot, str):
            ot = (ot,)
        elif ot is not None:
            ot = tuple(ot)
        idx = d.get("index")
        if idx is not None:
            if not (isinstance(idx, (list, tuple)) and len(idx) == 2 and all(isinstance(i, int) for i in idx)):
                raise HalfsimError(f"{where}: index must be [lo, hi]")
            idx = (int(idx[0]), int(idx[1]))
        rx = d.get("regex")
        if rx is not None:
            try:
                re.compile(rx)
            except re.error as e:
                raise HalfsimError(f"{where}: invalid regex {rx!r}: {e}") from None
        return cls(set=sets, op_type=ot, name=d.get("name"), regex=rx, output=d.get("output"), index=idx)


@dataclass
class Policy:
    name: str = "custom"
    rules: list[Rule] = field(default_factory=list)
    io: str | None = None              # format graph inputs/outputs are stored in; None: they stay fp32
    weights: str | None = None         # format every float constant is stored in (a converted model)
    weights_overflow: str = "saturate"  # constants out of a narrow format's range: saturate or inf
    description: str = ""
    # coremltools' constant handling: ops reading fp32 constants beyond the fp16 range (but below
    # 1e38, which counts as infinity) stay fp32; small constants that would flush to zero become
    # the smallest subnormal.
    coreml_constants: bool = False

    @property
    def io_fp32(self) -> bool:
        return self.io is None

    def copy(self, name: str | None = None) -> "Policy":
        return Policy(name or self.name, list(self.rules), self.io, self.weights, self.weights_overflow,
                      self.description, self.coreml_constants)

    # -- construction ----------------------------------------------------------------
    def add(self, precision: OpPrecision | dict | None = None, **match) -> "Policy":
        """Append a rule: policy.add({"storage": "fp32"}, op_type=["Softmax"])."""
        sets = dataclasses.asdict(precision) if isinstance(precision, OpPrecision) else dict(precision or {})
        d = dict(match)
        d.update(sets)
        self.rules.append(Rule.from_dict(d))
        return self

    def keep_fp32(self, nodes: Iterable[str]) -> "Policy":
        """A copy with the named nodes forced to full fp32."""
        p = self.copy(self.name + "+keep")
        for n in nodes:
            p.rules.append(Rule(set=dataclasses.asdict(OpPrecision()), name=_glob_escape(n)))
        return p

    def resolve(self, node) -> OpPrecision:
        sets: dict[str, Any] = {}
        for r in self.rules:
            if r.matches(node):
                r.hits += 1
                sets.update(r.set)
        if not sets:
            return _FP32
        # dataclasses.replace costs more than the matching; the combinations are few.
        key = tuple(sets.items())
        try:
            p = _RESOLVED.get(key)
        except TypeError:  # an unhashable value: nothing to share
            return replace(OpPrecision(), **sets)
        if p is None:
            p = _RESOLVED[key] = replace(OpPrecision(), **sets)
        return p

    def unused_rules(self) -> list[Rule]:
        return [r for r in self.rules if r.hits == 0]

    def cache_key(self) -> str:
        """Text that fixes how this policy resolves every node: per-model caches of
        policy-dependent work key on it. A subclass that resolves by more than its rules
        (bisect's node placements) must add that to the key."""
        return json.dumps(self.to_dict(), sort_keys=True)

    # -- files -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        d: dict[str, Any] = {"name": self.name}
        if self.description:
            d["description"] = self.description
        for k in ("io", "weights"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        d["weights_overflow"] = self.weights_overflow
        if self.coreml_constants:
            d["coreml_constants"] = True
        d["rule"] = [r.to_dict() for r in self.rules]
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "policy") -> "Policy":
        if not isinstance(d, dict):
            raise HalfsimError(f"{source}: top level must be a table/object")
        unknown = set(d) - {"name", "description", "io", "weights", "weights_overflow", "rule", "rules", "base",
                                 "coreml_constants"}
        if unknown:
            raise HalfsimError(f"{source}: unknown key {sorted(unknown)[0]!r}")
        p = (preset(d["base"]) if "base" in d else cls()).copy()
        p.name = str(d.get("name", p.name if "base" in d else "custom"))
        p.description = str(d.get("description", p.description))
        from .formats import format as _fmt
        for k in ("io", "weights"):
            if k in d:
                _fmt(d[k])
                setattr(p, k, d[k])
        wo = d.get("weights_overflow", p.weights_overflow)
        if wo not in OVERFLOWS:
            raise HalfsimError(f"{source}: weights_overflow must be one of {', '.join(OVERFLOWS)}")
        p.weights_overflow = wo
        p.coreml_constants = bool(d.get("coreml_constants", p.coreml_constants))
        rules = d.get("rule", d.get("rules", []))
        if not isinstance(rules, list):
            raise HalfsimError(f"{source}: rules must be a list")
        for i, r in enumerate(rules):
            p.rules.append(Rule.from_dict(r, f"{source}: rule {i + 1}"))
        return p

    @classmethod
    def load(cls, path: str) -> "Policy":
        if not os.path.exists(path):
            raise HalfsimError(f"policy file not found: {path}")
        try:
            text = open(path, encoding="utf-8").read()
        except (OSError, UnicodeDecodeError) as e:
            raise HalfsimError(f"cannot read policy file {path}: {e}") from None
        if path.endswith(".json"):
            try:
                d = json.loads(text)
            except json.JSONDecodeError as e:
                raise HalfsimError(f"invalid policy file {path}: {e}") from None
        else:
            d = _parse_toml(text, path)
        return cls.from_dict(d, path)

    def dumps(self, fmt: str = "toml") -> str:
        d = self.to_dict()
        if fmt == "json":
            return json.dumps(d, indent=2) + "\n"
        return _dump_toml(d)

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.dumps("json" if path.endswith(".json") else "toml"))


_FP32 = OpPrecision()
_RESOLVED: dict[tuple, OpPrecision] = {}


def _glob_escape(s: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in s)


def _parse_toml(text: str, path: str) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore
        except ImportError:
            raise HalfsimError("reading TOML policies needs Python 3.11 or the tomli package") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise HalfsimError(f"invalid policy file {path}: {e}") from None


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if v is None:
        raise ValueError("None has no TOML form")
    raise TypeError(type(v).__name__)


def _dump_toml(d: dict) -> str:
    lines = []
    for k, v in d.items():
        if k != "rule":
            lines.append(f"{k} = {_toml_value(v)}")
    for r in d.get("rule", []):
        lines.append("")
        lines.append("[[rule]]")
        for k, v in r.items():
            if v is not None:
                lines.append(f"{k} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"


# -- presets (names are part of the contract) --------------------------------------------

def _low(fmt: str, acc: str, name: str, desc: str, **extra) -> Policy:
    p = Policy(name, description=desc)
    p.add({"storage": fmt, "accumulate": acc, **extra})
    return p


def _gemm_only(name: str, desc: str, operands: str, rounding: str = "nearest-even", tc: str | None = None,
               storage: str = "fp32") -> Policy:
    p = Policy(name, description=desc)
    p.add({"storage": storage, "operands": operands, "operand_rounding": rounding, "tensor_core": tc},
          op_type=list(GEMM_OPS[:6]))
    return p


def _autocast() -> Policy:
    p = Policy("autocast-fp16", description="PyTorch CUDA autocast: GEMMs in fp16, softmax/norms/reductions/exp/log in fp32, other ops follow their inputs")
    p.add({"storage": "inherit"})
    p.add({"storage": "fp16"}, op_type=list(AUTOCAST_FP16_OPS))
    p.add({"storage": "fp32"}, op_type=list(AUTOCAST_FP32_OPS))
    return p


def _ort_cpu_fp16() -> Policy:
    # ORT's CPU EP wraps fp16 nodes in Cast->fp32->Cast and drops the redundant cast pairs
    # between them: weights and graph IO are fp16, the arithmetic and intermediates are fp32.
    return Policy("ort-cpu-fp16", io="fp16", weights="fp16",
                  description="ORT CPU EP running an fp16-converted model: fp16 weights and IO, fp32 compute")


def _coreml_fp16() -> Policy:
    from .backends.coreml_ops import coreml_fp32_onnx_ops
    p = Policy("coreml-fp16", weights_overflow="inf", coreml_constants=True,
               description="coremltools FP16 compute-precision pass (its own skip list), fp16 semantics")
    p.add({"storage": "fp16", "accumulate": "fp32"})
    skip = coreml_fp32_onnx_ops()
    if skip:
        p.add({"storage": "fp32"}, op_type=sorted(skip))
    return p


def _tc(gpu: str, fmt: str) -> Policy:
    name = f"tc-{gpu}-{fmt}"
    if fmt in ("fp16", "bf16"):
        p = _low(fmt, "fp32", name, f"{fmt} with MatMul/Gemm/Conv accumulated as {gpu.upper()} tensor cores do")
        p.add({"tensor_core": name}, op_type=list(GEMM_OPS[:6]))
        return p
    if fmt == "tf32":
        return _gemm_only(name, f"tf32 GEMMs accumulated as {gpu.upper()} tensor cores do", "tf32", "toward-zero", name)
    if fmt.startswith("fp8"):
        operands = "fp8-e5m2" if fmt.endswith("e5m2") else "fp8-e4m3"
        return _gemm_only(name, f"fp8 GEMMs accumulated as {gpu.upper()} tensor cores do", operands,
                          tc=name if not fmt == "fp8" else "tc-h100-fp8-e4m3")
    raise HalfsimError(f"unknown tensor-core preset {name!r}")


_PRESETS = {
    "fp32": lambda: Policy("fp32", description="reference: everything fp32"),
    "fp16": lambda: _low("fp16", "fp32", "fp16", "fp16 storage, fp32 accumulation, fused composites"),
    "fp16-acc16": lambda: _low("fp16", "fp16", "fp16-acc16", "fp16 storage and fp16 accumulation"),
    "bf16": lambda: _low("bf16", "fp32", "bf16", "bf16 storage, fp32 accumulation, fused composites"),
    "bf16-acc32": lambda: _low("bf16", "fp32", "bf16-acc32", "bf16 storage, fp32 accumulation (same as bf16)"),
    "bf16-acc16": lambda: _low("bf16", "bf16", "bf16-acc16", "bf16 storage and bf16 accumulation"),
    "tf32": lambda: _gemm_only("tf32", "MatMul/Gemm/Conv operands truncated to tf32, fp32 accumulation", "tf32", "toward-zero"),
    "fp8-e4m3": lambda: _gemm_only("fp8-e4m3", "fp8 e4m3 GEMM operands, fp32 accumulation", "fp8-e4m3"),
    "fp8-e5m2": lambda: _gemm_only("fp8-e5m2", "fp8 e5m2 GEMM operands, fp32 accumulation", "fp8-e5m2"),
    "ort-cpu-fp16": _ort_cpu_fp16,
    "coreml-fp16": _coreml_fp16,
    "autocast-fp16": _autocast,
}
for _gpu, _fmts in (("v100", ("fp16",)), ("a100", ("fp16", "bf16", "tf32")),
                    ("h100", ("fp16", "bf16", "tf32", "fp8", "fp8-e4m3", "fp8-e5m2"))):
    for _f in _fmts:
        _PRESETS[f"tc-{_gpu}-{_f}"] = (lambda g=_gpu, f=_f: _tc(g, f))
    _PRESETS[f"tc-{_gpu}"] = (lambda g=_gpu: _tc(g, "fp16"))


def preset_names() -> list[str]:
    return list(_PRESETS)


def preset(name: str) -> Policy:
    try:
        factory = _PRESETS[name]
    except KeyError:
        raise HalfsimError(f"unknown precision {name!r} (presets: {', '.join(_PRESETS)})") from None
    return factory()
