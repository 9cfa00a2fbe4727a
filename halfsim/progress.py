"""Progress bars for long work: tqdm on a terminal, silent otherwise (or with HALFSIM_QUIET=1)."""
from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

T = TypeVar("T")


def enabled() -> bool:
    return sys.stderr.isatty() and not os.environ.get("HALFSIM_QUIET")


def progress(it: Iterable[T], desc: str = "", total: int | None = None) -> Iterable[T]:
    if not enabled():
        return it
    from tqdm import tqdm
    return tqdm(it, desc=desc, total=total, leave=False, file=sys.stderr)
