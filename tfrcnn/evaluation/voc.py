"""Pascal VOC average precision at an IoU threshold (0.5), and the mAP over classes.

Detections and ground truths are lists with one entry an image:
``{"boxes": [N, 4] yxyx pixels, "scores": [N] (detections only), "classes": [N] user ids}``;
ground truths may add ``"difficult"`` bool ``[N]``.

The rules are the VOC devkit's: a class's detections over all images are sorted by score; each is
compared with the ground-truth box of its class and image that it overlaps most (matched already
or not, as the devkit does); IoU >= threshold is a true positive unless that box is difficult
(then neither true nor false positive) or already matched (then a false positive, so duplicate
detections count against precision); anything else is a false positive. Difficult boxes do not
count as positives. IoU uses continuous coordinates (area = (y2 - y1) * (x2 - x1), no "+1").
"""

import time
import weakref

import numpy as np

_COMPILED = weakref.WeakKeyDictionary()  # model -> its traced inference function


def voc_ap(recall, precision, use_07_metric=False):
    """AP from a precision/recall curve.

    ``use_07_metric=False``: all-point interpolation (VOC 2010 and later): the area under the
    precision envelope (precision made monotone from the right) at every recall change.
    ``use_07_metric=True``: the VOC 2007 11-point AP: mean over t in {0, 0.1, ..., 1} of the
    highest precision at recall >= t.

    Example:
        >>> voc_ap(np.array([0.5, 1.0]), np.array([1.0, 0.5]))   # 0.5 * 1 + 0.5 * 0.5
        0.75
    """
    recall = np.asarray(recall, np.float64)
    precision = np.asarray(precision, np.float64)
    if use_07_metric:
        ap = 0.0
        for t in np.linspace(0.0, 1.0, 11):
            above = precision[recall >= t]
            ap += (above.max() if above.size else 0.0) / 11.0
        return float(ap)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    idx = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def _iou(box, boxes):
    y1 = np.maximum(box[0], boxes[:, 0])
    x1 = np.maximum(box[1], boxes[:, 1])
    y2 = np.minimum(box[2], boxes[:, 2])
    x2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(y2 - y1, 0, None) * np.clip(x2 - x1, 0, None)
    area = max(box[2] - box[0], 0) * max(box[3] - box[1], 0)
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(
        boxes[:, 3] - boxes[:, 1], 0, None
    )
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def evaluate_detections(
    detections, ground_truths, num_classes, iou_threshold=0.5, use_07_metric=False, class_names=None
):
    """VOC AP per class and mAP.

    Args:
        detections, ground_truths: lists (one entry an image) as in the module docstring.
        num_classes: ``C``.
        iou_threshold: the match threshold (0.5).
        use_07_metric: the VOC 2007 11-point AP instead of all-point.
        class_names: optional names for ``per_class``.

    Returns:
        dict: ``mAP`` (mean over classes with ground truth), ``ap`` float array ``[C]`` (NaN for a
        class without ground truth), ``per_class`` ``{name: ap}``, ``num_gt`` ``[C]``,
        ``precision`` and ``recall`` (lists of arrays per class, the PR curves).

    Example:
        >>> evaluate_detections(dets, gts, num_classes=3)["mAP"]
    """
    if len(detections) != len(ground_truths):
        raise ValueError(f"{len(detections)} detection entries for {len(ground_truths)} images")
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    aps = np.full(num_classes, np.nan)
    num_gt = np.zeros(num_classes, np.int64)
    precisions, recalls = [], []
    gts = []
    for gt in ground_truths:
        boxes = np.asarray(gt["boxes"], np.float64).reshape(-1, 4)
        classes = np.asarray(gt["classes"]).reshape(-1)
        difficult = np.asarray(gt.get("difficult", np.zeros(len(classes), bool)), bool).reshape(-1)
        gts.append((boxes, classes, difficult))
    for c in range(num_classes):
        per_image = []
        for boxes, classes, difficult in gts:
            sel = classes == c
            per_image.append((boxes[sel], difficult[sel], np.zeros(int(sel.sum()), bool)))
            num_gt[c] += int(np.sum(sel & ~difficult))
        entries = []
        for i, det in enumerate(detections):
            classes = np.asarray(det["classes"]).reshape(-1)
            sel = np.where(classes == c)[0]
            boxes = np.asarray(det["boxes"], np.float64).reshape(-1, 4)
            scores = np.asarray(det["scores"], np.float64).reshape(-1)
            entries.extend((scores[j], i, boxes[j]) for j in sel)
        entries.sort(key=lambda e: -e[0])
        tp = np.zeros(len(entries))
        fp = np.zeros(len(entries))
        for k, (_, i, box) in enumerate(entries):
            gt_boxes, gt_difficult, used = per_image[i]
            if len(gt_boxes) == 0:
                fp[k] = 1
                continue
            ious = _iou(box, gt_boxes)
            j = int(np.argmax(ious))
            if ious[j] >= iou_threshold:
                if gt_difficult[j]:
                    continue
                if not used[j]:
                    used[j] = True
                    tp[k] = 1
                else:
                    fp[k] = 1
            else:
                fp[k] = 1
        tp_c, fp_c = np.cumsum(tp), np.cumsum(fp)
        recall = tp_c / num_gt[c] if num_gt[c] > 0 else np.zeros_like(tp_c)
        precision = tp_c / np.maximum(tp_c + fp_c, np.finfo(np.float64).eps)
        precisions.append(precision)
        recalls.append(recall)
        if num_gt[c] > 0:
            aps[c] = voc_ap(recall, precision, use_07_metric)
    valid = ~np.isnan(aps)
    return {
        "mAP": float(np.mean(aps[valid])) if valid.any() else float("nan"),
        "ap": aps,
        "per_class": {names[c]: float(aps[c]) for c in range(num_classes)},
        "num_gt": num_gt,
        "precision": precisions,
        "recall": recalls,
    }


