"""The settings that make the proposal layer and the decoder compute what torchvision computes."""

import numpy as np

from tfrcnn.layers.detection_decoder import DetectionDecoder
from tfrcnn.layers.proposal_layer import ProposalLayer


def _level(logit_values, boxes):
    logits = np.array(logit_values, np.float32)[None]
    objectness = np.stack([np.zeros_like(logits), logits], -1)
    return objectness, np.zeros((1, len(boxes), 4), np.float32), np.array(boxes, np.float32)


def test_nms_per_level_and_score_threshold():
    # the same box on two levels: one NMS over all levels keeps one, per-level NMS keeps both
    o0, d0, a0 = _level([2.0, -3.0], [[0, 0, 10, 10], [20, 20, 30, 30]])
    o1, d1, a1 = _level([1.0], [[0, 0, 10, 10]])
    image_shape = np.array([[64, 64]], np.int32)
    for per_level, expected in ((False, 2), (True, 3)):
        layer = ProposalLayer(10, 5, 0.7, nms_per_level=per_level)
        _, scores, valid = layer([o0, o1], [d0, d1], [a0, a1], image_shape)
        assert int(np.sum(valid)) == expected
    # sigmoid(-3) = 0.047 < 0.05: dropped by the threshold
    layer = ProposalLayer(10, 5, 0.7, nms_per_level=True, score_threshold=0.05)
    _, scores, valid = layer([o0, o1], [d0, d1], [a0, a1], image_shape)
    np.testing.assert_allclose(
        np.asarray(scores)[0, :2], [1 / (1 + np.exp(-2)), 1 / (1 + np.exp(-1))], rtol=1e-6
    )
    assert int(np.sum(valid)) == 2


def test_decoder_per_axis_scale_and_min_size():
    # one class; ROI 1: a 100 x 200 box, zero deltas; ROI 2: a 0.005-pixel-high box
    logits = np.array([[[0.0, 5.0], [0.0, 5.0]]], np.float32)
    deltas = np.zeros((1, 2, 1, 4), np.float32)
    rois = np.array([[[10, 20, 110, 220], [50, 50, 50.005, 60]]], np.float32)
    valid = np.ones((1, 2), bool)
    decoder = DetectionDecoder(1, min_size=1e-2)
    out = decoder(
        logits,
        deltas,
        rois,
        valid,
        np.array([[300, 400]], np.int32),
        np.array([[2.0, 4.0]], np.float32),
        np.array([[150, 100]], np.int32),
    )
    assert int(out["num_detections"][0]) == 1  # the thin box is dropped
    # y divided by 2, x by 4
    np.testing.assert_allclose(out["detection_boxes"][0, 0], [5, 5, 55, 55], rtol=1e-6)
    out = DetectionDecoder(1)(
        logits, deltas, rois, valid, np.array([[300, 400]], np.int32), np.array([2.0], np.float32)
    )
    assert int(out["num_detections"][0]) == 2  # min_size 0 keeps any non-empty box
    np.testing.assert_allclose(out["detection_boxes"][0, 0], [5, 10, 55, 110], rtol=1e-6)
    assert DetectionDecoder.from_config(decoder.get_config()).min_size == 1e-2


def test_rpn_head_extra_convs_and_conv_head_batch_norm():
    import keras

    from tfrcnn.layers.rcnn_head import RCNNHead
    from tfrcnn.layers.rpn_head import RPNHead

    head = RPNHead(3, channels=8, num_convs=2)
    x = np.random.default_rng(0).normal(size=(1, 5, 6, 8)).astype("float32")
    scores, _ = head(x, return_maps=True)
    assert len(head.extra_convs) == 1 and scores.shape == (1, 5, 6, 6)
    # by hand: relu(conv2(relu(conv1(x)))) then the 1x1 objectness conv
    y = np.maximum(np.asarray(head.extra_convs[0](head.conv(x))), 0)
    np.testing.assert_allclose(scores, np.asarray(head.objectness(y)), rtol=1e-5, atol=1e-6)
    clone = RPNHead.from_config(head.get_config())
    assert clone.num_convs == 2
    rcnn = RCNNHead(2, "conv", units=(4,), conv_channels=(8,), conv_batch_norm=True)
    rcnn.build((None, 3, 3, 8))
    assert not rcnn.convs[0].use_bias and len(rcnn.norms) == 1
    assert isinstance(rcnn.norms[0], keras.layers.BatchNormalization)
    assert rcnn.norms[0].epsilon == 1e-5
    assert RCNNHead.from_config(rcnn.get_config()).conv_batch_norm
