"""Each metric on cases small enough to compute by hand."""
import math

import numpy as np
import pytest

from halfsim import metrics
from halfsim.errors import HalfsimError


def test_hand_computed_values():
    a = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    b = np.array([1.0, 2.0, 3.0, 5.0], np.float32)
    assert metrics.max_abs(a, b) == 1.0
    assert metrics.max_rel(a, b) == pytest.approx(1 / 5)
    assert metrics.rel_l2(a, b) == pytest.approx(1 / math.sqrt(1 + 4 + 9 + 25))
    assert metrics.cosine(a, b) == pytest.approx(1 - 34 / (math.sqrt(30) * math.sqrt(39)))
    assert metrics.nonfinite(a, b) == 0


def test_cosine_and_rel_l2_edge_cases():
    z = np.zeros(3, np.float32)
    x = np.array([1.0, 0.0, 0.0], np.float32)
    assert metrics.cosine(z, z) == 0.0 and metrics.rel_l2(z, z) == 0.0
    assert metrics.cosine(-x, x) == pytest.approx(2.0)
    assert metrics.rel_l2(x, z) == math.inf
    assert metrics.max_rel(x, z) > 1e30  # a nonzero value against an exact zero


def test_top1_counts_rows_whose_argmax_moves():
    ref = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], np.float32)
    cand = np.array([[0.2, 0.8], [0.4, 0.6], [0.9, 0.1], [0.7, 0.3]], np.float32)
    assert metrics.top1(cand, ref) == 0.5
    nan_row = cand.copy()
    nan_row[0, 0] = np.nan
    assert metrics.top1(nan_row, ref) == 0.75


def test_max_ulp_in_fp32_and_fp16():
    one = np.float32(1.0)
    nxt = np.nextafter(one, np.float32(2))
    assert metrics.max_ulp(np.array([nxt]), np.array([one])) == 1.0
    f16_next = np.float32(1 + 2 ** -10)
    assert metrics.max_ulp(np.array([f16_next]), np.array([one]), "fp16") == 1.0
    assert metrics.max_ulp(np.array([-0.0], np.float32), np.array([0.0], np.float32)) == 0.0


def test_nonfinite_values():
    ref = np.array([1.0, np.nan, np.inf], np.float32)
    same = ref.copy()
    assert metrics.nonfinite(same, ref) == 0 and metrics.rel_l2(same, ref) == 0.0
    bad = np.array([np.nan, np.nan, np.inf], np.float32)
    assert metrics.nonfinite(bad, ref) == 1
    assert metrics.rel_l2(bad, ref) == math.inf and metrics.max_abs(bad, ref) == math.inf
    rec = metrics.all_metrics(bad, ref)
    assert set(rec) == {"max_abs", "max_rel", "rel_l2", "cosine", "max_ulp", "nonfinite"} and rec["nonfinite"] == 1


def test_bad_metric_and_shapes():
    with pytest.raises(HalfsimError, match="unknown metric 'l3'"):
        metrics.get("l3")
    with pytest.raises(HalfsimError, match="shapes differ"):
        metrics.rel_l2(np.zeros(2), np.zeros(3))
