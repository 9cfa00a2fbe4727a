"""Timing shared by the benchmark scripts: runs after warm-up (the first call may compile),
reported as median and minimum in milliseconds. Imported as a sibling module: the scripts run
as `python benchmarks/NAME.py`, which puts this folder on sys.path."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np


def times_ms(fn: Callable[[], object], runs: int, warmup: int = 1,
             clock: Callable[[], float] = time.perf_counter) -> tuple[float, float]:
    """(median, min) of `runs` timed calls of fn after `warmup` untimed ones, in ms."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(runs):
        t = clock()
        fn()
        ts.append(clock() - t)
    return float(np.median(ts)) * 1e3, float(np.min(ts)) * 1e3


def median_ms(fn: Callable[[], object], runs: int, warmup: int = 1) -> float:
    return times_ms(fn, runs, warmup)[0]
