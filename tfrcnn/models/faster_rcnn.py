"""FasterRCNN: the two-stage detector of Ren et al. (2015) as a Keras 3 model.

Shapes: ``B`` images, ``H x W`` padded network input, ``M`` ground-truth boxes an image (padded with
class -1), ``N`` anchors (all levels), ``R`` proposals an image, ``S`` sampled ROIs an image,
``C`` user classes, ``D`` detections an image.

The graph is two functional Keras models built from the same layer instances:

- the inference graph: ``images, image_shape, image_scale -> backbone (-> FPN) -> RPNHead ->
  ProposalLayer (test settings) -> ROI op -> RCNNHead -> DetectionDecoder``;
- the training graph: the same trunk plus ``RPNTargetAssigner`` and ``ROISampler``, with
  ``gt_boxes`` / ``gt_classes`` as extra inputs, returning what ``compute_loss`` needs.

``FasterRCNN.call`` picks the graph: ground truth in the inputs -> training graph, otherwise
detections. It also accepts a plain image tensor of any size (resized and padded inside).
"""

import math

import keras
import tensorflow as tf

from tfrcnn import accel
from tfrcnn import config as presets
from tfrcnn.backbones import build_backbone, build_resnet50_c5_head
from tfrcnn.layers.anchor_generator import AnchorGenerator
from tfrcnn.layers.detection_decoder import DetectionDecoder
from tfrcnn.layers.image_resizer import ImageResizer
from tfrcnn.layers.input_checks import InputChecks
from tfrcnn.layers.multilevel_roi_align import MultiLevelROIAlign
from tfrcnn.layers.precise_roi_pooling import PreciseROIPooling
from tfrcnn.layers.proposal_layer import ProposalLayer
from tfrcnn.layers.rcnn_head import RCNNHead
from tfrcnn.layers.roi_align import ROIAlign
from tfrcnn.layers.roi_pooling import ROIPooling
from tfrcnn.layers.roi_sampler import ROISampler
from tfrcnn.layers.rpn_head import RPNHead
from tfrcnn.layers.rpn_targets import RPNTargetAssigner
from tfrcnn.ops.gradients import backward_after
from tfrcnn.ops.losses import rcnn_losses, rpn_losses

TRAINING_SCHEMES = ("approximate_joint", "non_approximate_joint", "alternating")
ROI_OPS = ("roi_pool", "roi_align", "precise_roi_pool", "multilevel_roi_align")
LOSS_TERMS = ("rpn_cls_loss", "rpn_box_loss", "rcnn_cls_loss", "rcnn_box_loss")
INPUT_KEYS = ("images", "image_shape", "image_scale", "original_shape")

# Every setting a preset provides; ``None`` in the constructor means "the preset's value".
_SETTINGS = (
    "backbone",
    "backbone_weights",
    "trainable_backbone",
    "fpn_channels",
    "anchor_scales",
    "anchor_aspect_ratios",
    "rpn_channels",
    "rpn_positive_iou",
    "rpn_negative_iou",
    "rpn_batch_size_per_image",
    "rpn_positive_fraction",
    "rpn_allowed_border",
    "rpn_nms_iou",
    "rpn_min_size",
    "rpn_box_weights",
    "train_pre_nms_top_n",
    "train_post_nms_top_n",
    "test_pre_nms_top_n",
    "test_post_nms_top_n",
    "roi_op",
    "roi_output_size",
    "roi_sampling_ratio",
    "roi_aligned",
    "roi_method",
    "head_type",
    "head_units",
    "head_conv_channels",
    "head_dropout",
    "rcnn_batch_size_per_image",
    "rcnn_positive_fraction",
    "rcnn_positive_iou",
    "rcnn_negative_iou_high",
    "rcnn_negative_iou_low",
    "rcnn_box_weights",
    "add_gt_to_proposals",
    "detection_score_threshold",
    "detection_nms_iou",
    "max_detections",
    "rpn_box_loss_weight",
    "rpn_box_normalizer",
    "rcnn_box_loss_weight",
    "rpn_smooth_l1_beta",
    "rcnn_smooth_l1_beta",
    "training_scheme",
    "image_min_side",
    "image_max_side",
    "size_divisor",
    "proposal_source",
    "num_external_proposals",
    "accelerate",
    "input_checks",
    "max_image_pixels",
    "image_resize_rounding",
    "image_pad_value",
    "anchor_offset",
    "anchor_style",
    "rpn_nms_per_level",
    "rpn_score_threshold",
    "detection_min_size",
    "detection_scale_per_axis",
    "roi_feature_levels",
    "rpn_num_convs",
    "head_conv_batch_norm",
)
_DEFAULTS = dict(
    backbone_weights=None,
    trainable_backbone=True,
    fpn_channels=256,
    roi_method="auto",
    head_conv_channels=(),
    head_dropout=0.0,
    proposal_source="rpn",
    num_external_proposals=2000,
    accelerate="auto",
    input_checks=True,
    max_image_pixels=40_000_000,
    image_resize_rounding="round",
    image_pad_value=0.0,
    anchor_offset=0.5,
    anchor_style="exact",
    rpn_nms_per_level=False,
    rpn_score_threshold=0.0,
    detection_min_size=0.0,
    detection_scale_per_axis=False,
    roi_feature_levels=0,
    rpn_num_convs=1,
    head_conv_batch_norm=False,
)
ANCHOR_STYLES = ("exact", "torchvision")


