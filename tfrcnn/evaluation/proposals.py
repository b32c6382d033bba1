"""Proposal quality: recall of ground truth against the number of proposals and the IoU threshold.

Shapes: ``P`` proposals of one image, ``G`` ground-truth boxes of one image, ``T`` IoU thresholds.
Boxes are ``[..., 4]`` ``[y1, x1, y2, x2]`` absolute pixels of the original image.

This is the study of the Faster R-CNN paper's Fig. 2 (recall vs IoU at 300 / 1000 / 2000
proposals, RPN against selective search and EdgeBoxes), following Hosang et al., "What makes for
effective detection proposals?" (2015): a ground-truth box is *recalled* at threshold ``t`` with the
first ``n`` proposals when one of them has IoU >= ``t`` with it; recall is over all ground-truth
boxes of all images, and the *average recall* (AR) is the mean recall over the thresholds
0.5, 0.55, ..., 0.95 (the discrete form of Hosang et al.'s ``2 * integral_{0.5}^{1} recall(o) do``,
as COCO computes it).

- :func:`proposal_recall` computes the numbers from proposals and ground truth;
- :func:`rpn_proposals` and :func:`selective_search_proposals` produce the proposals of a list of
  records (as :func:`tfrcnn.data.voc.read_voc` returns them) and the seconds an image;
- :func:`format_recall_table` and :func:`plot_recall_curves` report several methods side by side.

Example::

    records, names, _ = read_voc("datasets/bccd", "test")
    rpn, rpn_seconds = rpn_proposals(model, records)
    ss, ss_seconds = selective_search_proposals(records)
    gt = [r["boxes"] for r in records]
    results = {"RPN": {**proposal_recall(rpn, gt), "seconds": rpn_seconds},
               "SS": {**proposal_recall(ss, gt), "seconds": ss_seconds}}
    print(format_recall_table(results))
    plot_recall_curves(results, "recall.png")
"""

from __future__ import annotations

import io
import time

import numpy as np

from tfrcnn.data.images import load_image
from tfrcnn.data.proposals import atomic_write, selective_search
from tfrcnn.ops import box_iou

DEFAULT_IOU_THRESHOLDS = np.round(np.arange(0.5, 0.96, 0.05), 2)
"""0.5, 0.55, ..., 0.95."""

DEFAULT_TOP_N = (300, 1000, 2000)
"""The proposal counts of the Faster R-CNN paper's Fig. 2."""

IOU_TOLERANCE = 1e-6
"""IoUs are float32: a proposal whose exact IoU equals a threshold may compute a hair below it.
A proposal counts at threshold ``t`` when its IoU is >= ``t - IOU_TOLERANCE``."""

PADDING_VALUE = -1.0
"""Ground-truth rows of all ``-1`` are padding (the pipeline's convention) and are ignored."""

TABLE_THRESHOLDS = (0.5, 0.7)
"""The thresholds shown as columns by :func:`format_recall_table`."""


def _gt_boxes(boxes, index):
    boxes = np.asarray(boxes, np.float32)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(
            f"image {index}: ground truth must be [G, 4] [y1, x1, y2, x2] pixels, got "
            f"shape {boxes.shape}"
        )
    boxes = boxes[~np.all(boxes == PADDING_VALUE, axis=1)]
    bad = (
        ~np.all(np.isfinite(boxes), axis=1)
        | (boxes[:, 2] <= boxes[:, 0])
        | (boxes[:, 3] <= boxes[:, 1])
    )
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"image {index}: ground-truth box {i} {boxes[i].tolist()} is degenerate, "
            "inverted or not finite; a box needs y2 > y1 and x2 > x1 (pixels)"
        )
    return boxes


def _proposal_boxes(boxes, index):
    boxes = np.asarray(boxes, np.float32)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(
            f"image {index}: proposals must be [P, 4] [y1, x1, y2, x2] pixels, best "
            f"first; got shape {boxes.shape}"
        )
    return boxes


