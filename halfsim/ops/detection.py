"""Detection ops: NonMaxSuppression and RoiAlign, following ORT's CPU kernels (the oracle) step
by step in float32, including the order in which equal scores are visited.

Aliasing convention: inputs are never modified; outputs are fresh arrays.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..errors import ExecutionError
from .registry import op

f32 = np.float32


# --- NonMaxSuppression ----------------------------------------------------------------------
# Candidates are visited by descending score, equal scores by ascending box index (ORT's order).

@njit(cache=True)
def _minmax(a, b):
    return (b, a) if a >= b else (a, b)


@njit(cache=True)
def _suppress(boxes, i1, i2, center, thr):
    b1 = boxes[i1]
    b2 = boxes[i2]
    two = np.float32(2)
    if center == 0:
        x1min, x1max = _minmax(b1[1], b1[3])
        x2min, x2max = _minmax(b2[1], b2[3])
        ixmin = max(x1min, x2min)
        ixmax = min(x1max, x2max)
        if ixmax <= ixmin:
            return False
        y1min, y1max = _minmax(b1[0], b1[2])
        y2min, y2max = _minmax(b2[0], b2[2])
        iymin = max(y1min, y2min)
        iymax = min(y1max, y2max)
        if iymax <= iymin:
            return False
    else:
        w1, h1, w2, h2 = b1[2] / two, b1[3] / two, b2[2] / two, b2[3] / two
        x1min, x1max = b1[0] - w1, b1[0] + w1
        x2min, x2max = b2[0] - w2, b2[0] + w2
        ixmin = max(x1min, x2min)
        ixmax = min(x1max, x2max)
        if ixmax <= ixmin:
            return False
        y1min, y1max = b1[1] - h1, b1[1] + h1
        y2min, y2max = b2[1] - h2, b2[1] + h2
        iymin = max(y1min, y2min)
        iymax = min(y1max, y2max)
        if iymax <= iymin:
            return False
    inter = (ixmax - ixmin) * (iymax - iymin)
    if inter <= 0:
        return False
    a1 = (x1max - x1min) * (y1max - y1min)
    a2 = (x2max - x2min) * (y2max - y2min)
    union = a1 + a2 - inter
    if a1 <= 0 or a2 <= 0 or union <= 0:
        return False
    return inter / union > thr


@njit(cache=True)
def _nms(boxes, scores, max_out, iou_thr, score_thr, use_score_thr, center):
    nb, nc, n = scores.shape
    out = np.empty((nb * nc * n, 3), np.int64)
    k = 0
    sc = np.empty(n, np.float32)
    ix = np.empty(n, np.int64)
    sel = np.empty(n, np.int64)
    for b in range(nb):
        bx = boxes[b]
        for c in range(nc):
            m = 0
            for i in range(n):
                sv = scores[b, c, i]
                if (not use_score_thr) or sv > score_thr:
                    sc[m] = -sv
                    ix[m] = i
                    m += 1
            order = np.argsort(sc[:m], kind="mergesort")  # stable: ties keep ascending index
            nsel = 0
            for t in range(m):
                cand = ix[order[t]]
                keep = True
                for j in range(nsel):
                    if _suppress(bx, sel[j], cand, center, iou_thr):
                        keep = False
                        break
                if keep:
                    if max_out > 0 and nsel >= max_out:
                        break
                    sel[nsel] = cand
                    nsel += 1
                    out[k, 0] = b
                    out[k, 1] = c
                    out[k, 2] = cand
                    k += 1
    return out[:k].copy()


@op("NonMaxSuppression", since=10)
def non_max_suppression(ctx, boxes, scores, max_output_boxes_per_class=None, iou_threshold=None,
                        score_threshold=None, *, center_point_box=0):
    if boxes.ndim != 3 or scores.ndim != 3 or boxes.shape[2] != 4:
        raise ExecutionError(f"NonMaxSuppression: boxes {list(boxes.shape)} must be [B, N, 4] and scores [B, C, N]")
    if boxes.shape[0] != scores.shape[0] or boxes.shape[1] != scores.shape[2]:
        raise ExecutionError(f"NonMaxSuppression: boxes {list(boxes.shape)} and scores {list(scores.shape)} disagree")
    if center_point_box not in (0, 1):
        raise ExecutionError("NonMaxSuppression: center_point_box must be 0 or 1")
    max_out = 0 if max_output_boxes_per_class is None or max_output_boxes_per_class.size == 0 \
        else int(max_output_boxes_per_class.reshape(-1)[0])
    iou = f32(0) if iou_threshold is None or iou_threshold.size == 0 else f32(iou_threshold.reshape(-1)[0])
    if not 0 <= iou <= 1:
        raise ExecutionError(f"NonMaxSuppression: iou_threshold {iou} must be in [0, 1]")
    use_st = score_threshold is not None and score_threshold.size > 0
    st = f32(score_threshold.reshape(-1)[0]) if use_st else f32(0)
    if max_out == 0:
        return np.zeros((0, 3), np.int64)
    return _nms(np.ascontiguousarray(boxes, dtype=f32), np.ascontiguousarray(scores, dtype=f32),
                max_out, iou, st, use_st, int(center_point_box))


# --- RoiAlign -------------------------------------------------------------------------------

def _make_roi_align(T):
    """RoiAlign kernel computing in T (float32 or float64), as ORT's templated kernel does."""
    @njit(cache=True)
    def kernel(x, rois, bidx, out_h, out_w, sampling_ratio, spatial_scale, half_pixel, is_max):
        return _roi_align_body(T, x, rois, bidx, out_h, out_w, sampling_ratio, spatial_scale, half_pixel, is_max)
    return kernel