def _as_tuple(value):
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuple(v) for v in value)
    return value


@keras.saving.register_keras_serializable(package="tfrcnn")
class FasterRCNN(keras.Model):
    """Faster R-CNN with every setting a constructor argument.

    Args:
        num_classes: user classes (ids ``0 .. num_classes - 1``; background is internal).
        class_names: optional names of the classes (kept in the config, used by tools).
        preset: the preset whose values fill every setting left as ``None`` (default ``"tiny"``;
            see :mod:`tfrcnn.config`: ``vgg16``, ``zf``, ``resnet50_c4``, ``resnet50_fpn``,
            ``mobilenet_v3_fpn``, ``tiny``).
        backbone, backbone_weights, trainable_backbone, fpn_channels: the feature extractor
            (``backbone_weights``: ``None`` = random, a local weights file, or ``"imagenet"``
            when the Keras cache holds it; nothing downloads).
        anchor_scales, anchor_aspect_ratios: anchors (one tuple, or one tuple a pyramid level).
        anchor_offset, anchor_style: the centre of cell ``(i, j)`` is ``(i + offset) * stride``
            (0.5: the cell centre; torchvision: 0); ``"exact"`` anchors, or ``"torchvision"``:
            base anchors rounded to whole pixels and the stride of each level taken as
            ``padded image size // grid size``.
        roi_feature_levels: ``multilevel_roi_align`` pools from the first ``n`` pyramid levels
            (0: every level but the last, the RPN-only pooled one); torchvision's MobileNetV3 FPN
            pools from its first map only (1), its two maps having the same stride.
        rpn_nms_per_level, rpn_score_threshold: proposals: NMS within each pyramid level only
            (torchvision) and the minimum object probability kept (torchvision's
            ``rpn_score_thresh``).
        rpn_*: RPN width, matcher, sampler, NMS, proposal min size, delta weights, losses.
        train_pre_nms_top_n, train_post_nms_top_n, test_pre_nms_top_n, test_post_nms_top_n:
            proposals before / after NMS in training and at test time.
        roi_op: ``"roi_pool"``, ``"roi_align"``, ``"precise_roi_pool"`` or
            ``"multilevel_roi_align"`` (FPN backbones); roi_output_size, roi_sampling_ratio,
            roi_aligned, roi_method (``"auto"``: the fastest computation of ROI Align here;
            ``"crop_and_resize"``; ``"gather"`` for TFLite-friendly ROI Align).
        rpn_num_convs: the RPN head's 3x3 convolutions (torchvision's v2: 2).
        head_conv_batch_norm: batch norm after each conv of a ``"conv"`` head (torchvision's v2).
        head_type, head_units, head_conv_channels, head_dropout: the detection head
            (``"fc"``, ``"conv"``, or ``"resnet_c5"`` for the C4 preset).
        rcnn_*: ROI sampling (S an image, foreground fraction and IoU ranges), delta weights,
            losses.
        detection_score_threshold, detection_nms_iou, max_detections: the decoder;
            detection_min_size drops boxes with a side not above it (torchvision: 0.01),
            detection_scale_per_axis maps boxes back to the original image with one ratio an
            axis (``image_shape / original_shape``, as torchvision), else with ``image_scale``.
        training_scheme: ``"approximate_joint"`` (proposals are constants for the second stage),
            ``"non_approximate_joint"`` (the second stage's loss also flows into the proposal
            coordinates through the ROI op) or ``"alternating"`` (the paper's 4-step scheme, run by
            :func:`tfrcnn.training.train_alternating`).
        image_min_side, image_max_side, size_divisor: resizing of raw images passed to ``predict``;
            image_resize_rounding (``"round"`` or torchvision's ``"floor"``) and image_pad_value
            (one value or one a channel; torchvision's normalised zero padding is the ImageNet
            mean times 255 here, padding being done on raw pixels).
        proposal_source: ``"rpn"`` (Faster R-CNN) or ``"external"`` (Fast R-CNN: the second stage
            runs on proposals given as an input ``"proposals" [B, num_external_proposals, 4]`` in
            original-image pixels, zero-padded; e.g. from selective search).
        num_external_proposals: the fixed number of external proposals an image.
        accelerate: ``"auto"`` (default) or ``False``: ``"auto"`` runs the CPU acceleration
            (:func:`tfrcnn.accel.apply`: the same function computed faster, in training,
            inference and the SavedModel export); ``False`` computes with the plain layers.
        input_checks: ``True`` (default) checks the value of every input in the graph (class ids
            in range or ``-1``, finite ordered boxes, finite pixels, valid regions) and raises an
            error naming the input, element and value (:class:`tfrcnn.layers.InputChecks`;
            docs/input_checks.md); ``False`` skips these value checks (dtype and rank checks stay).
        max_image_pixels: the decoded-size limit (height x width, default 40 megapixels) of the
            SavedModel's ``serve_encoded``: larger images are refused from their header, before
            decoding (:mod:`tfrcnn.ops.image_header`).
        dtype: the Keras dtype policy of every sub-layer, e.g. ``"mixed_bfloat16"`` (default: the
            global policy). Coordinates, anchors, proposals and losses stay float32; the policy
            is saved with the model. See :mod:`tfrcnn.training.precision`.

    Inputs:
        - a dict ``{"images": [B, H, W, 3] uint8/float pixels 0..255, "image_shape": int [B, 2]
          (valid region), "image_scale": [B] (optional, resized = original * scale)}`` as the
          ``tfrcnn.data`` pipeline yields it (``"original_shape"`` int [B, 2], optional, bounds the
          returned boxes), plus ``"gt_boxes" [B, M, 4]`` and
          ``"gt_classes" [B, M]`` (``-1`` padding) for training;
        - or a plain image batch ``[B, H, W, 3]`` of any size: resized to ``image_min_side`` /
          ``image_max_side`` and padded inside the model.

        Every input is checked in the graph first (:class:`tfrcnn.layers.InputChecks`): a float
        class id, an id outside ``0 .. num_classes - 1`` other than ``-1``, a non-finite or inverted
        box, or a non-finite pixel raises an error naming the input, element and value; in
        particular ``predict`` on an image holding NaN or an infinity raises
        ``InvalidArgumentError`` instead of returning detections.

    Outputs (inference): ``detection_boxes [B, D, 4]`` (``[y1, x1, y2, x2]``, original image
    pixels), ``detection_scores [B, D]``, ``detection_classes`` int32 ``[B, D]`` (``-1`` padding),
    ``num_detections`` int32 ``[B]``.

    Example:
        >>> model = FasterRCNN.from_preset("tiny", num_classes=3)
        >>> model.compile(optimizer=keras.optimizers.Adam(1e-3))
        >>> model.fit(train_dataset, epochs=10)              # dicts from tfrcnn.data.make_dataset
        >>> model.predict(images)["detection_boxes"]          # raw uint8 images of any size
    """

    def __init__(
        self,
        num_classes,
        class_names=None,
        preset="tiny",
        backbone=None,
        backbone_weights=None,
        trainable_backbone=None,
        fpn_channels=None,
        anchor_scales=None,
        anchor_aspect_ratios=None,
        rpn_channels=None,
        rpn_positive_iou=None,
        rpn_negative_iou=None,
        rpn_batch_size_per_image=None,
        rpn_positive_fraction=None,
        rpn_allowed_border=None,
        rpn_nms_iou=None,
        rpn_min_size=None,
        rpn_box_weights=None,
        train_pre_nms_top_n=None,
        train_post_nms_top_n=None,
        test_pre_nms_top_n=None,
        test_post_nms_top_n=None,
        roi_op=None,
        roi_output_size=None,
        roi_sampling_ratio=None,
        roi_aligned=None,
        roi_method=None,
        head_type=None,
        head_units=None,
        head_conv_channels=None,
        head_dropout=None,
        rcnn_batch_size_per_image=None,
        rcnn_positive_fraction=None,
        rcnn_positive_iou=None,
        rcnn_negative_iou_high=None,
        rcnn_negative_iou_low=None,
        rcnn_box_weights=None,
        add_gt_to_proposals=None,
        detection_score_threshold=None,
        detection_nms_iou=None,
        max_detections=None,
        rpn_box_loss_weight=None,
        rpn_box_normalizer=None,
        rcnn_box_loss_weight=None,
        rpn_smooth_l1_beta=None,
        rcnn_smooth_l1_beta=None,
        training_scheme=None,
        image_min_side=None,
        image_max_side=None,
        size_divisor=None,
        proposal_source=None,
        num_external_proposals=None,
        accelerate=None,
        input_checks=None,
        max_image_pixels=None,
        image_resize_rounding=None,
        image_pad_value=None,
        anchor_offset=None,
        anchor_style=None,
        rpn_nms_per_level=None,
        rpn_score_threshold=None,
        detection_min_size=None,
        detection_scale_per_axis=None,
        roi_feature_levels=None,
        rpn_num_convs=None,
        head_conv_batch_norm=None,
        **kwargs,
    ):
        given = dict(locals())
        kwargs.setdefault("name", "faster_rcnn")
        super().__init__(**kwargs)
        base = presets.get_preset(preset or "tiny")
        settings = {}
        for key in _SETTINGS:
            value = given[key]
            if value is None and key != "backbone_weights":
                value = base.get(key, _DEFAULTS.get(key))
            if value is None and key == "backbone_weights":
                value = base.get(key)
            settings[key] = _as_tuple(value)
        if settings["rpn_allowed_border"] is not None and settings["rpn_allowed_border"] < 0:
            settings["rpn_allowed_border"] = None
        self.num_classes = int(num_classes)
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.class_names = None if class_names is None else tuple(str(c) for c in class_names)
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{len(self.class_names)} class names given for num_classes={self.num_classes}"
            )
        self.preset = preset or "tiny"
        self.settings = settings
        for key, value in settings.items():
            setattr(self, key, value)
        self._validate()
        self.input_checker = InputChecks(self.num_classes, enabled=self.input_checks)
        # Multipliers of the four loss terms; alternating training switches terms off.
        self.loss_term_weights = {name: 1.0 for name in LOSS_TERMS}
        self.loss_trackers = {name: keras.metrics.Mean(name=name) for name in LOSS_TERMS}
        # Every sub-layer takes the model's policy (``dtype="mixed_bfloat16"``, or the global one):
        # build them under it, so that a saved mixed-precision model loads mixed again.
        previous = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy(self.dtype_policy.name)
        try:
            self._build_layers()
            self.training_graph = self._build_graph(training=True)
            self.inference_graph = self._build_graph(training=False)
        finally:
            keras.mixed_precision.set_global_policy(previous)
        if self.accelerate == "auto":
            accel.apply(self)
        # Every weight exists now (tracing the graphs built their layers). The weightless layers
        # called outside them are marked built too, so Keras never runs a symbolic batch through
        # the model to build it: under a distribution strategy that batch is the replicas' mean,
        # whose integer inputs (image_shape, gt_classes) have become floats the checks refuse.
        for layer in self._flatten_layers(include_self=False):
            if not layer.built and not layer.weights:
                layer.built = True
        self.built = True

    # ----------------------------------------------------------------------------------------
    # construction
    def _validate(self):
        if self.accelerate not in ("auto", False):
            raise ValueError(f"accelerate must be 'auto' or False, got {self.accelerate!r}")
        if self.training_scheme not in TRAINING_SCHEMES:
            raise ValueError(
                f"training_scheme must be one of {TRAINING_SCHEMES}, got {self.training_scheme!r}"
            )
        if self.roi_op not in ROI_OPS:
            raise ValueError(f"roi_op must be one of {ROI_OPS}, got {self.roi_op!r}")
        if self.anchor_style not in ANCHOR_STYLES:
            raise ValueError(
                f"anchor_style must be one of {ANCHOR_STYLES}, got {self.anchor_style!r}"
            )
        if self.proposal_source not in ("rpn", "external"):
            raise ValueError(
                f"proposal_source must be 'rpn' or 'external', got {self.proposal_source!r}"
            )
        if self.training_scheme == "non_approximate_joint" and self.roi_op == "roi_pool":
            raise ValueError(
                "non_approximate_joint training needs an ROI op that is differentiable with respect "
                "to the box coordinates: use roi_op='roi_align', 'precise_roi_pool' or "
                "'multilevel_roi_align' (ROI pooling rounds coordinates, so its box gradient is 0)"
            )

    def _build_layers(self):
        self.resizer = ImageResizer(
            self.image_min_side,
            self.image_max_side,
            self.size_divisor,
            rounding=self.image_resize_rounding,
            pad_value=self.image_pad_value,
            name="image_resizer",
        )
        self.backbone_model, strides = build_backbone(
            self.backbone,
            weights=self.backbone_weights,
            trainable=self.trainable_backbone,
            fpn_channels=self.fpn_channels,
        )
        self.strides = tuple(int(s) for s in strides)
        levels = len(self.strides)
        scales = self.anchor_scales
        if not isinstance(scales[0], (list, tuple)):
            scales = (tuple(scales),) * levels
        if len(scales) != levels:
            raise ValueError(
                f"anchor_scales gives {len(scales)} levels but backbone "
                f"{self.backbone!r} has {levels} (strides {self.strides})"
            )
        self.anchor_generators = [
            AnchorGenerator(
                stride,
                level_scales,
                self.anchor_aspect_ratios,
                offset=self.anchor_offset,
                torchvision=self.anchor_style == "torchvision",
                name=f"anchors_{i}",
            )
            for i, (stride, level_scales) in enumerate(zip(self.strides, scales))
        ]
        counts = {g.num_anchors for g in self.anchor_generators}
        if len(counts) != 1:
            raise ValueError(
                "every pyramid level needs the same number of anchors a location "
                f"(the RPN head is shared); got {sorted(counts)}"
            )
        self.num_anchors = counts.pop()
        self.rpn_head = RPNHead(
            self.num_anchors, self.rpn_channels, num_convs=self.rpn_num_convs, name="rpn_head"
        )
        self.rpn_targets = RPNTargetAssigner(
            self.rpn_positive_iou,
            self.rpn_negative_iou,
            self.rpn_batch_size_per_image,
            self.rpn_positive_fraction,
            self.rpn_allowed_border,
            self.rpn_box_weights,
            name="rpn_targets",
        )
        self.train_proposals = ProposalLayer(
            self.train_pre_nms_top_n,
            self.train_post_nms_top_n,
            self.rpn_nms_iou,
            self.rpn_min_size,
            self.rpn_box_weights,
            nms_per_level=self.rpn_nms_per_level,
            score_threshold=self.rpn_score_threshold,
            name="train_proposals",
        )
        self.test_proposals = ProposalLayer(
            self.test_pre_nms_top_n,
            self.test_post_nms_top_n,
            self.rpn_nms_iou,
            self.rpn_min_size,
            self.rpn_box_weights,
            nms_per_level=self.rpn_nms_per_level,
            score_threshold=self.rpn_score_threshold,
            name="test_proposals",
        )
        self.roi_sampler = ROISampler(
            self.rcnn_batch_size_per_image,
            self.rcnn_positive_fraction,
            self.rcnn_positive_iou,
            self.rcnn_negative_iou_high,
            self.rcnn_negative_iou_low,
            self.rcnn_box_weights,
            self.add_gt_to_proposals,
            name="roi_sampler",
        )
        size = self.roi_output_size
        if self.roi_op == "multilevel_roi_align":
            if levels < 2:
                raise ValueError(
                    f"roi_op='multilevel_roi_align' needs a pyramid backbone; "
                    f"{self.backbone!r} has one level"
                )
            min_level = int(round(math.log2(self.strides[0])))
            self.roi_layer = MultiLevelROIAlign(
                size,
                self.roi_sampling_ratio,
                self.roi_aligned,
                min_level=min_level,
                method=self.roi_method,
                name="roi_align",
            )
        else:
            if levels != 1:
                raise ValueError(
                    f"roi_op={self.roi_op!r} pools one feature map but backbone "
                    f"{self.backbone!r} has {levels} levels: use 'multilevel_roi_align'"
                )
            scale = 1.0 / self.strides[0]
            if self.roi_op == "roi_pool":
                self.roi_layer = ROIPooling(size, scale, name="roi_pool")
            elif self.roi_op == "roi_align":
                self.roi_layer = ROIAlign(
                    size,
                    scale,
                    self.roi_sampling_ratio,
                    self.roi_aligned,
                    method=self.roi_method,
                    name="roi_align",
                )
            else:
                self.roi_layer = PreciseROIPooling(size, scale, name="precise_roi_pool")
        if self.head_type == "resnet_c5":
            # A legacy .h5 of keras.applications ResNet50 (or "imagenet") also holds conv5; a
            # Keras 3 .weights.h5 of the C4 backbone does not, so the head then starts random.
            head_weights = self.backbone_weights
            if isinstance(head_weights, str) and head_weights.endswith((".weights.h5", ".keras")):
                head_weights = None
            self.head_trunk = build_resnet50_c5_head(
                weights=head_weights, trainable=self.trainable_backbone
            )
            head_type = "fc"
        else:
            self.head_trunk = None
            head_type = self.head_type
        self.rcnn_head = RCNNHead(
            self.num_classes,
            head_type,
            self.head_units,
            self.head_conv_channels,
            self.head_dropout,
            conv_batch_norm=self.head_conv_batch_norm,
            name="rcnn_head",
        )
        self.decoder = DetectionDecoder(
            self.num_classes,
            self.rcnn_box_weights,
            self.detection_score_threshold,
            self.detection_nms_iou,
            self.max_detections,
            min_size=self.detection_min_size,
            name="detection_decoder",
        )

    def _trunk(self, images):
        features = self.backbone_model(images)
        if not isinstance(features, (list, tuple)):
            features = [features]
        objectness, deltas, anchors = [], [], []
        for level, generator in zip(features, self.anchor_generators):
            if self.proposal_source == "external":
                break
            level_objectness, level_deltas = self.rpn_head(level)
            objectness.append(level_objectness)
            deltas.append(level_deltas)
            anchors.append(generator(level, images) if generator.torchvision else generator(level))
        if self.roi_op == "multilevel_roi_align":
            roi_features = features[: self.roi_feature_levels or len(features) - 1]
        else:
            roi_features = features[0]
        return roi_features, objectness, deltas, anchors

    def _head(self, roi_features, rois, count):
        pooled = self.roi_layer(roi_features, rois)
        if self.head_trunk is not None:
            pooled = self.head_trunk(pooled)
        logits, deltas = self.rcnn_head(pooled)
        logits = keras.ops.reshape(logits, (-1, count, self.num_classes + 1))
        deltas = keras.ops.reshape(deltas, (-1, count, self.num_classes, 4))
        return logits, deltas

    def _build_graph(self, training):
        images = keras.Input((None, None, 3), name="images", dtype="float32")
        image_shape = keras.Input((2,), name="image_shape", dtype="int32")
        image_scale = keras.Input((), name="image_scale", dtype="float32")
        original_shape = keras.Input((2,), name="original_shape", dtype="int32")
        inputs = {
            "images": images,
            "image_shape": image_shape,
            "image_scale": image_scale,
            "original_shape": original_shape,
        }
        roi_features, objectness, deltas, anchors = self._trunk(images)
        external = self.proposal_source == "external"
        if external:
            inputs["proposals"] = keras.Input(
                (self.num_external_proposals, 4), name="proposals", dtype="float32"
            )
            # given in original-image pixels; zero-area entries are padding
            ext = inputs["proposals"] * keras.ops.reshape(image_scale, (-1, 1, 1))
            ext_valid = keras.ops.logical_and(ext[..., 2] > ext[..., 0], ext[..., 3] > ext[..., 1])
        if not training:
            if external:
                proposals, valid, count = ext, ext_valid, self.num_external_proposals
            else:
                proposals, _, valid = self.test_proposals(objectness, deltas, anchors, image_shape)
                count = self.test_post_nms_top_n
            logits, box_deltas = self._head(roi_features, proposals, count)
            scale = image_scale
            if self.detection_scale_per_axis:
                scale = keras.ops.cast(image_shape, "float32") / keras.ops.cast(
                    original_shape, "float32"
                )
            outputs = self.decoder(
                logits, box_deltas, proposals, valid, image_shape, scale, original_shape
            )
            return keras.Model(inputs, outputs, name="inference_graph")
        gt_boxes = keras.Input((None, 4), name="gt_boxes", dtype="float32")
        gt_classes = keras.Input((None,), name="gt_classes", dtype="int32")
        inputs.update(gt_boxes=gt_boxes, gt_classes=gt_classes)
        outputs = {}
        if external:
            proposals, valid = ext, ext_valid
        else:
            all_objectness = (
                keras.ops.concatenate(objectness, axis=1) if len(objectness) > 1 else objectness[0]
            )
            all_deltas = keras.ops.concatenate(deltas, axis=1) if len(deltas) > 1 else deltas[0]
            all_anchors = keras.ops.concatenate(anchors, axis=0) if len(anchors) > 1 else anchors[0]
            rpn_labels, rpn_box_targets = self.rpn_targets(
                all_anchors, gt_boxes, gt_classes, image_shape
            )
            outputs.update(
                rpn_objectness=all_objectness,
                rpn_deltas=all_deltas,
                rpn_labels=rpn_labels,
                rpn_box_targets=rpn_box_targets,
            )
            proposals, _, valid = self.train_proposals(objectness, deltas, anchors, image_shape)
            if self.training_scheme != "non_approximate_joint":
                # Approximate joint training: the proposals are constants for the second stage.
                proposals = keras.ops.stop_gradient(proposals)
        rois, labels, targets, weights = self.roi_sampler(proposals, valid, gt_boxes, gt_classes)
        logits, box_deltas = self._head(roi_features, rois, self.rcnn_batch_size_per_image)
        outputs.update(
            {
                "rcnn_class_logits": logits,
                "rcnn_box_deltas": box_deltas,
                "rcnn_labels": labels,
                "rcnn_box_targets": targets,
                "rcnn_weights": weights,
                "rois": rois,
            }
        )
        return keras.Model(inputs, outputs, name="training_graph")

    # ----------------------------------------------------------------------------------------
    # running
    @classmethod
    def from_preset(cls, name, num_classes, **overrides):
        """Build a preset (see :mod:`tfrcnn.config`) with any setting overridden.

        Example:
            >>> model = FasterRCNN.from_preset("vgg16", num_classes=20)
        """
        presets.get_preset(name)  # a clear error for an unknown name
        return cls(num_classes=num_classes, preset=name, **overrides)

    @classmethod
    def from_pretrained(cls, source, num_classes, class_names=None, **settings):
        """A model for ``num_classes`` new classes starting from a trained one: every weight of
        ``source`` (a ``FasterRCNN``, a ``.keras`` file or ``"torchvision:<published name>"``)
        except the class logits and box deltas, which are freshly initialised. See
        :func:`tfrcnn.weights.finetune.from_pretrained`.

        Example:
            >>> model = FasterRCNN.from_pretrained("coco_r50.keras", num_classes=3,
            ...                                    class_names=["rbc", "wbc", "platelets"])
        """
        from tfrcnn.weights.finetune import from_pretrained

        return from_pretrained(source, num_classes, class_names=class_names, **settings)

    def standardize_inputs(self, inputs):
        """Inputs as the graphs take them: a dict with float32 images, int32 image_shape and
        float32 image_scale (plus ground truth when given). A plain tensor is resized inside.
        Every input is checked first (:class:`tfrcnn.layers.InputChecks`)."""
        inputs = self.input_checker(inputs)
        if not isinstance(inputs, dict):
            if self.proposal_source == "external":
                raise ValueError(
                    "this model runs on external proposals (Fast R-CNN): pass a dict "
                    "with 'images', 'image_shape', 'image_scale' and 'proposals'"
                )
            images, image_shape, image_scale, original_shape = self.resizer(inputs)
            return {
                "images": images,
                "image_shape": image_shape,
                "image_scale": image_scale,
                "original_shape": original_shape,
            }
        if "images" not in inputs:
            raise ValueError(f"the input dict needs an 'images' entry; got keys {sorted(inputs)}")
        images = tf.cast(inputs["images"], tf.float32)
        shape = tf.shape(images)
        batch = shape[0]
        if inputs.get("image_shape") is not None:
            image_shape = tf.cast(inputs["image_shape"], tf.int32)
        else:
            image_shape = tf.tile(shape[1:3][None, :], [batch, 1])
        if inputs.get("image_scale") is not None:
            image_scale = tf.reshape(tf.cast(inputs["image_scale"], tf.float32), [-1])
        else:
            image_scale = tf.ones([batch], tf.float32)
        if inputs.get("original_shape") is not None:
            original_shape = tf.cast(inputs["original_shape"], tf.int32)
        else:
            original_shape = tf.cast(
                tf.math.ceil(tf.cast(image_shape, tf.float32) / image_scale[:, None] - 1e-3),
                tf.int32,
            )
        result = {
            "images": images,
            "image_shape": image_shape,
            "image_scale": image_scale,
            "original_shape": original_shape,
        }
        if self.proposal_source == "external":
            if inputs.get("proposals") is None:
                raise ValueError(
                    "this model runs on external proposals (Fast R-CNN): the input dict "
                    f"needs 'proposals' [B, {self.num_external_proposals}, 4] in "
                    "original-image pixels"
                )
            result["proposals"] = tf.cast(inputs["proposals"], tf.float32)
        if inputs.get("gt_boxes") is not None:
            if inputs.get("gt_classes") is None:
                raise ValueError("'gt_boxes' given without 'gt_classes'")
            # One extra padding slot, so that images with zero ground-truth slots (M = 0) work.
            result["gt_boxes"] = tf.pad(
                tf.cast(inputs["gt_boxes"], tf.float32),
                [[0, 0], [0, 1], [0, 0]],
                constant_values=-1.0,
            )
            result["gt_classes"] = tf.pad(
                tf.cast(inputs["gt_classes"], tf.int32), [[0, 0], [0, 1]], constant_values=-1
            )
        return result

    def propose(self, inputs, max_proposals=2000, pre_nms_top_n=None):
        """The RPN's proposals alone (for proposal-quality studies such as recall at N proposals).

        Args:
            inputs: as for ``call`` (a dict from the pipeline, or raw images of any size).
            max_proposals: proposals kept after NMS (the output is sorted by score, so the first
                ``N`` are the top-``N`` proposals for any ``N <= max_proposals``).
            pre_nms_top_n: boxes kept before NMS (default: the larger of the test setting and
                ``max_proposals``).

        Returns:
            dict: ``proposal_boxes [B, max_proposals, 4]`` in original-image pixels,
            ``proposal_scores [B, max_proposals]`` object probabilities (0 where padded),
            ``num_proposals [B]``.
        """
        if self.proposal_source != "rpn":
            raise ValueError("propose() needs a model with an RPN (proposal_source='rpn')")
        inputs = self.standardize_inputs(inputs)
        pre = pre_nms_top_n or max(self.test_pre_nms_top_n, int(max_proposals))
        layer = ProposalLayer(
            pre,
            int(max_proposals),
            self.rpn_nms_iou,
            self.rpn_min_size,
            self.rpn_box_weights,
            nms_per_level=self.rpn_nms_per_level,
            score_threshold=self.rpn_score_threshold,
        )
        _, objectness, deltas, anchors = self._trunk(inputs["images"])
        boxes, scores, valid = layer(objectness, deltas, anchors, inputs["image_shape"])
        boxes = boxes / tf.reshape(inputs["image_scale"], [-1, 1, 1])
        return {
            "proposal_boxes": boxes,
            "proposal_scores": scores,
            "num_proposals": tf.reduce_sum(tf.cast(valid, tf.int32), axis=1),
        }

    def build(self, input_shape=None):
        # Every layer is built when the two graphs are traced in __init__.
        self.built = True

    def call(self, inputs, training=None):
        inputs = self.standardize_inputs(inputs)
        if "gt_boxes" in inputs:
            return self.training_graph(inputs, training=training)
        return self.inference_graph(inputs, training=training)

    def _build_optimizer(self):
        """Creates the optimizer's variables for the current trainable weights before any step is
        traced, as Keras does inside the first traced step. A batch refused while the step is
        traced (an input check on shapes or dtypes) then leaves no half-built step behind: the
        next ``fit`` or ``train_on_batch`` with good data runs normally."""
        optimizer = getattr(self, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            with self.distribute_strategy.scope():
                optimizer.build(self.trainable_variables)

    def fit(self, *args, **kwargs):
        self._build_optimizer()
        return super().fit(*args, **kwargs)

    def train_on_batch(self, *args, **kwargs):
        self._build_optimizer()
        return super().train_on_batch(*args, **kwargs)

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        if isinstance(x, dict):
            x = {k: x[k] for k in INPUT_KEYS + ("proposals",) if k in x}
        return self(x, training=False)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The multi-task loss of both stages; each term is tracked as a metric."""
        if not isinstance(y_pred, dict) or "rcnn_labels" not in y_pred:
            raise ValueError(
                "training and evaluation need ground truth: the input dict must hold "
                "'gt_boxes' [B, M, 4] and 'gt_classes' [B, M] (-1 padding)"
            )
        if "rpn_labels" in y_pred:
            num_locations = tf.shape(y_pred["rpn_labels"])[1] // self.num_anchors
            rpn_cls, rpn_box = rpn_losses(
                y_pred["rpn_objectness"],
                y_pred["rpn_deltas"],
                y_pred["rpn_labels"],
                y_pred["rpn_box_targets"],
                num_locations=num_locations,
                beta=self.rpn_smooth_l1_beta,
                box_normalizer=self.rpn_box_normalizer,
                box_loss_weight=self.rpn_box_loss_weight,
            )
        else:  # Fast R-CNN on external proposals: no RPN
            rpn_cls = rpn_box = tf.constant(0.0, tf.float32)
        rcnn_cls, rcnn_box = rcnn_losses(
            y_pred["rcnn_class_logits"],
            y_pred["rcnn_box_deltas"],
            y_pred["rcnn_labels"],
            y_pred["rcnn_box_targets"],
            y_pred["rcnn_weights"],
            beta=self.rcnn_smooth_l1_beta,
            box_loss_weight=self.rcnn_box_loss_weight,
        )
        terms = dict(zip(LOSS_TERMS, (rpn_cls, rpn_box, rcnn_cls, rcnn_box)))
        total = tf.constant(0.0, tf.float32)
        for name, value in terms.items():
            self.loss_trackers[name].update_state(value)
            weight = self.loss_term_weights[name]
            if weight:
                total = total + weight * value
        if self.losses:
            total = total + tf.add_n([tf.cast(l, tf.float32) for l in self.losses])
        # Keras's contract under tf.distribute: each replica returns its loss divided by the number
        # of replicas (gradients are summed across replicas; fit's "loss" metric multiplies back).
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas > 1:
            total = total / float(replicas)
        # The backward pass starts once the whole loss is computed: the RPN terms' gradients do not
        # otherwise wait for the second stage, and both passes' buffers would be alive at once.
        return backward_after(total)

    def get_config(self):
        config = {
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "preset": self.preset,
            "name": self.name,
            "dtype": self.dtype_policy.name,
        }
        config.update(self.settings)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "xla" in config:  # the setting's earlier name: False turned the acceleration off
            config.setdefault("accelerate", False if config.pop("xla") is False else "auto")
        return cls(**config)
