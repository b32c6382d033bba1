"""Data: records from readers (VOC, COCO, TFRecord, synthetic), validation, augmentation and the
tf.data pipeline that feeds ``FasterRCNN``.

A record is ``{"image" uint8 [H, W, 3] | "path", "boxes" float32 [N, 4] yxyx pixels,
"classes" int32 [N], "image_id" str, "difficult" bool [N]}``.
"""

from tfrcnn.data.augment import (
    augment_example,
    photometric_jitter,
    random_crop,
    random_horizontal_flip,
    random_scale_choice,
)
from tfrcnn.data.coco import CocoClassNames, coco_categories, read_coco, write_coco
from tfrcnn.data.images import ImageReadError, image_size, load_image
from tfrcnn.data.pipeline import compute_scale, make_dataset, resize_image_and_boxes
from tfrcnn.data.proposals import load_proposals, pad_proposals, save_proposals, selective_search
from tfrcnn.data.synthetic import SYNTHETIC_CLASS_NAMES, make_synthetic_records, synthetic_splits
from tfrcnn.data.tfrecord import (
    convert_to_tfrecord,
    parse_example,
    read_tfrecords,
    tfrecord_records,
    write_tfrecords,
)
from tfrcnn.data.validation import AnnotationError, ValidationReport, validate_record
from tfrcnn.data.voc import DatasetNotFoundError, available_splits, read_voc, voc_class_names