@njit(cache=True, inline="always")
def _roi_align_body(T, x, rois, bidx, out_h, out_w, sampling_ratio, spatial_scale, half_pixel, is_max):
    n_rois = rois.shape[0]
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    out = np.zeros((n_rois, C, out_h, out_w), x.dtype)
    off = T(0.5) if half_pixel else T(0.0)
    ss = T(spatial_scale)
    for n in range(n_rois):
        b = bidx[n]
        r = rois[n]
        sw = r[0] * ss - off
        sh = r[1] * ss - off
        ew = r[2] * ss - off
        eh = r[3] * ss - off
        rw = ew - sw
        rh = eh - sh
        if not half_pixel:
            rw = max(rw, T(1))
            rh = max(rh, T(1))
        bh = rh / T(out_h)
        bw = rw / T(out_w)
        gh = sampling_ratio if sampling_ratio > 0 else int(np.ceil(rh / T(out_h)))
        gw = sampling_ratio if sampling_ratio > 0 else int(np.ceil(rw / T(out_w)))
        count = T(max(gh * gw, 1))
        nsamp = out_h * out_w * gh * gw
        p1 = np.zeros(nsamp, np.int64)
        p2 = np.zeros(nsamp, np.int64)
        p3 = np.zeros(nsamp, np.int64)
        p4 = np.zeros(nsamp, np.int64)
        w1 = np.zeros(nsamp, x.dtype)
        w2 = np.zeros(nsamp, x.dtype)
        w3 = np.zeros(nsamp, x.dtype)
        w4 = np.zeros(nsamp, x.dtype)
        k = 0
        for ph in range(out_h):
            for pw in range(out_w):
                for iy in range(gh):
                    yy = sh + T(ph) * bh + T(iy + 0.5) * bh / T(gh)
                    for ixx in range(gw):
                        xx = sw + T(pw) * bw + T(ixx + 0.5) * bw / T(gw)
                        y = yy
                        xv = xx
                        if y < -1.0 or y > H or xv < -1.0 or xv > W:
                            k += 1
                            continue
                        if y <= 0:
                            y = T(0)
                        if xv <= 0:
                            xv = T(0)
                        yl = int(y)
                        xl = int(xv)
                        if yl >= H - 1:
                            yh = yl = H - 1
                            y = T(yl)
                        else:
                            yh = yl + 1
                        if xl >= W - 1:
                            xh = xl = W - 1
                            xv = T(xl)
                        else:
                            xh = xl + 1
                        ly = y - T(yl)
                        lx = xv - T(xl)
                        hy = T(1) - ly
                        hx = T(1) - lx
                        p1[k] = yl * W + xl
                        p2[k] = yl * W + xh
                        p3[k] = yh * W + xl
                        p4[k] = yh * W + xh
                        w1[k] = hy * hx
                        w2[k] = hy * lx
                        w3[k] = ly * hx
                        w4[k] = ly * lx
                        k += 1
        for c in range(C):
            img = x[b, c].ravel()
            k = 0
            for ph in range(out_h):
                for pw in range(out_w):
                    acc = T(0)
                    first = True
                    for s in range(gh * gw):
                        if is_max:
                            v = max(max(max(w1[k] * img[p1[k]], w2[k] * img[p2[k]]), w3[k] * img[p3[k]]),
                                    w4[k] * img[p4[k]])
                            if first:
                                acc = v
                                first = False
                            else:
                                acc = max(acc, v)
                        else:
                            acc += w1[k] * img[p1[k]] + w2[k] * img[p2[k]] + w3[k] * img[p3[k]] + w4[k] * img[p4[k]]
                        k += 1
                    out[n, c, ph, pw] = acc if is_max else acc / count
    return out


