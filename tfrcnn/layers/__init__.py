"""Keras layers, one a file, each a thin wrapper over :mod:`tfrcnn.ops`."""

from tfrcnn.layers.anchor_generator import AnchorGenerator
from tfrcnn.layers.detection_decoder import DetectionDecoder
from tfrcnn.layers.fpn import FeaturePyramid
from tfrcnn.layers.image_resizer import ImageResizer
from tfrcnn.layers.input_checks import InputChecks
from tfrcnn.layers.multilevel_roi_align import MultiLevelROIAlign
from tfrcnn.layers.precise_roi_pooling import PreciseROIPooling
from tfrcnn.layers.preprocessing import ImageNormalization
from tfrcnn.layers.proposal_layer import ProposalLayer
from tfrcnn.layers.rcnn_head import RCNNHead
from tfrcnn.layers.roi_align import ROIAlign
from tfrcnn.layers.roi_pooling import ROIPooling
from tfrcnn.layers.roi_sampler import ROISampler
from tfrcnn.layers.rpn_head import RPNHead
from tfrcnn.layers.rpn_targets import RPNTargetAssigner

__all__ = [
    "AnchorGenerator",
    "DetectionDecoder",
    "FeaturePyramid",
    "ImageNormalization",
    "ImageResizer",
    "InputChecks",
    "MultiLevelROIAlign",
    "PreciseROIPooling",
    "ProposalLayer",
    "RCNNHead",
    "ROIAlign",
    "ROIPooling",
    "ROISampler",
    "RPNHead",
    "RPNTargetAssigner",
]
