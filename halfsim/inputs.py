"""Feeds for a model: read from .npz, or generated from a seed with --shape overrides."""
from __future__ import annotations

import os
import sys
import zipfile

import numpy as np

from .errors import InputError


def parse_shapes(specs: list[str] | None) -> dict[str, tuple[int, ...]]:
    """['x=1,3,224,224', ...] -> {'x': (1, 3, 224, 224)}."""
    out: dict[str, tuple[int, ...]] = {}
    for s in specs or ():
        name, sep, dims = s.partition("=")
        if not sep or not name:
            raise InputError(f"--shape {s!r}: expected NAME=d0,d1,...")
        try:
            out[name] = tuple(int(d) for d in dims.split(",")) if dims.strip() else ()
        except ValueError:
            raise InputError(f"--shape {s!r}: dimensions must be integers") from None
        if any(d < 0 for d in out[name]):
            raise InputError(f"--shape {s!r}: dimensions must be non-negative")
    return out


def load_npz(path: str) -> dict[str, np.ndarray]:
    if not os.path.exists(path):
        raise InputError(f"inputs file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise InputError(f"cannot read inputs file {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def random_feeds(model, seed: int = 0, shapes: dict[str, tuple[int, ...]] | None = None,
                 quiet: bool = False) -> dict[str, np.ndarray]:
    """Seeded inputs: floats ~ N(0, 1), integers uniform in [0, 10), bools fair coins.
    Dynamic dimensions come from `shapes` or default to 1 (reported on stderr)."""
    shapes = dict(shapes or {})
    names = {v.name for v in model.inputs}
    unknown = sorted(set(shapes) - names)
    if unknown:
        raise InputError(f"--shape names unknown input {unknown[0]!r}; the model's inputs are {sorted(names)}")
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    defaulted = []
    for vi in model.inputs:
        if vi.name in shapes:
            shape = shapes[vi.name]
        elif vi.shape is None:
            raise InputError(f"input {vi.name!r} has unknown rank; give --shape {vi.name}=d0,d1,...")
        else:
            shape = []
            for i, d in enumerate(vi.shape):
                if isinstance(d, int) and d > 0:
                    shape.append(d)
                else:
                    shape.append(1)
                    defaulted.append(f"{vi.name}[{i}]" + (f"={d}" if d else ""))
            shape = tuple(shape)
        dt = vi.dtype if vi.dtype is not None else np.dtype(np.float32)
        if dt.kind == "f" or dt.name == "bfloat16":
            a = rng.standard_normal(shape).astype(dt)
        elif dt.kind in "iu":
            a = rng.integers(0, 10, size=shape).astype(dt)
        elif dt.kind == "b":
            a = rng.random(shape) < 0.5
        else:
            raise InputError(f"input {vi.name!r} has dtype {dt}: give it in an --inputs .npz file")
        feeds[vi.name] = a
    if defaulted and not quiet:
        print(f"halfsim: dynamic dimensions set to 1 (use --shape to choose): {', '.join(defaulted)}", file=sys.stderr)
    return feeds
