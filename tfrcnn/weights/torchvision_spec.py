"""The tensors of torchvision's Faster R-CNN and ImageNet checkpoints, by name and shape, and their
conversion to Keras layouts module by module.

:func:`expected_tensors` writes out, from the architecture alone, every tensor a checkpoint of one
of :data:`ARCHITECTURES` holds (``backbone.body.layer1.0.conv1.weight [64, 64, 1, 1]`` ...);
:func:`check_state_dict` compares a loaded state dict with it and fails with one line naming the
first missing, unexpected or mis-shaped tensor; :func:`convert_modules` turns each torchvision
module (a convolution, a batch norm, a linear layer) into the list of arrays its Keras layer takes
(:mod:`tfrcnn.weights.layout`), keyed by the module's torchvision name.

Batch norm: ``num_batches_tracked`` (present in checkpoints saved from ``nn.BatchNorm2d``, absent
from the published ones, which use ``FrozenBatchNorm2d``) carries no weight and is ignored.
"""

import collections

import numpy as np

from tfrcnn.weights import layout

DETECTORS = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
)
CLASSIFIERS = ("resnet50", "mobilenet_v3_large")
ARCHITECTURES = DETECTORS + CLASSIFIERS

FPN_CHANNELS = 256
ROI_SIZE = 7
REPRESENTATION = 1024
BN_TENSORS = ("weight", "bias", "running_mean", "running_var")
IGNORED_SUFFIXES = (".num_batches_tracked",)

# ResNet50: (blocks, bottleneck width) of layer1 .. layer4; the output is 4x the width.
RESNET50_LAYERS = ((3, 64), (4, 128), (6, 256), (3, 512))
# MobileNetV3-Large (torchvision's table): input, kernel, expanded, output, squeeze-excite, stride.
MOBILENET_V3_LARGE = (
    (16, 3, 16, 16, False, 1),
    (16, 3, 64, 24, False, 2),
    (24, 3, 72, 24, False, 1),
    (24, 5, 72, 40, True, 2),
    (40, 5, 120, 40, True, 1),
    (40, 5, 120, 40, True, 1),
    (40, 3, 240, 80, False, 2),
    (80, 3, 200, 80, False, 1),
    (80, 3, 184, 80, False, 1),
    (80, 3, 184, 80, False, 1),
    (80, 3, 480, 112, True, 1),
    (112, 3, 672, 112, True, 1),
    (112, 5, 672, 160, True, 2),
    (160, 5, 960, 160, True, 1),
    (160, 5, 960, 160, True, 1),
)
MOBILENET_LAST_CHANNELS = 960
# The detector's FPN reads the output of features[13] (160 channels) and features[16] (960).
MOBILENET_FPN_INPUTS = (160, 960)


def _make_divisible(value, divisor=8):
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class _Tensors:
    """Collects ``name -> shape`` and ``module -> kind`` while the architecture is written out."""

    def __init__(self):
        self.shapes = collections.OrderedDict()
        self.kinds = collections.OrderedDict()

    def conv(self, name, out, inp, k, bias=False, depthwise=False):
        self.shapes[f"{name}.weight"] = (out, 1 if depthwise else inp, k, k)
        if bias:
            self.shapes[f"{name}.bias"] = (out,)
        self.kinds[name] = "depthwise" if depthwise else "conv"

    def bn(self, name, channels):
        for t in BN_TENSORS:
            self.shapes[f"{name}.{t}"] = (channels,)
        self.kinds[name] = "batch_norm"

    def linear(self, name, out, inp, kind="dense"):
        self.shapes[f"{name}.weight"] = (out, inp)
        self.shapes[f"{name}.bias"] = (out,)
        self.kinds[name] = kind


def _resnet50_body(t, prefix):
    t.conv(f"{prefix}conv1", 64, 3, 7)
    t.bn(f"{prefix}bn1", 64)
    inp = 64
    for i, (blocks, width) in enumerate(RESNET50_LAYERS, start=1):
        for b in range(blocks):
            p = f"{prefix}layer{i}.{b}."
            t.conv(p + "conv1", width, inp, 1)
            t.bn(p + "bn1", width)
            t.conv(p + "conv2", width, width, 3)
            t.bn(p + "bn2", width)
            t.conv(p + "conv3", 4 * width, width, 1)
            t.bn(p + "bn3", 4 * width)
            if b == 0:
                t.conv(p + "downsample.0", 4 * width, inp, 1)
                t.bn(p + "downsample.1", 4 * width)
            inp = 4 * width
    return inp