_ROI_KERNELS: dict = {}


def _roi_align_py(x, rois, batch_indices, mode, output_height, output_width, sampling_ratio, spatial_scale,
                  half_pixel):
    if x.ndim != 4 or rois.ndim != 2 or rois.shape[1] != 4 or batch_indices.ndim != 1 \
            or batch_indices.shape[0] != rois.shape[0]:
        raise ExecutionError(f"RoiAlign: X {list(x.shape)} must be [N,C,H,W], rois [R,4], batch_indices [R]")
    if mode not in ("avg", "max"):
        raise ExecutionError(f"RoiAlign: unknown mode {mode!r}")
    bi = batch_indices.astype(np.int64)
    if bi.size and (bi.min() < 0 or bi.max() >= x.shape[0]):
        raise ExecutionError("RoiAlign: batch index out of range")
    dt = np.float64 if x.dtype == np.float64 else f32
    kern = _ROI_KERNELS.get(dt)
    if kern is None:
        kern = _ROI_KERNELS[dt] = _make_roi_align(dt)
    out = kern(np.ascontiguousarray(x, dtype=dt), np.ascontiguousarray(rois, dtype=dt), bi,
                     int(output_height), int(output_width), int(sampling_ratio), float(spatial_scale),
                     bool(half_pixel), mode == "max")
    return out.astype(x.dtype, copy=False)


@op("RoiAlign", since=10)
def roi_align10(ctx, x, rois, batch_indices, *, mode="avg", output_height=1, output_width=1, sampling_ratio=0,
                spatial_scale=1.0):
    return _roi_align_py(x, rois, batch_indices, mode, output_height, output_width, sampling_ratio,
                         spatial_scale, False)


@op("RoiAlign", since=16)
def roi_align16(ctx, x, rois, batch_indices, *, coordinate_transformation_mode="half_pixel", mode="avg",
                output_height=1, output_width=1, sampling_ratio=0, spatial_scale=1.0):
    if coordinate_transformation_mode not in ("half_pixel", "output_half_pixel"):
        raise ExecutionError(f"RoiAlign: unknown coordinate_transformation_mode {coordinate_transformation_mode!r}")
    return _roi_align_py(x, rois, batch_indices, mode, output_height, output_width, sampling_ratio,
                         spatial_scale, coordinate_transformation_mode == "half_pixel")
