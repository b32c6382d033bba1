"""Published weights by name: torchvision's checkpoints and the keras.applications ImageNet files.

torchvision (BSD-3-Clause) publishes each checkpoint at ``https://download.pytorch.org/models/``
with the first 8 hex digits of the file's SHA-256 in its name; keras.applications publishes its
ImageNet files with an MD5 in the Keras source (``WEIGHTS_HASHES``). Both are fetched on demand
into the Keras cache by :func:`tfrcnn.weights.download.fetch` and checked against those hashes.

COCO classes: torchvision's detectors predict 91 rows, ``0`` = background and ``1 .. 90`` the COCO
category ids, 10 of which (12, 26, 29, 30, 45, 66, 68, 69, 71, 83) are unused in COCO 2017 and
named ``"N/A"``. tfrcnn keeps background internal (logit 0) and numbers user classes
``0 .. N - 1``; a converted COCO model has the 80 real categories in COCO order
(:data:`COCO_NAMES`), user class ``i`` taking torchvision row :data:`COCO_TORCHVISION_ROWS` ``[i]``
for its class logit and its 4 box-delta rows; the background logit is row 0 and the N/A rows are
dropped (``coco_unused="drop"``). Dropping them removes their share of the softmax denominator,
which for the published weights (trained never to predict them) changes no detection beyond the
score tolerance; ``coco_unused="keep"`` keeps all 90 ids (the N/A ones named ``"N/A"``), which
computes exactly torchvision's scores.
"""

import dataclasses
import os

TORCHVISION_BASE = "https://download.pytorch.org/models/"
KERAS_APPLICATIONS_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclasses.dataclass(frozen=True)
class Published:
    """One published torchvision checkpoint.

    Attributes:
        url: torchvision's documented address (the SHA-256 prefix is in the file name).
        preset: the tfrcnn preset its architecture matches (``None`` for ImageNet backbones).
        kind: ``"detector"`` (COCO Faster R-CNN) or ``"backbone"`` (ImageNet classifier).
        box_ap: torchvision's published COCO val2017 box AP (detectors).
    """

    url: str
    preset: str | None
    kind: str
    box_ap: float | None = None

    @property
    def file_name(self):
        return self.url.rsplit("/", 1)[-1]


TORCHVISION = {
    "fasterrcnn_resnet50_fpn_coco": Published(
        TORCHVISION_BASE + "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth",
        "torchvision_resnet50_fpn",
        "detector",
        37.0,
    ),
    "fasterrcnn_resnet50_fpn_v2_coco": Published(
        TORCHVISION_BASE + "fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth",
        "torchvision_resnet50_fpn_v2",
        "detector",
        46.7,
    ),
    "fasterrcnn_mobilenet_v3_large_fpn_coco": Published(
        TORCHVISION_BASE + "fasterrcnn_mobilenet_v3_large_fpn-fb6a3cc7.pth",
        "torchvision_mobilenet_v3_large_fpn",
        "detector",
        32.8,
    ),
    "fasterrcnn_mobilenet_v3_large_320_fpn_coco": Published(
        TORCHVISION_BASE + "fasterrcnn_mobilenet_v3_large_320_fpn-907ea3f9.pth",
        "torchvision_mobilenet_v3_large_320_fpn",
        "detector",
        22.8,
    ),
    # The ImageNet weights torchvision's detectors start from (IMAGENET1K_V1).
    "resnet50": Published(TORCHVISION_BASE + "resnet50-0676ba61.pth", None, "backbone"),
    "mobilenet_v3_large": Published(
        TORCHVISION_BASE + "mobilenet_v3_large-8738ca79.pth", None, "backbone"
    ),
}

# keras.applications ImageNet files: cache file name -> (address, MD5 as in keras' source).
KERAS_APPLICATIONS = {
    "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5": (
        KERAS_APPLICATIONS_BASE + "resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "4d473c1dd8becc155b73f8504c6f6626",
    ),
    "resnet50_weights_tf_dim_ordering_tf_kernels.h5": (
        KERAS_APPLICATIONS_BASE + "resnet/resnet50_weights_tf_dim_ordering_tf_kernels.h5",
        "2cb95161c43110f7111970584f804107",
    ),
    "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5": (
        KERAS_APPLICATIONS_BASE
        + "mobilenet_v3/weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
        "07fb09a5933dd0c8eaafa16978110389",
    ),
    "weights_mobilenet_v3_large_224_1.0_float.h5": (
        KERAS_APPLICATIONS_BASE + "mobilenet_v3/weights_mobilenet_v3_large_224_1.0_float.h5",
        "59e551e166be033d707958cf9e29a6a7",
    ),
    "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5": (
        KERAS_APPLICATIONS_BASE + "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "6d6bbae143d832006294945121d1f1fc",
    ),
    "vgg16_weights_tf_dim_ordering_tf_kernels.h5": (
        KERAS_APPLICATIONS_BASE + "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels.h5",
        "64373286793e3c8b2b4e3219cbf3544b",
    ),
}

