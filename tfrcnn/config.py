"""Named presets: plain data that builders turn into constructor arguments.

A preset is a dict of ``FasterRCNN`` keyword arguments. Nothing else in the library reads this
module except builders (``FasterRCNN.from_preset``, the command line): layers get plain values.

Paper values (Ren et al., 2015) unless a comment says otherwise. Every entry can be overridden:
``FasterRCNN.from_preset("vgg16", num_classes=20, test_post_nms_top_n=1000)``.
"""

import copy

# Values shared by every preset (the paper's, section 3.1.3 and 3.3).
COMMON = dict(
    anchor_aspect_ratios=(0.5, 1.0, 2.0),
    rpn_positive_iou=0.7,
    rpn_negative_iou=0.3,
    rpn_batch_size_per_image=256,
    rpn_positive_fraction=0.5,
    rpn_allowed_border=0.0,
    rpn_nms_iou=0.7,
    rpn_min_size=0.0,
    rpn_box_weights=(1.0, 1.0, 1.0, 1.0),
    train_pre_nms_top_n=12000,
    train_post_nms_top_n=2000,
    test_pre_nms_top_n=6000,
    test_post_nms_top_n=300,
    rcnn_batch_size_per_image=128,
    rcnn_positive_fraction=0.25,
    rcnn_positive_iou=0.5,
    rcnn_negative_iou_high=0.5,
    rcnn_negative_iou_low=0.0,
    rcnn_box_weights=(10.0, 10.0, 5.0, 5.0),
    add_gt_to_proposals=True,
    detection_score_threshold=0.05,
    detection_nms_iou=0.5,
    max_detections=100,
    rpn_box_loss_weight=10.0,
    rpn_box_normalizer="anchor_locations",
    rcnn_box_loss_weight=1.0,
    rpn_smooth_l1_beta=1.0 / 9.0,
    rcnn_smooth_l1_beta=1.0,
    training_scheme="approximate_joint",
    roi_sampling_ratio=2,
    roi_aligned=True,
    size_divisor=32,
)

