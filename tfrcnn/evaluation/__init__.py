"""Evaluation: Pascal VOC AP / mAP, COCO metrics (pycocotools), proposal recall, and a Keras
callback reporting validation mAP during ``fit``."""

from tfrcnn.evaluation.callbacks import DetectionImagesCallback, MeanAveragePrecisionCallback
from tfrcnn.evaluation.coco import COCO_STAT_NAMES, evaluate_coco
from tfrcnn.evaluation.proposals import (
    format_recall_table,
    plot_recall_curves,
    proposal_recall,
    rpn_proposals,
    selective_search_proposals,
)
from tfrcnn.evaluation.voc import collect_detections, evaluate_detections, evaluate_model, voc_ap