def collect_detections(model, dataset, max_batches=None, progress=False):
    """Run ``model`` over a pipeline dataset; return per-image detections, ground truths (both in
    original-image pixels) and the seconds per image of the model calls.

    ``model(inputs, training=False)`` must return the ``detection_*`` / ``num_detections`` dict.
    ``progress=True`` shows a Keras progress bar over the batches.
    """
    import keras
    import tensorflow as tf

    keys = ("images", "image_shape", "image_scale", "original_shape")

    call = (
        _COMPILED.get(model)
        if isinstance(model, keras.Model)
        else (lambda x: model(x, training=False))
    )
    if call is None:
        call = tf.function(lambda x: model(x, training=False), autograph=False)
        try:
            _COMPILED[model] = call
        except TypeError:  # not weak-referenceable: trace each time
            pass
    detections, ground_truths = [], []
    seconds, images = 0.0, 0  # after the first batch (which includes tracing)
    first_seconds, first_images = 0.0, 0
    bar = None
    if progress:
        total = int(dataset.cardinality()) if hasattr(dataset, "cardinality") else -1
        bar = keras.utils.Progbar(total if total > 0 else None, unit_name="batch")
    for b, batch in enumerate(dataset):
        if max_batches is not None and b >= max_batches:
            break
        inputs = {k: batch[k] for k in keys if k in batch}
        start = time.perf_counter()
        out = call(inputs)
        out = {k: np.asarray(v) for k, v in out.items()}
        elapsed = time.perf_counter() - start
        if b == 0:
            first_seconds, first_images = elapsed, len(out["num_detections"])
        else:
            seconds += elapsed
            images += len(out["num_detections"])
        scale = np.asarray(batch["image_scale"])
        gt_boxes = np.asarray(batch["gt_boxes"])
        gt_classes = np.asarray(batch["gt_classes"])
        gt_difficult = (
            np.asarray(batch["gt_difficult"])
            if "gt_difficult" in batch
            else np.zeros_like(gt_classes, bool)
        )
        for i in range(len(out["num_detections"])):
            n = int(out["num_detections"][i])
            detections.append(
                {
                    "boxes": out["detection_boxes"][i][:n],
                    "scores": out["detection_scores"][i][:n],
                    "classes": out["detection_classes"][i][:n],
                }
            )
            real = gt_classes[i] >= 0
            ground_truths.append(
                {
                    "boxes": gt_boxes[i][real] / scale[i],
                    "classes": gt_classes[i][real],
                    "difficult": gt_difficult[i][real],
                }
            )
        if bar is not None:
            bar.update(b + 1)
    if not images:  # a single batch: its time is all there is
        seconds, images = first_seconds, first_images
    return detections, ground_truths, (seconds / images if images else float("nan"))


def evaluate_model(
    model,
    dataset,
    num_classes,
    class_names=None,
    iou_threshold=0.5,
    use_07_metric=False,
    max_batches=None,
):
    """VOC AP of ``model`` on a pipeline dataset (see :func:`evaluate_detections`), plus
    ``seconds_per_image`` (model time, after the first batch when there are several, since the
    first one includes tracing).

    ``model(inputs, training=False)`` gets ``inputs = {"images", "image_shape", "image_scale",
    "original_shape"}`` of each batch and returns ``detection_boxes`` ``[B, D, 4]`` (original
    pixels), ``detection_scores`` ``[B, D]``, ``detection_classes`` ``[B, D]``, ``num_detections``
    ``[B]``; the first ``num_detections`` of each image are scored against the batch's ground truth
    divided by ``image_scale``. ``dataset`` must be finite, or ``max_batches`` given.
    """
    detections, ground_truths, seconds = collect_detections(model, dataset, max_batches)
    result = evaluate_detections(
        detections, ground_truths, num_classes, iou_threshold, use_07_metric, class_names
    )
    result["seconds_per_image"] = seconds
    return result