PRESETS = {
    # The paper's VGG16 model: conv5_3 at stride 16, 9 anchors, RoI pooling 7x7, fc6/fc7 4096.
    "vgg16": dict(
        backbone="vgg16",
        anchor_scales=(128.0, 256.0, 512.0),
        rpn_channels=512,
        roi_op="roi_pool",
        roi_output_size=7,
        head_type="fc",
        head_units=(4096, 4096),
        head_dropout=0.5,
        image_min_side=600,
        image_max_side=1000,
        size_divisor=16,
    ),
    # The paper's ZF model: conv5 at stride 16 (256 channels), fc 4096.
    "zf": dict(
        backbone="zf",
        anchor_scales=(128.0, 256.0, 512.0),
        rpn_channels=256,
        roi_op="roi_pool",
        roi_output_size=7,
        head_type="fc",
        head_units=(4096, 4096),
        head_dropout=0.5,
        image_min_side=600,
        image_max_side=1000,
        size_divisor=16,
    ),
    # Detectron's C4: ResNet50 to conv4, ROI align 14x14, conv5 as the box head.
    "resnet50_c4": dict(
        backbone="resnet50_c4",
        anchor_scales=(32.0, 64.0, 128.0, 256.0, 512.0),
        rpn_channels=1024,
        roi_op="roi_align",
        roi_output_size=14,
        head_type="resnet_c5",
        head_units=(),
        image_min_side=800,
        image_max_side=1333,
        rcnn_batch_size_per_image=512,
    ),
    # The common modern setup (FPN paper / torchvision): one anchor size a level, P2-P6.
    "resnet50_fpn": dict(
        backbone="resnet50_fpn",
        anchor_scales=((32.0,), (64.0,), (128.0,), (256.0,), (512.0,)),
        rpn_channels=256,
        roi_op="multilevel_roi_align",
        roi_output_size=7,
        head_type="fc",
        head_units=(1024, 1024),
        image_min_side=800,
        image_max_side=1333,
        train_pre_nms_top_n=2000,
        train_post_nms_top_n=1000,
        test_pre_nms_top_n=1000,
        test_post_nms_top_n=1000,
        rcnn_batch_size_per_image=512,
        rpn_box_normalizer="sampled",
        rpn_box_loss_weight=1.0,
    ),
    # MobileNetV3-Large + FPN, anchors as torchvision's fasterrcnn_mobilenet_v3_large_fpn.
    "mobilenet_v3_fpn": dict(
        backbone="mobilenet_v3_fpn",
        anchor_scales=((32.0, 64.0, 128.0, 256.0, 512.0),) * 3,
        rpn_channels=256,
        roi_op="multilevel_roi_align",
        roi_output_size=7,
        head_type="fc",
        head_units=(1024, 1024),
        image_min_side=320,
        image_max_side=640,
        train_pre_nms_top_n=2000,
        train_post_nms_top_n=1000,
        test_pre_nms_top_n=1000,
        test_post_nms_top_n=1000,
        rcnn_batch_size_per_image=512,
        rpn_box_normalizer="sampled",
        rpn_box_loss_weight=1.0,
    ),
    # torchvision's fasterrcnn_resnet50_fpn: the same function as torchvision's model (see
    # docs/pretrained.md), so its checkpoints convert with tfrcnn.weights.from_torchvision.
    "torchvision_resnet50_fpn": dict(
        backbone="torchvision_resnet50_fpn",
        trainable_backbone=3,
        anchor_scales=((32.0,), (64.0,), (128.0,), (256.0,), (512.0,)),
        anchor_offset=0.0,
        anchor_style="torchvision",
        rpn_channels=256,
        rpn_min_size=1e-3,
        rpn_nms_per_level=True,
        rpn_score_threshold=0.0,
        roi_op="multilevel_roi_align",
        roi_output_size=7,
        roi_sampling_ratio=2,
        roi_aligned=False,
        head_type="fc",
        head_units=(1024, 1024),
        image_min_side=800,
        image_max_side=1333,
        size_divisor=32,
        image_resize_rounding="floor",
        image_pad_value=(123.675, 116.28, 103.53),  # the ImageNet mean x 255: normalised to 0
        train_pre_nms_top_n=2000,
        train_post_nms_top_n=2000,
        test_pre_nms_top_n=1000,
        test_post_nms_top_n=1000,
        rcnn_batch_size_per_image=512,
        rpn_box_normalizer="sampled",
        rpn_box_loss_weight=1.0,
        rcnn_smooth_l1_beta=1.0 / 9.0,
        detection_min_size=1e-2,
        detection_scale_per_axis=True,
    ),
    # torchvision's fasterrcnn_mobilenet_v3_large_fpn (and, with the overrides below, its 320
    # variant): MobileNetV3-Large, an FPN on two stride-32 maps, 15 anchors a location.
    "torchvision_mobilenet_v3_large_fpn": dict(
        backbone="torchvision_mobilenet_v3_large_fpn",
        trainable_backbone=3,
        anchor_scales=((32.0, 64.0, 128.0, 256.0, 512.0),) * 3,
        anchor_offset=0.0,
        anchor_style="torchvision",
        rpn_channels=256,
        rpn_min_size=1e-3,
        rpn_nms_per_level=True,
        rpn_score_threshold=0.05,
        roi_op="multilevel_roi_align",
        roi_feature_levels=1,
        roi_output_size=7,
        roi_sampling_ratio=2,
        roi_aligned=False,
        head_type="fc",
        head_units=(1024, 1024),
        image_min_side=800,
        image_max_side=1333,
        size_divisor=32,
        image_resize_rounding="floor",
        image_pad_value=(123.675, 116.28, 103.53),
        train_pre_nms_top_n=2000,
        train_post_nms_top_n=2000,
        test_pre_nms_top_n=1000,
        test_post_nms_top_n=1000,
        rcnn_batch_size_per_image=512,
        rpn_box_normalizer="sampled",
        rpn_box_loss_weight=1.0,
        rcnn_smooth_l1_beta=1.0 / 9.0,
        detection_min_size=1e-2,
        detection_scale_per_axis=True,
    ),
    # A small pyramid CNN for real data trained from scratch on a CPU (e.g. BCCD at 480x640).
    "small_fpn": dict(
        backbone="small_fpn",
        fpn_channels=128,
        anchor_scales=((32.0,), (64.0,), (128.0,), (256.0,)),
        rpn_channels=128,
        roi_op="multilevel_roi_align",
        roi_output_size=7,
        head_type="fc",
        head_units=(512, 512),
        image_min_side=480,
        image_max_side=640,
        train_pre_nms_top_n=2000,
        train_post_nms_top_n=512,
        test_pre_nms_top_n=1000,
        test_post_nms_top_n=300,
        rcnn_batch_size_per_image=256,
        rpn_box_normalizer="sampled",
        rpn_box_loss_weight=1.0,
    ),
    # A small network for tests and the built-in CPU demo (synthetic shapes, 128-192 px images).
    "tiny": dict(
        backbone="tiny",
        anchor_scales=(16.0, 32.0, 64.0, 128.0),
        rpn_channels=128,
        roi_op="roi_align",
        roi_output_size=7,
        head_type="fc",
        head_units=(256, 256),
        image_min_side=160,
        image_max_side=192,
        size_divisor=8,
        train_pre_nms_top_n=1000,
        train_post_nms_top_n=256,
        test_pre_nms_top_n=600,
        test_post_nms_top_n=100,
        rpn_batch_size_per_image=128,
        rcnn_batch_size_per_image=64,
        rpn_box_normalizer="sampled",
        rpn_box_loss_weight=1.0,
    ),
}

# torchvision's fasterrcnn_mobilenet_v3_large_320_fpn: the same network at low resolution.
PRESETS["torchvision_mobilenet_v3_large_320_fpn"] = dict(
    PRESETS["torchvision_mobilenet_v3_large_fpn"],
    image_min_side=320,
    image_max_side=640,
    test_pre_nms_top_n=150,
    test_post_nms_top_n=150,
)