NA = "N/A"

# torchvision's 91 detector rows: background, then COCO category ids 1 .. 90 ("N/A" = unused id).
COCO_TORCHVISION_CATEGORIES = (
    "__background__",
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    NA,
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    NA,
    "backpack",
    "umbrella",
    NA,
    NA,
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    NA,
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    NA,
    "dining table",
    NA,
    NA,
    "toilet",
    NA,
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    NA,
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)

# The 80 real categories in COCO order and the torchvision row (= COCO category id) of each.
COCO_TORCHVISION_ROWS = tuple(
    row for row, name in enumerate(COCO_TORCHVISION_CATEGORIES) if row and name != NA
)
COCO_NAMES = tuple(COCO_TORCHVISION_CATEGORIES[row] for row in COCO_TORCHVISION_ROWS)
COCO_UNUSED_IDS = tuple(row for row, name in enumerate(COCO_TORCHVISION_CATEGORIES) if name == NA)


def coco_class_rows(coco_unused="drop"):
    """The torchvision rows of the converted model's user classes and their names.

    Args:
        coco_unused: ``"drop"`` (80 classes, COCO order) or ``"keep"`` (90 classes: every id
            1 .. 90, the unused ones named ``"N/A"``).

    Returns:
        ``(rows, names)``: user class ``i`` reads torchvision row ``rows[i]``.
    """
    if coco_unused == "drop":
        return COCO_TORCHVISION_ROWS, COCO_NAMES
    if coco_unused == "keep":
        rows = tuple(range(1, len(COCO_TORCHVISION_CATEGORIES)))
        return rows, tuple(COCO_TORCHVISION_CATEGORIES[r] for r in rows)
    raise ValueError(f"coco_unused must be 'drop' or 'keep', got {coco_unused!r}")


def is_published_name(name):
    """True when ``name`` is a published torchvision name (``fasterrcnn_resnet50_fpn_coco``,
    optionally ``torchvision:``-prefixed) and not the path of an existing file."""
    name = os.fspath(name)
    return not os.path.exists(name) and name.removeprefix("torchvision:") in TORCHVISION


def published(name):
    """The :class:`Published` entry of a torchvision name, or a one-line error listing the names."""
    name = name.removeprefix("torchvision:")
    if name not in TORCHVISION:
        raise ValueError(
            f"unknown published torchvision weights {name!r}; known: {', '.join(TORCHVISION)}"
        )
    return TORCHVISION[name]


def fetch_torchvision(name, base_url=None, progress=True):
    """The local path of a published torchvision checkpoint, downloaded into the Keras cache if
    absent and checked against the SHA-256 prefix in its file name."""
    from tfrcnn.weights.download import fetch

    entry = published(name)
    return fetch(
        entry.url,
        base_url=base_url,
        progress=progress,
        alternative="the path of the downloaded .pth file instead of its name",
    )


def fetch_keras_imagenet(file_names, base_url=None, progress=True):
    """The local path of the first of ``file_names`` (keras.applications ImageNet files, no-top
    first) in the Keras cache; the first one is downloaded (MD5-checked as Keras does) if none is.

    Raises:
        DownloadError: offline / HTTP error / wrong hash, one line naming the file and the cache path.
    """
    from tfrcnn.weights.download import fetch, find_cached

    for file_name in file_names:
        url, md5 = KERAS_APPLICATIONS[file_name]
        path = find_cached(file_name, md5)
        if path is not None:
            return path
    url, md5 = KERAS_APPLICATIONS[file_names[0]]
    return fetch(
        url,
        file_names[0],
        file_hash=md5,
        base_url=base_url,
        progress=progress,
        alternative="backbone_weights=PATH",
    )


# tfrcnn preset -> torchvision architecture whose checkpoints it takes
PRESET_ARCHITECTURES = {
    "torchvision_resnet50_fpn": "fasterrcnn_resnet50_fpn",
    "torchvision_mobilenet_v3_large_fpn": "fasterrcnn_mobilenet_v3_large_fpn",
    "torchvision_mobilenet_v3_large_320_fpn": "fasterrcnn_mobilenet_v3_large_320_fpn",
    "torchvision_resnet50_fpn_v2": "fasterrcnn_resnet50_fpn_v2",
}
