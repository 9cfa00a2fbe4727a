"""halfsim fp32 against ONNX Runtime's CPU EP on single linear-algebra / conv / pool nodes with
typical CNN and transformer shapes, side by side in one process.

Each case is a one-node model (weights as initializers) run through halfsim.load(...).run (so
the interpreter's per-node overhead is included) and through an ORT session with
intra_op_num_threads equal to numpy's BLAS thread count. Time: median of --runs runs (default
5) after two warm-up runs (numba kernels compile on the first). Target: ratio <= 2.

    python benchmarks/bench_ops.py [--runs 5] [--only conv] [--precision fp32] [--json F]
    python benchmarks/bench_ops.py --threads-models rapidocr_det,nudenet --runs 15

Recorded on the shared 2-core dev VM (AMD EPYC, AVX2; other jobs running, so wall times
scatter by 2-5x between runs). Halfsim/ORT ratios, 1 thread, per-call CPU time (steadier
than wall time there): 3x3 convs 1.4-2.2 (32x112x112 s1 1.6, s2 1.5, resnet 64x56x56 1.4,
3x640x640 s2 2.2), pointwise 1.1-1.3, depthwise 2.7-2.9, grouped g32 2.7, ConvTranspose 2.0,
MaxPool ~5.5, AveragePool 3.0, GlobalAveragePool 1.7, Gemm/MatMul/batched MatMul 0.9-1.2,
Einsum 1.2-1.5, DynamicQuantizeMatMul 3.2. At 2 threads (quiet moment) the geomean of the
table was 2.3: ORT's direct NCHWc convolutions scale better than im2col + OpenBLAS.
The validation-model cases (rec/det/cls/magika/nudenet shapes, Sigmoid, Clip, Relu, Resize) were
added with the stride-1 depthwise kernel, the parallel conv tiles, the clip-ufunc/MLAS-sigmoid
paths, the shifted-GEMM conv, the channels-last depthwise kernel, the pooled-vector 1x1 conv and
the nearest integer-repeat Resize; `--only "("` runs just those.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import helper, numpy_helper  # noqa: E402

import halfsim  # noqa: E402
from timing import times_ms  # noqa: E402

rng = np.random.default_rng(0)


def blas_threads() -> int:
    """numpy's BLAS thread count (threadpoolctl), else the core count. Set OPENBLAS_NUM_THREADS
    (and HALFSIM_THREADS, which the numba kernels follow) to compare at another count."""
    try:
        from threadpoolctl import threadpool_info
        n = [i["num_threads"] for i in threadpool_info() if i.get("user_api") == "blas"]
        if n:
            return int(n[0])
    except ImportError:
        pass
    return os.cpu_count() or 1


def r(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def model(op_type, x, weights=(), attrs=None, opset=17, n_outputs=1, domain=""):
    names = ["x"] + [f"w{i}" for i in range(len(weights))]
    node = helper.make_node(op_type, names, [f"y{i}" for i in range(n_outputs)], domain=domain, **(attrs or {}))
    g = helper.make_graph([node], op_type, [helper.make_tensor_value_info("x", 1, list(x.shape))],
                          [onnx.ValueInfoProto(name=f"y{i}") for i in range(n_outputs)],
                          [numpy_helper.from_array(w, n) for w, n in zip(weights, names[1:])])
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    m = helper.make_model(g, opset_imports=imports)
    m.ir_version = 10
    return m, {"x": x}


def cases():
    c = {}
    c["conv 1x32x112x112 3x3 s1 ->32"] = model("Conv", r(1, 32, 112, 112), [r(32, 32, 3, 3), r(32)], dict(pads=[1] * 4))
    c["conv 1x32x112x112 3x3 s2 ->64"] = model("Conv", r(1, 32, 112, 112), [r(64, 32, 3, 3), r(64)],
                                               dict(pads=[1] * 4, strides=[2, 2]))
    c["conv depthwise 1x96x56x56 3x3 s1"] = model("Conv", r(1, 96, 56, 56), [r(96, 1, 3, 3), r(96)],
                                                  dict(pads=[1] * 4, group=96))
    c["conv depthwise 1x96x112x112 3x3 s2"] = model("Conv", r(1, 96, 112, 112), [r(96, 1, 3, 3), r(96)],
                                                    dict(pads=[1] * 4, group=96, strides=[2, 2]))
    c["conv pointwise 1x96x56x56 ->24"] = model("Conv", r(1, 96, 56, 56), [r(24, 96, 1, 1), r(24)])
    c["conv 1x3x640x640 3x3 s2 ->16"] = model("Conv", r(1, 3, 640, 640), [r(16, 3, 3, 3), r(16)],
                                              dict(pads=[1] * 4, strides=[2, 2]))
    c["conv 1x64x56x56 3x3 ->64 (resnet)"] = model("Conv", r(1, 64, 56, 56), [r(64, 64, 3, 3), r(64)],
                                                   dict(pads=[1] * 4))
    c["conv 1x256x14x14 3x3 g32 (resnext)"] = model("Conv", r(1, 256, 14, 14), [r(256, 8, 3, 3)],
                                                    dict(pads=[1] * 4, group=32))
    c["convT 1x64x32x32 4x4 s2 ->32"] = model("ConvTranspose", r(1, 64, 32, 32), [r(64, 32, 4, 4), r(32)],
                                              dict(strides=[2, 2], pads=[1] * 4))
    c["maxpool 1x64x112x112 3x3 s2"] = model("MaxPool", r(1, 64, 112, 112), [],
                                             dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4))
    c["avgpool 1x64x56x56 3x3 s1"] = model("AveragePool", r(1, 64, 56, 56), [],
                                           dict(kernel_shape=[3, 3], pads=[1] * 4, count_include_pad=0))
    c["globalavgpool 1x1280x7x7"] = model("GlobalAveragePool", r(1, 1280, 7, 7))
    # Shapes of the validation models (PP-OCR det/rec/cls, magika, YOLO-style nudenet/ddddocr_det).
    c["conv depthwise 1x240x12x94 5x5 (rec)"] = model("Conv", r(1, 240, 12, 94), [r(240, 1, 5, 5), r(240)],
                                                      dict(pads=[2] * 4, group=240))
    c["conv depthwise 1x192x8x26 5x5 (det)"] = model("Conv", r(1, 192, 8, 26), [r(192, 1, 5, 5), r(192)],
                                                     dict(pads=[2] * 4, group=192))
    c["conv depthwise 2x200x2x96 5x5 (cls)"] = model("Conv", r(2, 200, 2, 96), [r(200, 1, 5, 5), r(200)],
                                                     dict(pads=[2] * 4, group=200))
    c["conv 4x256x512x1 5x1 ->512 (magika)"] = model("Conv", r(4, 256, 512, 1), [r(512, 256, 5, 1), r(512)],
                                                     dict(pads=[2, 0, 2, 0]))
    c["conv 1x96x32x104 3x3 ->24 (det)"] = model("Conv", r(1, 96, 32, 104), [r(24, 96, 3, 3), r(24)],
                                                 dict(pads=[1] * 4))
    c["conv 1x64x40x40 3x3 ->64 (nudenet)"] = model("Conv", r(1, 64, 40, 40), [r(64, 64, 3, 3), r(64)],
                                                   dict(pads=[1] * 4))
    c["conv depthwise 1x384x4x13 5x5 (det)"] = model("Conv", r(1, 384, 4, 13), [r(384, 1, 5, 5), r(384)],
                                                     dict(pads=[2] * 4, group=384))
    c["conv 2x88x1x1 ->22 (cls SE gate)"] = model("Conv", r(2, 88, 1, 1), [r(22, 88, 1, 1), r(22)])
    c["resize nearest 1x96x16x52 x2 (det)"] = model(
        "Resize", r(1, 96, 16, 52), [np.zeros(0, np.float32), np.array([1, 1, 2, 2], np.float32)],
        dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"), opset=13)
    c["sigmoid 1x32x160x160 (yolo)"] = model("Sigmoid", r(1, 32, 160, 160))
    c["clip 1x96x32x104 [0, 6] (ppocr)"] = model("Clip", r(1, 96, 32, 104), [np.float32(0).reshape(()),
                                                                      np.float32(6).reshape(())], opset=13)
    c["relu 1x64x56x56 (cls)"] = model("Relu", r(1, 64, 56, 56))
    c["globalavgpool 1x480x3x94 (rec)"] = model("GlobalAveragePool", r(1, 480, 3, 94))
    c["gemm 1x1280 x 1280x1000"] = model("Gemm", r(1, 1280), [r(1000, 1280), r(1000)], dict(transB=1))
    c["matmul 128x768 x 768x3072"] = model("MatMul", r(1, 128, 768), [r(768, 3072)])
    c["matmul batched 12x128x64 x 12x64x128"] = model("MatMul", r(12, 128, 64), [r(12, 64, 128)])
    c["einsum bhid,bhjd->bhij 1x12x128x64"] = model("Einsum", r(1, 12, 128, 64), [r(1, 12, 128, 64)],
                                                    dict(equation="bhid,bhjd->bhij"), opset=12)
    xq = r(1, 128, 768)
    c["dynquantlinear 1x128x768"] = model("DynamicQuantizeLinear", xq, [], n_outputs=3, opset=11)
    c["dynquantmatmul 128x768 x 768x768"] = model(
        "DynamicQuantizeMatMul", xq, [rng.integers(-64, 64, (768, 768)).astype(np.int8),
                                      np.full(768, 0.01, np.float32)], domain="com.microsoft")
    return c


def thread_scaling(names: list[str], reps: int) -> None:
    """Whole manifest models in one process: halfsim fp32 at HALFSIM_THREADS 1 and 2, each with
    the conv tile drivers (kernels/convtile.py) and without them (the numpy/ctypes tiles),
    runs interleaved (order alternating), median wall and process CPU ms per mode."""
    import time

    from halfsim.ops import conv as conv_ops
    from validation import fetch, recipes
    manifest = {e["name"]: e for e in fetch.load_manifest()}
    addr = conv_ops._sgemm_address()
    modes = [(t, d) for t in ("1", "2") for d in (True, False)]
    for name in names:
        path = str(fetch.fetch(name))
        feeds = recipes.build_inputs(manifest[name]["recipe"], onnx.load(path))
        m = halfsim.load(path)
        res: dict = {md: [] for md in modes}
        load0 = os.getloadavg()[0]
        for i in range(reps + 1):
            for t, d in (modes if i % 2 else modes[::-1]):
                os.environ["HALFSIM_THREADS"] = t
                conv_ops._ADDR[:] = [addr if d else 0]
                m.run(feeds)  # untimed: the other mode's run just took the caches
                w, c = time.perf_counter(), time.process_time()
                m.run(feeds)
                if i:  # the first round warms every mode
                    res[(t, d)].append((1e3 * (time.perf_counter() - w), 1e3 * (time.process_time() - c)))
        conv_ops._ADDR[:] = [addr]
        print(f"{name} ({reps} runs a mode, load {load0:.2f} -> {os.getloadavg()[0]:.2f}):")
        for (t, d), v in res.items():
            print(f"  threads {t} {'drivers' if d else 'numpy tiles':11s} wall {np.median([x[0] for x in v]):8.2f}"
                  f"  cpu {np.median([x[1] for x in v]):8.2f} ms")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", default="", help="substring filter on case names")
    ap.add_argument("--precision", default="fp32", help="halfsim precision (default fp32)")
    ap.add_argument("--json", default="")
    ap.add_argument("--threads-models", default="",
                    help="comma-separated manifest models: HALFSIM_THREADS 1 vs 2, conv drivers on/off, "
                         "interleaved in one process (wall and CPU), instead of the op table")
    a = ap.parse_args(argv)
    if a.threads_models:
        thread_scaling(a.threads_models.split(","), max(a.runs, 5))
        return 0
    threads = blas_threads()
    rows = []
    print(f"threads: {threads} (numpy BLAS, halfsim kernels and ORT intra-op); median of {a.runs} runs after "
          f"warm-up (min in brackets: on a busy machine the min is the steadier figure)")
    print(f"{'case':40s} {'halfsim ms':>18s} {'ORT ms':>16s} {'ratio':>6s} {'(min)':>6s}")
    for name, (m, feeds) in cases().items():
        if a.only and a.only not in name:
            continue
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        hm = halfsim.load(m)
        t_h, m_h = times_ms(lambda: hm.run(feeds, precision=a.precision), a.runs, warmup=2)
        t_o, m_o = times_ms(lambda: sess.run(None, feeds), a.runs, warmup=2)
        rows.append({"case": name, "halfsim_ms": t_h, "ort_ms": t_o, "ratio": t_h / t_o,
                     "halfsim_min_ms": m_h, "ort_min_ms": m_o, "ratio_min": m_h / m_o})
        print(f"{name:40s} {t_h:9.3f} [{m_h:7.3f}] {t_o:7.3f} [{m_o:7.3f}] {t_h / t_o:6.2f} {m_h / m_o:6.2f}",
              flush=True)
    for key in ("ratio", "ratio_min"):
        ratios = [row[key] for row in rows]
        if ratios:
            print(f"{key}: geomean {float(np.exp(np.mean(np.log(ratios)))):.2f}, worst {max(ratios):.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"version": 1, "threads": threads, "precision": a.precision, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
