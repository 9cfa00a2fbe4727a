"""A campaign sent to a real dask.distributed cluster (two worker processes on loopback) gives
exactly the result of the local serial run for the same seed."""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import halfsim  # noqa: E402
from halfsim.cli import main  # noqa: E402
from halfsim.demo import data_path  # noqa: E402
from halfsim.faults import inject, split_batch  # noqa: E402

distributed = pytest.importorskip("distributed")
os.environ.setdefault("HALFSIM_QUIET", "1")


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as c:
        yield c


def test_dask_equals_local(cluster, tmp_path):
    m = halfsim.load(data_path("digits.onnx"))
    with np.load(data_path("digits_test.npz")) as z:
        images = z["image"][:40]
    inputs = split_batch({"image": images})
    kw = dict(field="any", trials=60, seed=21, precision="fp16")
    local = inject(m, inputs, workers=1, **kw)
    remote = inject(m, inputs, scheduler=cluster.scheduler_address, **kw)
    assert remote.info["execution"] == "dask"
    assert remote.table == local.table
    strip = lambda j: {k: v for k, v in j.items() if k not in ("execution", "seconds", "trials_per_second", "workers")}  # noqa: E731
    assert strip(remote.to_json()) == strip(local.to_json())
    # The same through the CLI.
    np.savez(tmp_path / "x.npz", image=images)
    out = tmp_path / "o.json"
    rc = main(["inject", data_path("digits.onnx"), "--inputs", str(tmp_path / "x.npz"), "--per-sample",
               "--fault", "bitflip", "--field", "any", "--trials", "60", "--seed", "21", "--precision", "fp16",
               "--scheduler", cluster.scheduler_address, "--json", str(out)])
    assert rc == 0
    j = json.loads(out.read_text())
    assert j["execution"] == "dask" and j["records"] == json.loads(json.dumps(local.to_json()["records"]))
