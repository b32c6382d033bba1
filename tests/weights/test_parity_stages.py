"""Stage-by-stage parity with torchvision on identical inputs: each stage of tfrcnn gets the
inputs torchvision's stage got (from tests/weights/torchvision_reference.py) and must give its
outputs. Converted weights come from the reference model's state dict."""

import numpy as np
import pytest

from tfrcnn.layers.rpn_head import RPNHead
from tfrcnn.weights import torchvision_spec
from tfrcnn.weights.pth import load_state_dict

pytestmark = pytest.mark.slow
RTOL = 1e-4


def assert_close_relative(actual, expected, rtol, what):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = np.abs(expected).max()
    error = np.abs(actual - expected).max()
    assert error <= rtol * scale, f"{what}: max difference {error:.3g} > {rtol} x {scale:.3g}"


# torchvision's test-time RPN settings: pre/post-NMS top-n (per level / per image), score threshold
RPN_SETTINGS = {
    "fasterrcnn_resnet50_fpn": (1000, 1000, 0.0),
    "fasterrcnn_mobilenet_v3_large_fpn": (1000, 1000, 0.05),
    "fasterrcnn_mobilenet_v3_large_320_fpn": (150, 150, 0.05),
}


@pytest.fixture(scope="module", params=list(RPN_SETTINGS))
def reference(request, torchvision_reference):
    npz, pth = torchvision_reference(request.param)
    modules = torchvision_spec.convert_modules(load_state_dict(pth), request.param)
    return request.param, npz, modules


def _levels(npz):
    return [str(level) for level in npz["levels"]]


def test_rpn_head(reference):
    arch, npz, modules = reference
    num_anchors = modules["rpn.head.cls_logits"][0].shape[-1] // 2
    head = RPNHead(num_anchors, channels=256, kernel_size=3)
    head.build((None, None, None, 256))
    head.conv.set_weights(modules["rpn.head.conv.0.0"])
    head.objectness.set_weights(modules["rpn.head.cls_logits"])
    head.box_deltas.set_weights(modules["rpn.head.bbox_pred"])
    for i in range(int(npz["num_images"])):
        for level in _levels(npz):
            scores, deltas = head(npz[f"img{i}_features_{level}"], return_maps=True)
            scores = np.asarray(scores)
            logits = scores[..., 1::2] - scores[..., 0::2]  # log-odds == torchvision's logit
            assert_close_relative(
                logits,
                npz[f"img{i}_objectness_{level}"],
                RTOL,
                f"{arch} image {i} level {level} objectness",
            )
            expected = npz[f"img{i}_deltas_{level}"]
            shape = expected.shape[:-1] + (num_anchors, 4)
            expected = expected.reshape(shape)[..., [1, 0, 3, 2]].reshape(expected.shape)
            assert_close_relative(deltas, expected, RTOL, f"{arch} image {i} level {level} deltas")


def assert_same_proposals(
    boxes, scores, expected_boxes, expected_scores, what, box_tol=1e-2, score_tol=1e-4
):
    """The same boxes in the same order, except that proposals whose scores differ by less than
    ``score_tol`` may swap places: each proposal is matched, one to one, to an expected proposal
    of (nearly) the same score whose corners are within ``box_tol`` pixels."""
    np.testing.assert_allclose(scores, expected_scores, atol=score_tol, err_msg=what)
    unmatched = set(range(len(expected_boxes)))
    for k in range(len(boxes)):
        near = [j for j in unmatched if abs(expected_scores[j] - scores[k]) <= score_tol]
        errors = [np.abs(expected_boxes[j] - boxes[k]).max() for j in near]
        assert errors and min(errors) <= box_tol, (
            f"{what}: proposal {k} {boxes[k]} (score {scores[k]:.6f}) has no torchvision "
            f"proposal within {box_tol} px among {len(near)} of the same score"
        )
        unmatched.discard(near[int(np.argmin(errors))])


