"""NonMaxSuppression and RoiAlign against ONNX Runtime (exact selection order included)."""
import numpy as np
import pytest

import halfsim
from opcheck import check_op, make_model

rng = np.random.default_rng(3)
F = np.float32


def boxes_yxyx(b, n, flip=False):
    y1 = rng.uniform(0, 10, (b, n))
    x1 = rng.uniform(0, 10, (b, n))
    h = rng.uniform(0.5, 4, (b, n))
    w = rng.uniform(0.5, 4, (b, n))
    out = np.stack([y1, x1, y1 + h, x1 + w], -1).astype(F)
    if flip:  # corners given in either order
        out[:, ::2] = out[:, ::2][..., [2, 3, 0, 1]]
    return out


def scores(b, c, n, ties=False):
    s = rng.uniform(0, 1, (b, c, n))
    if ties:
        s = np.round(s * 4) / 4  # many equal scores: ORT's heap order decides
    return s.astype(F)


@pytest.mark.parametrize("n", [1, 7, 40])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("max_out,iou,score", [(3, 0.5, None), (100, 0.3, 0.4), (2, 0.0, 0.0), (1000, 1.0, 0.25),
                                               (5, 0.7, 0.99)])
def test_nms(n, ties, max_out, iou, score):
    ins = [boxes_yxyx(2, n, flip=ties), scores(2, 3, n, ties), np.array([max_out], np.int64),
           np.array([iou], F), None if score is None else np.array([score], F)]
    check_op("NonMaxSuppression", ins, opset=11)


@pytest.mark.parametrize("ties", [False, True])
def test_nms_center_point(ties):
    b = rng.uniform(0, 10, (1, 30, 4)).astype(F)
    b[..., 2:] = np.abs(b[..., 2:]) / 2 + 0.5
    check_op("NonMaxSuppression", [b, scores(1, 2, 30, ties), np.array([10], np.int64), np.array([0.4], F)],
             {"center_point_box": 1}, opset=10)


def test_nms_optional_inputs():
    bx, sc = boxes_yxyx(1, 10), scores(1, 2, 10)
    check_op("NonMaxSuppression", [bx, sc], opset=11)  # max_output defaults to 0: nothing selected
    check_op("NonMaxSuppression", [bx, sc, np.array([4], np.int64)], opset=11)  # iou 0: overlapping boxes drop
    check_op("NonMaxSuppression", [bx, sc, np.array([4], np.int64), None, np.array([0.5], F)], opset=11)


def test_nms_degenerate_boxes():
    bx = np.array([[[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0], [0.5, 0.5, 1.5, 1.5], [0, 0, 1, 1]]], F)
    sc = np.array([[[0.9, 0.9, 0.8, 0.7, 0.9]]], F)
    check_op("NonMaxSuppression", [bx, sc, np.array([5], np.int64), np.array([0.1], F)], opset=11)


def test_nms_bad_shapes():
    m = make_model("NonMaxSuppression", [boxes_yxyx(1, 4), scores(1, 2, 5), np.array([3], np.int64)], opset=11,
                   initializers=(2,))
    with pytest.raises(halfsim.errors.HalfsimError):
        halfsim.load(m).run({"in0": boxes_yxyx(1, 4), "in1": scores(1, 2, 5)})


def rois(n, size):
    x1 = rng.uniform(-2, size, n)
    y1 = rng.uniform(-2, size, n)
    return np.stack([x1, y1, x1 + rng.uniform(0, size / 2, n), y1 + rng.uniform(0, size / 2, n)], 1).astype(F)


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("opset,ctm", [(10, None), (16, "half_pixel"), (16, "output_half_pixel"), (16, None)])
@pytest.mark.parametrize("spatial_scale", [1.0, 0.25])
def test_roi_align(mode, sampling_ratio, opset, ctm, spatial_scale):
    x = rng.standard_normal((2, 3, 12, 10)).astype(F)
    size = 10 / spatial_scale
    attrs = {"mode": mode, "output_height": 4, "output_width": 3, "sampling_ratio": sampling_ratio,
             "spatial_scale": spatial_scale}
    if ctm is not None:
        attrs["coordinate_transformation_mode"] = ctm
    check_op("RoiAlign", [x, rois(6, size), np.array([0, 1, 1, 0, 1, 0], np.int64)], attrs, opset=opset,
             atol=1e-5)


def test_roi_align_double_and_empty():
    x = rng.standard_normal((1, 2, 8, 8))
    check_op("RoiAlign", [x, rois(3, 8).astype(np.float64), np.zeros(3, np.int64)], {"output_height": 2},
             opset=16)
    check_op("RoiAlign", [x.astype(F), np.zeros((0, 4), F), np.zeros(0, np.int64)], opset=16)