def _mobilenet_body(t, prefix):
    t.conv(f"{prefix}0.0", 16, 3, 3)
    t.bn(f"{prefix}0.1", 16)
    for i, (inp, k, exp, out, se, _) in enumerate(MOBILENET_V3_LARGE, start=1):
        p = f"{prefix}{i}.block."
        j = 0
        if exp != inp:
            t.conv(f"{p}{j}.0", exp, inp, 1)
            t.bn(f"{p}{j}.1", exp)
            j += 1
        t.conv(f"{p}{j}.0", exp, exp, k, depthwise=True)
        t.bn(f"{p}{j}.1", exp)
        j += 1
        if se:
            squeeze = _make_divisible(exp // 4)
            t.conv(f"{p}{j}.fc1", squeeze, exp, 1, bias=True)
            t.conv(f"{p}{j}.fc2", exp, squeeze, 1, bias=True)
            j += 1
        t.conv(f"{p}{j}.0", out, exp, 1)
        t.bn(f"{p}{j}.1", out)
    last = len(MOBILENET_V3_LARGE) + 1
    t.conv(f"{prefix}{last}.0", MOBILENET_LAST_CHANNELS, MOBILENET_V3_LARGE[-1][3], 1)
    t.bn(f"{prefix}{last}.1", MOBILENET_LAST_CHANNELS)


def _fpn(t, in_channels, normed):
    for block, k in (("inner_blocks", 1), ("layer_blocks", 3)):
        for i, c in enumerate(in_channels):
            inp = c if block == "inner_blocks" else FPN_CHANNELS
            name = f"backbone.fpn.{block}.{i}"
            t.conv(f"{name}.0", FPN_CHANNELS, inp, k, bias=not normed)
            if normed:
                t.bn(f"{name}.1", FPN_CHANNELS)


def expected_tensors(arch, num_classes=91):
    """``(shapes, kinds)``: every tensor name -> shape of a torchvision checkpoint of ``arch``, and
    every module name -> ``"conv"``, ``"depthwise"``, ``"batch_norm"``, ``"dense"``,
    ``"flatten_dense"`` (the first fc after ROI pooling), ``"rpn_objectness"``, ``"rpn_deltas"``,
    ``"class_logits"`` or ``"box_deltas"``."""
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"unknown torchvision architecture {arch!r}; known: {', '.join(ARCHITECTURES)}"
        )
    t = _Tensors()
    if arch == "resnet50":
        t.linear("fc", 1000, _resnet50_body(t, ""))
        return t.shapes, t.kinds
    if arch == "mobilenet_v3_large":
        _mobilenet_body(t, "features.")
        t.linear("classifier.0", 1280, MOBILENET_LAST_CHANNELS)
        t.linear("classifier.3", 1000, 1280)
        return t.shapes, t.kinds
    v2 = arch.endswith("_v2")
    if "resnet50" in arch:
        _resnet50_body(t, "backbone.body.")
        _fpn(t, (256, 512, 1024, 2048), normed=v2)
        num_anchors = 3
    else:
        _mobilenet_body(t, "backbone.body.")
        _fpn(t, MOBILENET_FPN_INPUTS, normed=False)
        num_anchors = 15
    for i in range(2 if v2 else 1):
        t.conv(f"rpn.head.conv.{i}.0", FPN_CHANNELS, FPN_CHANNELS, 3, bias=True)
    t.conv("rpn.head.cls_logits", num_anchors, FPN_CHANNELS, 1, bias=True)
    t.kinds["rpn.head.cls_logits"] = "rpn_objectness"
    t.conv("rpn.head.bbox_pred", 4 * num_anchors, FPN_CHANNELS, 1, bias=True)
    t.kinds["rpn.head.bbox_pred"] = "rpn_deltas"
    flat = FPN_CHANNELS * ROI_SIZE * ROI_SIZE
    if v2:
        for i in range(4):
            t.conv(f"roi_heads.box_head.{i}.0", FPN_CHANNELS, FPN_CHANNELS, 3)
            t.bn(f"roi_heads.box_head.{i}.1", FPN_CHANNELS)
        t.linear("roi_heads.box_head.5", REPRESENTATION, flat, kind="flatten_dense")
    else:
        t.linear("roi_heads.box_head.fc6", REPRESENTATION, flat, kind="flatten_dense")
        t.linear("roi_heads.box_head.fc7", REPRESENTATION, REPRESENTATION)
    t.linear("roi_heads.box_predictor.cls_score", num_classes, REPRESENTATION, "class_logits")
    t.linear("roi_heads.box_predictor.bbox_pred", 4 * num_classes, REPRESENTATION, "box_deltas")
    return t.shapes, t.kinds