# What each preset is for: shown by ``tfrcnn presets`` and the ``--preset`` help.
PRESET_USES = {
    "vgg16": "the paper's VGG16 model; large, slow on a CPU",
    "zf": "the paper's fast ZF model",
    "resnet50_c4": "Detectron's ResNet50-C4; accurate, heavy",
    "resnet50_fpn": "the common modern setup (torchvision's); accurate, for a GPU",
    "mobilenet_v3_fpn": "CPU, mobile and TFLite deployment",
    "small_fpn": "real data trained from scratch on a CPU (e.g. BCCD)",
    "tiny": "tests and the built-in synthetic demo",
    "torchvision_resnet50_fpn": "torchvision's fasterrcnn_resnet50_fpn: its COCO weights, fine-tuning",
    "torchvision_resnet50_fpn_v2": "torchvision's fasterrcnn_resnet50_fpn_v2: its COCO weights",
    "torchvision_mobilenet_v3_large_fpn": "torchvision's MobileNetV3 FPN: its COCO weights, CPU",
    "torchvision_mobilenet_v3_large_320_fpn": "torchvision's 320-pixel MobileNetV3 FPN: fast, CPU",
}

# The settings of a training run (``tfrcnn train``, :func:`tfrcnn.training.run.train`), with the
# values of the built-in demo (tiny preset, synthetic data). Model settings go under ``model``.
RUN_DEFAULTS = dict(
    preset="tiny",
    init=None,  # a trained model to start from (fine-tuning): a .keras file or torchvision:<name>
    data="synthetic",
    data_path=None,
    image_dir=None,
    val_data_path=None,
    val_image_dir=None,
    val_fraction=0.1,
    train_split="trainval",
    val_split="test",
    augment={},
    strategy="default",
    precision="float32",
    num_train=1000,
    num_val=200,
    seed=0,
    epochs=16,
    steps_per_epoch=125,
    batch_size=4,
    optimizer="adamw",
    learning_rate=2e-3,
    weight_decay=1e-4,
    warmup_steps=100,
    clipnorm=10.0,
    eval_every=4,
    model={},
)


def preset_names():
    """The names of the built-in presets."""
    return tuple(PRESETS)


def get_preset(name):
    """The full keyword arguments of a preset (COMMON merged with the preset's own values).

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    args = copy.deepcopy(COMMON)
    args.update(copy.deepcopy(PRESETS[name]))
    args["preset"] = name
    return args


# torchvision's fasterrcnn_resnet50_fpn_v2: batch norm in the FPN, two RPN convolutions, a head of
# four 3x3 convolutions with batch norm and one fc layer.
PRESETS["torchvision_resnet50_fpn_v2"] = dict(
    PRESETS["torchvision_resnet50_fpn"],
    backbone="torchvision_resnet50_fpn_v2",
    rpn_num_convs=2,
    head_type="conv",
    head_conv_channels=(256, 256, 256, 256),
    head_conv_batch_norm=True,
    head_units=(1024,),
)


# torchvision's detection fine-tuning recipe (references/detection): SGD with momentum 0.9,
# learning rate 0.02 for 16 images a batch (scaled linearly), weight decay 1e-4.
FINE_TUNE_LEARNING_RATE_PER_IMAGE = 0.02 / 16


def apply_init_defaults(settings, given):
    """For a run that starts from a trained model (``settings["init"]``): the architecture is the
    model file's, so ``preset`` is ``None`` (given together with ``init`` it is an error), and
    unless ``given`` (the names the user set) holds them, the optimizer is torchvision's
    fine-tuning recipe: SGD, learning rate 0.02 x batch_size / 16, weight decay 1e-4.
    ``settings`` is changed in place; a run without ``init`` is left as it is."""
    if not settings.get("init"):
        return settings
    if "preset" in given and settings.get("preset") is not None:
        raise ValueError(
            f"init {settings['init']} sets the architecture; drop the preset setting "
            f"{settings['preset']!r} (--preset on the command line; change model settings "
            f"with model.<name>)"
        )
    settings["preset"] = None
    if "optimizer" not in given:
        settings["optimizer"] = "sgd"
        if "weight_decay" not in given:
            settings["weight_decay"] = 1e-4
    if "learning_rate" not in given:
        batch = settings.get("batch_size")
        if isinstance(batch, int) and not isinstance(batch, bool) and batch > 0:
            settings["learning_rate"] = FINE_TUNE_LEARNING_RATE_PER_IMAGE * batch
    return settings


def changed_settings(saved, overrides):
    """The names of the ``overrides`` whose values differ from the ``saved`` run settings (a run folder's ``config.json`` ``run`` part)
    (``model.<name>`` for a model setting); repeating a saved value is not a change."""
    changed = set()
    for key, value in overrides.items():
        if key == "model" and isinstance(value, dict):
            saved_model = saved.get("model") or {}
            changed |= {f"model.{k}" for k, v in value.items() if saved_model.get(k) != v}
        elif saved.get(key) != value:
            changed.add(key)
    return changed
