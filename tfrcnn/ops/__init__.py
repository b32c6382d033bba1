"""Pure tensor functions of Faster R-CNN: boxes, anchors, matching, NMS, ROI ops, losses.

Boxes are float32 ``[..., 4]`` ``[y1, x1, y2, x2]`` in absolute pixels (continuous coordinates).
"""

from tfrcnn.ops.anchors import (
    anchor_shapes,
    anchors_inside_mask,
    generate_anchors,
    generate_multilevel_anchors,
)
from tfrcnn.ops.boxes import (
    BOX_FORMATS,
    DEFAULT_SCALE_CLIP,
    SIZE_EPSILON,
    box_area,
    box_iou,
    clip_boxes,
    convert_boxes,
    decode_boxes,
    denormalize_boxes,
    encode_boxes,
    normalize_boxes,
    valid_box_mask,
)
from tfrcnn.ops.losses import rcnn_losses, rpn_losses, smooth_l1
from tfrcnn.ops.matching import (
    IGNORE,
    NEGATIVE,
    PADDING_CLASS,
    POSITIVE,
    balanced_sample,
    balanced_sample_mask,
    match_boxes,
)
from tfrcnn.ops.nms import (
    PADDING_INDEX,
    batched_class_aware_non_max_suppression_padded,
    batched_non_max_suppression_padded,
    class_aware_non_max_suppression_padded,
    non_max_suppression_padded,
)
from tfrcnn.ops.roi import (
    assign_fpn_levels,
    multilevel_roi_align,
    precise_roi_pool,
    roi_align,
    roi_pool,
)
