"""COCO metrics through pycocotools, on the same per-image detections and ground truths as the VOC AP.

Detections and ground truths are lists with one entry an image:
``{"boxes": [N, 4] yxyx pixels, "scores": [N] (detections only), "classes": [N] user ids}``;
ground truths may add ``"difficult"`` and ``"iscrowd"`` bool ``[N]``.

pycocotools ignores a ground-truth box only through ``iscrowd`` (its ``ignore`` field is overwritten
by ``iscrowd`` in ``COCOeval._prepare``), so VOC ``difficult`` objects go in as ``iscrowd=1``: a
detection on them is neither a true nor a false positive, as in the VOC devkit. (pycocotools
matches crowd regions by intersection over the detection's area; for a difficult box this is
slightly more permissive than the VOC rule.)
"""

import contextlib
import io

import numpy as np

COCO_STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "AR1",
    "AR10",
    "AR100",
    "AR_small",
    "AR_medium",
    "AR_large",
)


def _to_xywh(boxes):
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    y1, x1, y2, x2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    return np.stack([x1, y1, x2 - x1, y2 - y1], axis=1)


def coco_dicts(
    detections, ground_truths, class_names, image_ids=None, category_ids=None, file_names=None
):
    """The ground truth as a COCO instances dict and the detections as a COCO results list.

    Args:
        detections, ground_truths: the per-image lists above (same length, same order).
        class_names: names of the user classes ``0 .. C - 1``.
        image_ids: the COCO image id of each image (default ``1 .. N``).
        category_ids: the COCO category id of each class (default ``1 .. C``).
        file_names: optional ``file_name`` of each image for the ground truth's ``images``.

    Returns:
        ``(ground_truth, results)``: ``ground_truth`` has ``images``, ``annotations`` (``bbox``
        ``[x, y, w, h]``, ``area = w * h``, ``iscrowd`` 1 for crowd and VOC-difficult boxes) and
        ``categories``; ``results`` is the detection results format (``image_id``,
        ``category_id``, ``bbox`` ``[x, y, w, h]``, ``score``) that ``COCO.loadRes`` reads.
    """
    if len(detections) != len(ground_truths):
        raise ValueError(f"{len(detections)} detection entries for {len(ground_truths)} images")
    image_ids = list(range(1, len(ground_truths) + 1)) if image_ids is None else list(image_ids)
    category_ids = (
        list(range(1, len(class_names) + 1))
        if category_ids is None
        else [int(c) for c in category_ids]
    )
    if len(image_ids) != len(ground_truths) or len(set(image_ids)) != len(image_ids):
        raise ValueError(f"image_ids must be {len(ground_truths)} unique ids")
    if len(category_ids) != len(class_names) or len(set(category_ids)) != len(category_ids):
        raise ValueError(f"category_ids must be {len(class_names)} unique ids")
    images, annotations, results = [], [], []
    for i, (image_id, det, gt) in enumerate(zip(image_ids, detections, ground_truths)):
        image = {"id": image_id, "width": 0, "height": 0}
        if file_names is not None:
            image["file_name"] = str(file_names[i])
        images.append(image)
        gt_boxes = _to_xywh(gt["boxes"])
        gt_classes = np.asarray(gt["classes"]).reshape(-1)
        ignore = np.asarray(gt.get("difficult", np.zeros(len(gt_classes), bool)), bool).reshape(-1)
        crowd = np.asarray(gt.get("iscrowd", np.zeros(len(gt_classes), bool)), bool).reshape(-1)
        for box, cls, ign, isc in zip(gt_boxes, gt_classes, ignore, crowd):
            if cls < 0:
                continue
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_ids[int(cls)],
                    "bbox": [float(v) for v in box],
                    "area": float(box[2] * box[3]),
                    "iscrowd": int(isc or ign),
                }
            )
        det_boxes = _to_xywh(det["boxes"])
        for box, cls, score in zip(
            det_boxes, np.asarray(det["classes"]).reshape(-1), np.asarray(det["scores"]).reshape(-1)
        ):
            if cls < 0:
                continue
            results.append(
                {
                    "image_id": image_id,
                    "category_id": category_ids[int(cls)],
                    "bbox": [float(v) for v in box],
                    "score": float(score),
                }
            )
    categories = [{"id": c, "name": str(name)} for c, name in zip(category_ids, class_names)]
    ground_truth = {"images": images, "annotations": annotations, "categories": categories}
    return ground_truth, results


def build_coco_objects(detections, ground_truths, class_names):
    """The pycocotools ``COCO`` ground truth and detection objects for the lists above."""
    from pycocotools.coco import COCO

    dataset, results = coco_dicts(detections, ground_truths, class_names)
    coco_gt = COCO()
    coco_gt.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results) if results else COCO()
    if not results:
        coco_dt.dataset = {
            "images": dataset["images"],
            "annotations": [],
            "categories": dataset["categories"],
        }
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt.createIndex()
    return coco_gt, coco_dt


def evaluate_coco(detections, ground_truths, class_names, verbose=False):
    """COCO box metrics (pycocotools' ``COCOeval``) and per-class AP / AP50.

    Args:
        detections: list per image of ``{"boxes" [D, 4] yxyx, "scores" [D], "classes" [D]}``.
        ground_truths: list per image of ``{"boxes" [M, 4], "classes" [M]}`` plus optional
            ``"difficult"`` (ignored regions, as the VOC metric ignores them) and ``"iscrowd"``.
        class_names: names of the user classes ``0 .. C - 1``.
        verbose: print pycocotools' table.

    Returns:
        dict with the 12 ``COCO_STAT_NAMES`` (``AP`` is AP@[.5:.95], ``AP50``, ``AP75``, small /
        medium / large, ``AR1/10/100``...; -1 where undefined, as pycocotools reports), and
        ``per_class`` ``{name: {"AP": .., "AP50": ..}}`` (NaN for a class with no ground truth).

    Example:
        >>> evaluate_coco(dets, gts, ["RBC", "WBC", "Platelets"])["AP50"]
    """
    from pycocotools.cocoeval import COCOeval

    coco_gt, coco_dt = build_coco_objects(detections, ground_truths, class_names)
    evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    if verbose:
        print(out.getvalue())
    stats = {name: float(v) for name, v in zip(COCO_STAT_NAMES, evaluator.stats)}
    # precision: [T (IoU thresholds), R (recall points), K (classes), A (areas), M (max dets)]
    precision = evaluator.eval["precision"]
    per_class = {}
    for k, name in enumerate(class_names):
        p_all = precision[:, :, k, 0, -1]
        p_50 = precision[0, :, k, 0, -1]
        ap = float(np.mean(p_all[p_all > -1])) if np.any(p_all > -1) else float("nan")
        ap50 = float(np.mean(p_50[p_50 > -1])) if np.any(p_50 > -1) else float("nan")
        per_class[str(name)] = {"AP": ap, "AP50": ap50}
    stats["per_class"] = per_class
    return stats