def num_classes_of(state, source="checkpoint"):
    """The class count (background included, as torchvision counts) read from ``cls_score``."""
    weight = state.get("roi_heads.box_predictor.cls_score.weight")
    if weight is None or np.ndim(weight) != 2:
        raise ValueError(
            f"{source}: no 'roi_heads.box_predictor.cls_score.weight' [classes, "
            f"{REPRESENTATION}]; not a torchvision Faster R-CNN checkpoint"
        )
    return int(weight.shape[0])


def check_state_dict(state, arch, source="checkpoint"):
    """Checks every tensor of ``state`` against :func:`expected_tensors`; returns the class count
    (detectors, background included) or ``None`` (classifiers).

    Raises:
        ValueError: one line naming the first missing, unexpected or mis-shaped tensor (and how
            many more there are).
    """
    classes = num_classes_of(state, source) if arch in DETECTORS else None
    shapes, _ = expected_tensors(arch, classes or 91)
    given = {k: tuple(np.shape(v)) for k, v in state.items() if not k.endswith(IGNORED_SUFFIXES)}
    missing = [k for k in shapes if k not in given]
    unexpected = [k for k in given if k not in shapes]
    wrong = [k for k in shapes if k in given and given[k] != shapes[k]]
    hint = f"is it a torchvision {arch} checkpoint?"
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(
            f"{source}: tensor '{missing[0]}' {list(shapes[missing[0]])} is missing{more}; {hint}"
        )
    if wrong:
        k = wrong[0]
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise ValueError(
            f"{source}: tensor '{k}' has shape {list(given[k])}, expected "
            f"{list(shapes[k])}{more}; {hint}"
        )
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise ValueError(
            f"{source}: unexpected tensor '{unexpected[0]}' "
            f"{list(given[unexpected[0]])}{more}; {hint}"
        )
    return classes


def convert_modules(state, arch, class_rows=None, source="checkpoint"):
    """Every module of a checked torchvision state dict in Keras layout.

    Args:
        state: ``{name: np.ndarray}`` (:func:`tfrcnn.weights.pth.load_state_dict`).
        arch: one of :data:`ARCHITECTURES`.
        class_rows: detectors: the torchvision row of each user class (default: rows
            ``1 .. classes - 1``, every class but background).
        source: the checkpoint's name, for messages.

    Returns:
        ``OrderedDict`` module name -> list of arrays in the order its Keras layer stores them:
        ``[kernel]`` or ``[kernel, bias]`` (convolutions, dense layers),
        ``[gamma, beta, moving_mean, moving_variance]`` (batch norm).
    """
    classes = check_state_dict(state, arch, source)
    _, kinds = expected_tensors(arch, classes or 91)
    if classes is not None and class_rows is None:
        class_rows = tuple(range(1, classes))
    modules = collections.OrderedDict()
    for name, kind in kinds.items():
        w = state.get(f"{name}.weight")
        b = state.get(f"{name}.bias")
        if kind == "batch_norm":
            arrays = layout.batch_norm(
                w, b, state[f"{name}.running_mean"], state[f"{name}.running_var"]
            )
        elif kind == "conv":
            arrays = [layout.conv_kernel(w, name)] + ([b] if b is not None else [])
        elif kind == "depthwise":
            arrays = [layout.depthwise_kernel(w, name)]
        elif kind == "dense":
            arrays = [layout.dense_kernel(w, name), b]
        elif kind == "flatten_dense":
            arrays = [layout.flatten_dense_kernel(w, FPN_CHANNELS, ROI_SIZE, ROI_SIZE, name), b]
        elif kind == "rpn_objectness":
            arrays = list(layout.rpn_objectness(w, b))
        elif kind == "rpn_deltas":
            arrays = list(layout.rpn_deltas(w, b))
        elif kind == "class_logits":
            arrays = list(layout.class_logits(w, b, class_rows))
        else:  # box_deltas
            arrays = list(layout.box_deltas(w, b, class_rows))
        modules[name] = [np.asarray(a, np.float32) for a in arrays]
    return modules