def proposal_recall(
    proposals_per_image,
    gt_boxes_per_image,
    iou_thresholds=DEFAULT_IOU_THRESHOLDS,
    top_n=DEFAULT_TOP_N,
):
    """Recall of ground-truth boxes by the top-``n`` proposals, at several IoU thresholds.

    Args:
        proposals_per_image: a sequence (one entry an image) of ``[P, 4]`` proposals, best first
            (only the first ``n`` count for ``n`` in ``top_n``; zero-area rows never match).
        gt_boxes_per_image: a sequence of the same length of ``[G, 4]`` ground-truth boxes (rows
            of all ``-1`` are padding and ignored). Images with no ground truth do not count.
        iou_thresholds: ``T`` thresholds (default 0.5:0.05:0.95).
        top_n: the proposal counts ``n`` (default 300, 1000, 2000).

    Returns:
        dict with
        ``"recall"``: ``{n: float64 [T]}`` recalled fraction of all ground-truth boxes
        (0 when there is no ground truth at all);
        ``"average_recall"``: ``{n: float}``, the mean of ``recall[n]`` over the thresholds;
        ``"iou_thresholds"``: float64 ``[T]``;
        ``"num_gt"``: ground-truth boxes counted; ``"num_images"``: images with ground truth;
        ``"mean_proposals"``: ``{n: float}``, proposals actually available among the first ``n``,
        averaged over all images (selective search may give fewer than ``n``).

    Example:
        >>> r = proposal_recall([[[0, 0, 10, 10]]], [[[0, 0, 10, 12]]], top_n=(1,))
        >>> r["recall"][1][:2], r["average_recall"][1]     # IoU 0.833
        (array([1., 1.]), 0.7)
    """
    proposals_per_image = list(proposals_per_image)
    gt_boxes_per_image = list(gt_boxes_per_image)
    if len(proposals_per_image) != len(gt_boxes_per_image):
        raise ValueError(
            f"{len(proposals_per_image)} proposal arrays for "
            f"{len(gt_boxes_per_image)} ground-truth arrays: one of each an image"
        )
    thresholds = np.asarray(iou_thresholds, np.float64).reshape(-1)
    if thresholds.size == 0 or np.any((thresholds < 0) | (thresholds > 1)):
        raise ValueError(f"iou_thresholds must be non-empty values in [0, 1], got {iou_thresholds}")
    top_n = [top_n] if np.isscalar(top_n) else list(top_n)
    if not top_n or any(int(n) != n or n < 1 for n in top_n):
        raise ValueError(f"top_n must be positive integers, got {top_n}")
    top_n = [int(n) for n in top_n]
    max_n = max(top_n)

    hits = {n: np.zeros(len(thresholds), np.int64) for n in top_n}
    available = {n: 0 for n in top_n}
    num_gt = num_images = 0
    for index, (proposals, gt) in enumerate(zip(proposals_per_image, gt_boxes_per_image)):
        proposals = _proposal_boxes(proposals, index)[:max_n]
        gt = _gt_boxes(gt, index)
        for n in top_n:
            available[n] += min(n, len(proposals))
        if len(gt) == 0:
            continue
        num_gt += len(gt)
        num_images += 1
        if len(proposals) == 0:
            continue
        iou = box_iou(gt, proposals).numpy()  # [G, P]
        for n in top_n:
            best = iou[:, :n].max(axis=1)  # [G]
            hits[n] += np.sum(best[None, :] >= thresholds[:, None] - IOU_TOLERANCE, axis=1)

    recall = {n: hits[n] / num_gt if num_gt else np.zeros(len(thresholds)) for n in top_n}
    images = max(len(proposals_per_image), 1)
    return {
        "recall": recall,
        "average_recall": {n: float(np.mean(recall[n])) for n in top_n},
        "iou_thresholds": thresholds,
        "num_gt": int(num_gt),
        "num_images": int(num_images),
        "mean_proposals": {n: available[n] / images for n in top_n},
    }


# ---------------------------------------------------------------------------------------------
# producing proposals
def _record_image(record):
    if isinstance(record, dict):
        if record.get("image") is not None:
            return np.asarray(record["image"])
        if record.get("path") is not None:
            return load_image(record["path"])
        raise ValueError(
            f"a record needs a 'path' (or an 'image' array); got keys {sorted(record)}"
        )
    return load_image(record)


def rpn_proposals(model, records, max_proposals=2000):
    """The RPN proposals of a Faster R-CNN model for each record, and the seconds an image.

    Args:
        model: a :class:`tfrcnn.models.FasterRCNN` with ``proposal_source="rpn"``.
        records: dicts with ``"path"`` (as :func:`tfrcnn.data.voc.read_voc` returns them) or an
            ``"image"`` array, or image paths. Each image is read with ``load_image`` (raw uint8, any
            size) and given to ``model.propose`` alone (batch of one, the model resizes it).
        max_proposals: proposals kept after NMS.

    Returns:
        ``(proposals, seconds_per_image)``: a list of float32 ``[P, 4]`` arrays (``P`` =
        the image's ``num_proposals``, sorted by score, original-image pixels) and the mean wall
        time of ``propose`` an image. Image decoding is not timed; the first image is run once
        before timing starts (a warm-up: graph tracing and memory allocation).
    """
    import tensorflow as tf

    records = list(records)
    if not records:
        return [], 0.0
    max_proposals = int(max_proposals)

    @tf.function(
        input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8)], reduce_retracing=True
    )
    def propose(image):
        out = model.propose(image, max_proposals=max_proposals)
        return out["proposal_boxes"][0], out["num_proposals"][0]

    def run(image):
        boxes, count = propose(tf.convert_to_tensor(image[None].astype(np.uint8, copy=False)))
        return boxes.numpy()[: int(count.numpy())]

    run(_record_image(records[0]))  # warm-up
    proposals, elapsed = [], 0.0
    for record in records:
        image = _record_image(record)
        start = time.perf_counter()
        boxes = run(image)
        elapsed += time.perf_counter() - start
        proposals.append(boxes.astype(np.float32).reshape(-1, 4))
    return proposals, elapsed / len(records)