def _rpn_outputs(npz, i):
    """torchvision's RPN outputs of image ``i`` in tfrcnn's form, one entry a level."""
    objectness, deltas, anchors = [], [], []
    all_anchors = npz[f"img{i}_anchors"][:, [1, 0, 3, 2]]
    start = 0
    for level in _levels(npz):
        logits = npz[f"img{i}_objectness_{level}"].reshape(1, -1)
        objectness.append(np.stack([np.zeros_like(logits), logits], -1))
        d = npz[f"img{i}_deltas_{level}"].reshape(1, -1, 4)[..., [1, 0, 3, 2]]
        deltas.append(d)
        anchors.append(all_anchors[start : start + d.shape[1]])
        start += d.shape[1]
    assert start == len(all_anchors)
    return objectness, deltas, anchors


def test_proposals(reference):
    from tfrcnn.layers.proposal_layer import ProposalLayer

    arch, npz, _ = reference
    for i in range(int(npz["num_images"])):
        objectness, deltas, anchors = _rpn_outputs(npz, i)
        expected = npz[f"img{i}_proposals"][:, [1, 0, 3, 2]]
        pre, post, threshold = RPN_SETTINGS[arch]
        layer = ProposalLayer(
            pre_nms_top_n=pre,
            post_nms_top_n=post,
            nms_iou=0.7,
            min_size=1e-3,
            nms_per_level=True,
            score_threshold=threshold,
        )
        boxes, scores, valid = layer(objectness, deltas, anchors, npz[f"img{i}_image_size"][None])
        boxes, scores = np.asarray(boxes)[0], np.asarray(scores)[0]
        n = int(np.sum(valid))
        assert n == len(expected), f"image {i}: {n} proposals, torchvision {len(expected)}"
        assert_same_proposals(
            boxes[:n], scores[:n], expected, npz[f"img{i}_proposal_scores"], f"{arch} image {i}"
        )


def test_second_stage_on_torchvisions_proposals(reference):
    """ROI Align (torchvision's level mapping, aligned=False, sampling ratio 2), the two fc layers
    over the channel-first flatten, the class logits and box deltas, on torchvision's proposals."""
    from tfrcnn.layers.multilevel_roi_align import MultiLevelROIAlign
    from tfrcnn.layers.rcnn_head import RCNNHead

    arch, npz, modules = reference
    levels = _levels(npz)
    if "mobilenet" in arch:
        roi_levels, min_level = levels[:1], 5  # both FPN outputs are stride 32: ROIs read "0"
    else:
        roi_levels, min_level = levels[:4], 2
    pool = MultiLevelROIAlign(
        (7, 7), sampling_ratio=2, aligned=False, min_level=min_level, method="gather"
    )
    num_classes = modules["roi_heads.box_predictor.cls_score"][0].shape[1] - 1
    head = RCNNHead(num_classes, "fc", (1024, 1024))
    head.build((None, 7, 7, 256))
    head.fcs[0].set_weights(modules["roi_heads.box_head.fc6"])
    head.fcs[1].set_weights(modules["roi_heads.box_head.fc7"])
    head.classifier.set_weights(modules["roi_heads.box_predictor.cls_score"])
    head.regressor.set_weights(modules["roi_heads.box_predictor.bbox_pred"])
    for i in range(int(npz["num_images"])):
        features = [npz[f"img{i}_features_{level}"] for level in roi_levels]
        rois = npz[f"img{i}_proposals"][None, :, [1, 0, 3, 2]]
        pooled = np.asarray(pool(features, rois))
        kept = npz[f"img{i}_pooled"]
        assert_close_relative(pooled[: len(kept)], kept, RTOL, f"{arch} image {i} pooled")
        logits, deltas = head(pooled)
        expected = npz[f"img{i}_class_logits"]
        assert_close_relative(logits, expected, RTOL, f"{arch} image {i} class logits")
        regression = npz[f"img{i}_box_regression"].reshape(len(expected), -1, 4)
        expected = regression[:, 1:][..., [1, 0, 3, 2]]  # no background box; (dy, dx, dh, dw)
        assert_close_relative(deltas, expected, RTOL, f"{arch} image {i} box deltas")


