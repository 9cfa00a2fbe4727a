"""halfsim fp32 against ONNX Runtime's CPU EP (same thread count) and onnx.reference's
ReferenceEvaluator on the validation manifest's real models, side by side in one run.

Time: median of --runs runs (default 5) after one warm-up, same inputs, same process; ORT's
and halfsim's runs interleaved (each timed call right after an untimed one), then
ReferenceEvaluator's. HALFSIM_THREADS is set to --threads so both sides use the same count.
Memory: peak RSS (VmHWM; ru_maxrss where /proc is missing) of a fresh subprocess per backend per model that imports the
backend, builds the inputs, then loads the model and runs it twice; reported as the peak
minus the RSS just before the model was loaded (the model's own cost), and the total peak.
tracemalloc would miss ORT's native allocations, so RSS is the only fair common measure.

Targets: halfsim within 2x of ORT's time, at least 10x faster than ReferenceEvaluator, peak
memory within 2x of ORT's.

    python benchmarks/bench_interpreter.py [--models a,b] [--runs 5] [--ref-budget 120] [--json F]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import onnx  # noqa: E402

from validation import fetch, recipes  # noqa: E402
from validation.runner import compute_threads, missing_ops  # noqa: E402

BACKENDS = ("ort", "halfsim", "reference")


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for ln in f:
                if ln.startswith(field + ":"):
                    return int(ln.split()[1])
    except OSError:
        pass
    return None


def _peak_kb() -> int:
    """This process's RSS high-water mark. VmHWM belongs to the process's own address space;
    ru_maxrss on Linux keeps the high-water mark of the (large) parent it was forked from
    across exec, so it is only the fallback where /proc is missing."""
    hwm = _status_kb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def make_runner(backend: str, path: str, threads: int):
    """A zero-argument callable running the model once on fixed feeds (built by the caller)."""
    if backend == "ort":
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        return lambda feeds: sess.run(None, feeds)
    if backend == "halfsim":
        import halfsim
        m = halfsim.load(path)
        return lambda feeds: m.run(feeds)
    if backend == "reference":
        from onnx.reference import ReferenceEvaluator
        ev = ReferenceEvaluator(path)
        return lambda feeds: ev.run(None, feeds)
    raise ValueError(backend)


def child(backend: str, name: str, feeds_npz: str, threads: int) -> None:
    """Subprocess body: import the backend, load the feeds, note RSS, load and run the model
    twice, print {"peak_kb", "base_kb"} as JSON."""
    import importlib
    importlib.import_module({"ort": "onnxruntime", "halfsim": "halfsim", "reference": "onnx.reference"}[backend])
    if backend == "halfsim":  # library code in the baseline, as ORT's shared library is
        from halfsim.ops import registry
        registry.registered()
    elif backend == "reference":
        from onnx.reference import ops  # noqa: F401
    path = str(fetch.fetch(name))
    with np.load(feeds_npz) as z:
        feeds = {k: z[k] for k in z.files}
    base = _status_kb("VmRSS") or 0
    run = make_runner(backend, path, threads)
    run(feeds)
    run(feeds)
    print(json.dumps({"peak_kb": _peak_kb(), "base_kb": base}))


def peak_memory(backend: str, name: str, feeds_npz: str, threads: int, timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--_child", backend, name, feeds_npz, "--threads", str(threads)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if r.returncode != 0:
        tail = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
        return {"error": tail[-1][:160] if tail else f"exit {r.returncode}"}
    d = json.loads(r.stdout.strip().splitlines()[-1])
    return {"peak_mb": d["peak_kb"] / 1024, "model_mb": (d["peak_kb"] - d["base_kb"]) / 1024}


def time_interleaved(runners: dict, feeds, runs: int, budget: float, pause: float, batch_s: float = 0.005) -> dict:
    """Median ms per backend with the backends' runs interleaved (A B B A A B ...), so that
    a change in the shared machine's load hits both sides alike. Each timed call follows an
    untimed one of the same backend (its threads and caches warm again after the other ran:
    the back-to-back use of a streaming model), after `pause` seconds of sleep. A timed sample
    of a millisecond model is the mean of back-to-back calls filling `batch_s` (one call of a
    larger one), as a streaming model runs frame after frame: one sub-millisecond call right
    after the other backend ran measured ~2x its back-to-back time on both sides (caches,
    branch predictors and clock still warming)."""
    out, ts, cpu, live = {}, {}, {}, []
    for b, run in runners.items():
        t0 = time.perf_counter()
        run(feeds)  # warm-up (numba compilation, ORT arena, caches)
        warm = time.perf_counter() - t0
        if warm > budget:
            out[b] = {"ms": warm * 1e3, "runs": 0, "note": "warm-up only (over budget)"}
        else:
            ts[b], cpu[b] = [], []
            live.append(b)
    start = time.perf_counter()
    for i in range(runs):
        for b in (live if i % 2 == 0 else live[::-1]):
            if pause:
                time.sleep(pause)
            t = time.perf_counter()
            runners[b](feeds)
            k = max(1, min(50, int(batch_s / max(time.perf_counter() - t, 1e-6))))
            c, t = time.process_time(), time.perf_counter()
            for _ in range(k):
                runners[b](feeds)
            ts[b].append((time.perf_counter() - t) / k)
            cpu[b].append((time.process_time() - c) / k)
        if time.perf_counter() - start > 2 * budget * max(1, len(live)):
            break
    for b in live:
        # cpu_ms: the process's CPU time (all its threads); at one thread it is the figure least
        # disturbed by other jobs on a shared machine (waiting for a core is not counted).
        out[b] = {"ms": float(np.median(ts[b])) * 1e3, "runs": len(ts[b]), "cpu_ms": float(np.median(cpu[b])) * 1e3}
    return out


def time_backend(run, feeds, runs: int, budget: float) -> dict:
    t0 = time.perf_counter()
    run(feeds)  # warm-up (numba compilation, ORT arena, caches)
    warm = time.perf_counter() - t0
    ts = []
    if warm > budget:
        return {"ms": warm * 1e3, "runs": 0, "note": "warm-up only (over budget)"}
    start = time.perf_counter()
    while len(ts) < runs:
        t = time.perf_counter()
        run(feeds)
        ts.append(time.perf_counter() - t)
        if time.perf_counter() - start > budget and len(ts) >= 1:
            break
    return {"ms": float(np.median(ts)) * 1e3, "runs": len(ts)}


def profile_halfsim(path: str, feeds: dict, repeats: int = 3) -> dict[str, float]:
    """Milliseconds per op type in one halfsim fp32 run (the best of `repeats` per op type),
    timed around every step of the interpreter's compiled fp32 schedules (main graph and
    bodies), so folded constants are not counted and fused Conv chains count as Conv. A
    hook would switch the run to the node-by-node path, which is not what is benchmarked."""
    import halfsim
    m = halfsim.load(path)
    m.run(feeds)
    acc: dict[str, float] = {}
    count = [0]

    def timed(fn, key):
        def run(*a, **k):
            count[0] += 1
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                acc[key] = acc.get(key, 0.0) + (time.perf_counter() - t) * 1e3
        return run
    for fg in m._fast.values():
        # Control-flow nodes are not timed themselves: their bodies' steps are.
        fg.steps = [st if st[6] else (st[0], timed(st[1], st[0].op_type)) + tuple(st[2:]) for st in fg.steps]
    best: dict[str, float] = {}
    for _ in range(repeats):
        acc.clear()
        count[0] = 0
        m.run(feeds)
        for k, v in acc.items():
            best[k] = min(best.get(k, float("inf")), v)
    # "#steps": op calls per run (folded constants excluded, fused Conv chains one each):
    # with ORT's time, the per-node floor a Python dispatcher is measured against.
    return {"#steps": count[0], **dict(sorted(best.items(), key=lambda kv: -kv[1]))}


def bench_model(e: dict, runs: int, threads: int, ref_budget: float, budget: float, memory: bool,
                profile: bool, tmpdir: str, pause: float = 0.0) -> dict:
    name = e["name"]
    rec: dict = {"name": name, "time": {}, "memory": {}}
    path = str(fetch.fetch(name))
    proto = onnx.load(path)
    feeds = recipes.build_inputs(e["recipe"], proto)
    feeds_npz = os.path.join(tmpdir, f"{name}.npz")
    np.savez(feeds_npz, **feeds)
    miss = missing_ops(proto)
    del proto
    # ORT and halfsim interleaved; ReferenceEvaluator (10-100x slower) on its own afterwards.
    pair = {}
    for b in BACKENDS:
        if b == "halfsim" and miss:
            rec["time"][b] = {"error": "halfsim lacks " + ", ".join(m["op_type"] for m in miss)}
            continue
        if b == "reference":
            rec["time"].update(time_interleaved(pair, feeds, runs, budget, pause))
        try:
            run = make_runner(b, path, threads)
            if b == "reference":
                rec["time"][b] = time_backend(run, feeds, runs, ref_budget)
            else:
                run(feeds)  # errors here, not inside the interleaved loop
                pair[b] = run
        except Exception as ex:
            msg = str(ex).strip().splitlines()
            rec["time"][b] = {"error": f"{type(ex).__name__}: {msg[0][:120] if msg else ''}"}
    for b in BACKENDS:
        if memory and "error" not in rec["time"][b]:
            rec["memory"][b] = peak_memory(b, name, feeds_npz, threads,
                                           timeout=max(120.0, 10 * rec["time"][b]["ms"] / 1e3 + 60))
    if profile and "error" not in rec["time"].get("halfsim", {"error": 1}):
        rec["halfsim_ops_ms"] = profile_halfsim(path, feeds)
    return rec


def _get(rec, kind, b, key):
    v = rec[kind].get(b, {})
    return v.get(key) if isinstance(v, dict) else None


def _fmt(x, f=".1f"):
    return "-" if x is None else format(x, f)


def table(recs: list[dict]) -> str:
    head = (f"{'model':<17} {'ORT ms':>8} {'halfsim ms':>10} {'ref ms':>9} {'hs/ORT':>7} {'ref/hs':>7} "
            f"{'ORT MB':>7} {'hs MB':>7} {'ref MB':>7} {'hs/ORT mem':>10}")
    lines = [head, "-" * len(head)]
    for r in recs:
        o, h, f = (_get(r, "time", b, "ms") for b in BACKENDS)
        mo, mh, mf = (_get(r, "memory", b, "model_mb") for b in BACKENDS)
        ref_runs = _get(r, "time", "reference", "runs")
        fs = _fmt(f) + ("*" if f is not None and ref_runs is not None and ref_runs < 5 else "")
        lines.append(f"{r['name']:<17} {_fmt(o):>8} {_fmt(h):>10} {fs:>9} "
                     f"{_fmt(h / o if h and o else None, '.2f'):>7} {_fmt(f / h if f and h else None, '.1f'):>7} "
                     f"{_fmt(mo):>7} {_fmt(mh):>7} {_fmt(mf):>7} "
                     f"{_fmt(mh / mo if mh and mo and mo > 0 else None, '.2f'):>10}")
    lines.append("times: median ms after warm-up; * fewer than 5 timed runs (budget). MB: peak RSS minus RSS "
                 "before loading the model, fresh subprocess per backend and model.")
    notes = []
    for r in recs:
        for kind in ("time", "memory"):
            for b, v in r[kind].items():
                if isinstance(v, dict) and "error" in v:
                    notes.append(f"  {r['name']} {b} {kind}: {v['error']}")
    if notes:
        lines.append("not measured:")
        lines.extend(notes)
    return "\n".join(lines)


def cpu_table(recs: list[dict]) -> str:
    """ORT and halfsim by process CPU time (medians of the same interleaved runs): with one
    thread each, the comparison that other load on the machine disturbs least."""
    lines = [f"{'model':<17} {'ORT cpu ms':>10} {'hs cpu ms':>10} {'hs/ORT':>7}"]
    xs = []
    for r in recs:
        o, h = _get(r, "time", "ort", "cpu_ms"), _get(r, "time", "halfsim", "cpu_ms")
        if o and h:
            xs.append(h / o)
        lines.append(f"{r['name']:<17} {_fmt(o, '.3f'):>10} {_fmt(h, '.3f'):>10} {_fmt(h / o if o and h else None, '.2f'):>7}")
    if xs:
        lines.append(f"halfsim/ORT CPU time (target <= 2): geomean {float(np.exp(np.mean(np.log(xs)))):.2f} over "
                     f"{len(xs)} models, {sum(x <= 2 for x in xs)} meet the target")
    return "\n".join(lines)


def summary(recs: list[dict]) -> str:
    def ratios(fn):
        return [x for x in (fn(r) for r in recs) if x is not None]
    t = ratios(lambda r: (_get(r, "time", "halfsim", "ms") / _get(r, "time", "ort", "ms"))
               if _get(r, "time", "halfsim", "ms") and _get(r, "time", "ort", "ms") else None)
    s = ratios(lambda r: (_get(r, "time", "reference", "ms") / _get(r, "time", "halfsim", "ms"))
               if _get(r, "time", "halfsim", "ms") and _get(r, "time", "reference", "ms") else None)
    m = ratios(lambda r: (_get(r, "memory", "halfsim", "model_mb") / _get(r, "memory", "ort", "model_mb"))
               if _get(r, "memory", "halfsim", "model_mb") and (_get(r, "memory", "ort", "model_mb") or 0) > 0 else None)
    out = []
    for label, xs, ok in [("halfsim/ORT time (target <= 2)", t, lambda x: x <= 2),
                          ("ReferenceEvaluator/halfsim time (target >= 10)", s, lambda x: x >= 10),
                          ("halfsim/ORT peak memory (target <= 2)", m, lambda x: x <= 2)]:
        if xs:
            gm = float(np.exp(np.mean(np.log(xs))))
            out.append(f"{label}: geomean {gm:.2f} over {len(xs)} models, {sum(map(ok, xs))} meet the target")
        else:
            out.append(f"{label}: no model measured")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="comma-separated manifest names (default: all)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (default: numpy's)")
    ap.add_argument("--budget", type=float, default=30.0, help="seconds of timed runs per backend and model")
    # ORT's idle intra-op workers spin for ~60 ms after every run (measured: 60 ms of process
    # CPU during a sleep after a minilm run, 2 threads), taking a core from whatever runs next:
    # halfsim right after ORT ran 33 ms against 27 ms after itself. The pause lets them settle.
    # One thread has no pool to settle, and a sleep lets other jobs take the caches.
    ap.add_argument("--pause", type=float, default=None,
                    help="seconds of sleep before each ORT/halfsim warm+timed pair (default: 0.1 with more than "
                         "one thread, ORT's pool stops spinning; 0 with one)")
    ap.add_argument("--ref-budget", type=float, default=60.0, help="the same for ReferenceEvaluator")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-profile", action="store_true", help="skip halfsim's time per op type")
    ap.add_argument("--json")
    ap.add_argument("--_child", nargs=3, metavar=("BACKEND", "MODEL", "FEEDS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    threads = args.threads or compute_threads()
    if args.pause is None:
        args.pause = 0.1 if threads > 1 else 0.0
    os.environ["HALFSIM_THREADS"] = str(threads)  # halfsim's split kernels: ORT's intra-op count
    if args._child:
        child(args._child[0], args._child[1], args._child[2], threads)
        return 0
    manifest = fetch.load_manifest()
    if args.models:
        want = [n.strip() for n in args.models.split(",")]
        manifest = [e for e in manifest if e["name"] in want]
    import onnxruntime as ort
    print(f"onnxruntime {ort.__version__}, onnx {onnx.__version__}, numpy {np.__version__}, {threads} threads",
          file=sys.stderr)
    load0 = os.getloadavg()
    import tempfile
    recs = []
    with tempfile.TemporaryDirectory(prefix="halfsim-bench-") as td:
        for e in manifest:
            print(f"[{e['name']}] ...", file=sys.stderr, flush=True)
            recs.append(bench_model(e, args.runs, threads, args.ref_budget, args.budget, not args.no_memory,
                                    not args.no_profile, td, args.pause))
    print(table(recs))
    print(summary(recs))
    if threads == 1:
        print("one thread, process CPU time of the same runs:")
        print(cpu_table(recs))
    print("load average (1, 5, 15 min): before %.2f %.2f %.2f, after %.2f %.2f %.2f" % (load0 + os.getloadavg()))
    prof = [r for r in recs if r.get("halfsim_ops_ms")]
    if prof:
        print("halfsim time by op type (ms in one run, top 4):")
        for r in prof:
            ops = dict(r["halfsim_ops_ms"])
            n = ops.pop("#steps")
            tot = sum(ops.values())
            top = list(ops.items())[:4]
            o, h = _get(r, "time", "ort", "ms"), _get(r, "time", "halfsim", "ms")
            per = f"; {n} steps/run, per step: ORT {1e3 * o / n:.1f} us, halfsim {1e3 * h / n:.1f} us" if o and h and n else ""
            print(f"  {r['name']:<17} total {tot:8.1f}: " + ", ".join(f"{k} {v:.1f} ({100 * v / tot:.0f}%)" for k, v in top)
                  + per)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"version": 1, "threads": threads, "models": recs}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