def selective_search_proposals(records, max_proposals=2000, mode="fast", **kwargs):
    """Selective-search proposals for each record, and the seconds an image.

    Args:
        records: as for :func:`rpn_proposals`.
        max_proposals, mode: as for :func:`tfrcnn.data.proposals.selective_search`.
        **kwargs: more :func:`~tfrcnn.data.proposals.selective_search` arguments (``min_size``,
            ``max_side``, ``num_threads``, ``seed``).

    Returns:
        ``(proposals, seconds_per_image)``: float32 ``[P, 4]`` arrays in OpenCV's ranking order and
        the mean wall time of the search an image (image decoding not timed).
    """
    proposals, elapsed = [], 0.0
    records = list(records)
    for record in records:
        image = _record_image(record)
        start = time.perf_counter()
        proposals.append(selective_search(image, mode=mode, max_proposals=max_proposals, **kwargs))
        elapsed += time.perf_counter() - start
    return proposals, elapsed / max(len(records), 1)


# ---------------------------------------------------------------------------------------------
# reporting
def _threshold_index(thresholds, value):
    found = np.flatnonzero(np.isclose(np.asarray(thresholds, np.float64), value, atol=1e-6))
    return int(found[0]) if len(found) else None


def format_recall_table(results):
    """A text table of several methods' recall.

    Args:
        results: ``{method name: dict}``, each dict as :func:`proposal_recall` returns it, plus an
            optional ``"seconds"`` (seconds an image).

    Returns:
        str: one row a method and ``N``; columns ``recall@0.5``, ``recall@0.7`` (``n/a`` if the
        threshold was not computed), ``AR`` (mean over the thresholds), ``s/image``.

    Example output::

        method            N  recall@0.5  recall@0.7      AR  s/image
        RPN             300      0.9821      0.7010  0.5632   0.0412
    """
    header = ("method", "N", "recall@0.5", "recall@0.7", "AR", "s/image")
    rows = []
    for name, result in results.items():
        thresholds = result["iou_thresholds"]
        columns = [_threshold_index(thresholds, t) for t in TABLE_THRESHOLDS]
        seconds = result.get("seconds")
        for n in sorted(result["recall"]):
            recall = np.asarray(result["recall"][n])
            rows.append(
                (
                    str(name),
                    str(n),
                    *("n/a" if i is None else f"{recall[i]:.4f}" for i in columns),
                    f"{result['average_recall'][n]:.4f}",
                    "n/a" if seconds is None else f"{seconds:.4f}",
                )
            )
    width0 = max([len(header[0])] + [len(r[0]) for r in rows])
    widths = [width0] + [max([len(header[i])] + [len(r[i]) for r in rows]) for i in range(1, 6)]
    lines = [
        "  ".join(
            [header[0].ljust(widths[0])] + [h.rjust(w) for h, w in zip(header[1:], widths[1:])]
        )
    ]
    for row in rows:
        lines.append(
            "  ".join([row[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(row[1:], widths[1:])])
        )
    return "\n".join(lines)


def plot_recall_curves(results, path, title="Proposal recall vs IoU"):
    """Plot recall against the IoU threshold, one line a method and ``N``, to a PNG.

    Args:
        results: as for :func:`format_recall_table`.
        path: the PNG file, written atomically (complete or absent).
        title: the figure title.

    Returns:
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.8), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    styles = ("-", "--", ":", "-.")
    colours = [f"C{i}" for i in range(10)]
    for m, (name, result) in enumerate(results.items()):
        for k, n in enumerate(sorted(result["recall"])):
            axes.plot(
                result["iou_thresholds"],
                result["recall"][n],
                color=colours[m % 10],
                linestyle=styles[k % len(styles)],
                marker=".",
                label=f"{name}, N={n} (AR {result['average_recall'][n]:.3f})",
            )
    axes.set_xlabel("IoU threshold")
    axes.set_ylabel("recall")
    axes.set_ylim(0.0, 1.02)
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    if results:
        axes.legend(fontsize="small")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
    return path