def box_iou(a, b):
    """IoU of every box of ``a`` [N, 4] with every box of ``b`` [M, 4] (any corner order)."""
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def assert_same_detections(
    boxes,
    scores,
    classes,
    expected_boxes,
    expected_scores,
    expected_classes,
    what,
    iou=0.99,
    score_tol=1e-3,
    limit=None,
    score_threshold=None,
):
    """The same detections: each matched one to one with IoU > ``iou``, score within
    ``score_tol``, the same class (boxes in the same corner order on both sides).

    When both sides hold ``limit`` detections (the top-k cut was reached), candidates whose scores
    tie with the cut to within ``score_tol`` may fall on either side of it, so a detection scored
    within ``score_tol`` of the lowest kept score may go unmatched, as long as every unmatched
    torchvision detection sits at the cut too. With ``score_threshold`` (the models' minimum
    detection score), a detection scored within ``score_tol`` of it may likewise be on one side
    only, so the two counts may differ by such detections.
    """
    if score_threshold is None:
        assert len(boxes) == len(expected_boxes), (
            f"{what}: {len(boxes)} detections, torchvision {len(expected_boxes)}"
        )
    overlaps = box_iou(boxes, expected_boxes) if len(boxes) else np.zeros((0, 0))
    unmatched = set(range(len(expected_boxes)))
    at_cut = -np.inf
    if limit is not None and len(boxes) == limit == len(expected_boxes):
        at_cut = min(np.min(scores), np.min(expected_scores)) + score_tol
    if score_threshold is not None:
        at_cut = max(at_cut, score_threshold + score_tol)
    for k in range(len(boxes)):
        candidates = [
            j
            for j in unmatched
            if overlaps[k, j] > iou
            and expected_classes[j] == classes[k]
            and abs(expected_scores[j] - scores[k]) <= score_tol
        ]
        assert candidates or scores[k] <= at_cut, (
            f"{what}: detection {k} (class {classes[k]}, score {scores[k]:.4f}, "
            f"box {boxes[k]}) has no torchvision match"
        )
        if candidates:
            unmatched.discard(max(candidates, key=lambda j: overlaps[k, j]))
    left = [j for j in unmatched if expected_scores[j] > at_cut]
    assert not left, (
        f"{what}: torchvision detections {left} (scores {expected_scores[left]}) have no match"
    )


def test_detections_on_torchvisions_second_stage(reference):
    """The decoder on torchvision's proposals, class logits and box regression: per-class decode
    with weights (10, 10, 5, 5), clip, score > 0.05, sides >= 0.01, per-class NMS 0.5, top 100,
    boxes mapped back with one ratio an axis."""
    from tfrcnn.layers.detection_decoder import DetectionDecoder

    arch, npz, modules = reference
    num_classes = modules["roi_heads.box_predictor.cls_score"][0].shape[1] - 1
    decoder = DetectionDecoder(num_classes, (10.0, 10.0, 5.0, 5.0), 0.05, 0.5, 100, min_size=1e-2)
    for i in range(int(npz["num_images"])):
        logits = npz[f"img{i}_class_logits"]
        regression = npz[f"img{i}_box_regression"].reshape(len(logits), -1, 4)
        deltas = regression[:, 1:][..., [1, 0, 3, 2]]
        rois = npz[f"img{i}_proposals"][:, [1, 0, 3, 2]]
        size = npz[f"img{i}_image_size"].astype(np.float32)
        original = np.array(npz[f"img{i}_image"].shape[:2], np.float32)
        out = decoder(
            logits[None],
            deltas[None],
            rois[None],
            np.ones((1, len(rois)), bool),
            size[None].astype(np.int32),
            (size / original)[None],
            original[None].astype(np.int32),
        )
        n = int(out["num_detections"][0])
        assert_same_detections(
            np.asarray(out["detection_boxes"])[0, :n][:, [1, 0, 3, 2]],
            np.asarray(out["detection_scores"])[0, :n],
            np.asarray(out["detection_classes"])[0, :n] + 1,  # user class c = torchvision row c + 1
            npz[f"img{i}_boxes"],
            npz[f"img{i}_scores"],
            npz[f"img{i}_labels"],
            f"{arch} image {i}",
            limit=100,
        )
