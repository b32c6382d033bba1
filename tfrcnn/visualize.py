"""Pictures: detections or ground truth drawn on an image.

Boxes are ``[y1, x1, y2, x2]`` in the image's pixels; class ids ``0 .. C - 1``.
"""

import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def class_color(class_id):
    """A stable, distinct RGB colour for a class id (golden-ratio hue steps)."""
    hue = (int(class_id) * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_boxes(image, boxes, classes, scores=None, class_names=None, line_width=2):
    """Draw boxes with their class name (and score) on a copy of ``image``.

    Args:
        image: uint8 ``[H, W, 3]`` array or a PIL image.
        boxes: ``[N, 4]`` ``[y1, x1, y2, x2]`` pixels.
        classes: ``[N]`` class ids; entries ``< 0`` (padding) are skipped.
        scores: optional ``[N]`` scores printed after the name.
        class_names: optional names indexed by class id.

    Returns:
        a PIL RGB image.

    Example:
        >>> draw_boxes(image, out["detection_boxes"][0], out["detection_classes"][0],
        ...            out["detection_scores"][0], ["cell"]).save("detections.png")
    """
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    image = image.convert("RGB").copy()
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    classes = np.asarray(classes).reshape(-1)
    for i, (box, cls) in enumerate(zip(boxes, classes)):
        if cls < 0:
            continue
        color = class_color(cls)
        y1, x1, y2, x2 = [float(v) for v in box]
        draw.rectangle([x1, y1, x2, y2], outline=color, width=line_width)
        name = class_names[int(cls)] if class_names is not None else str(int(cls))
        label = name if scores is None else f"{name} {float(scores[i]):.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), label, font=font)
        ty = max(y1 - (bottom - top) - 2, 0)
        draw.rectangle([x1, ty, x1 + (right - left) + 4, ty + (bottom - top) + 2], fill=color)
        draw.text((x1 + 2, ty), label, fill=(0, 0, 0), font=font)
    return image


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pr_curves(result, class_names, path):
    """Per-class precision/recall curves of a :func:`tfrcnn.evaluation.evaluate_detections`
    result, with each class's AP in the legend, written to a PNG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    for c, name in enumerate(class_names):
        recall, precision = result["recall"][c], result["precision"][c]
        if len(recall) == 0:
            continue
        envelope = np.maximum.accumulate(np.asarray(precision)[::-1])[::-1]
        ax.plot(
            recall,
            envelope,
            color=np.array(class_color(c)) / 255.0,
            label=f"{name} (AP {result['ap'][c]:.3f})",
        )
    ax.set_xlabel("recall")
    ax.set_ylabel("precision (interpolated)")
    ax.set_xlim(0, 1.0)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    ax.set_title(f"PR curves, IoU 0.5 (mAP {result['mAP']:.3f})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_history(history, path, keys=None):
    """Loss terms (and ``val_mAP`` on a second axis) per epoch from a ``History.history`` dict."""
    plt = _pyplot()
    keys = keys or [k for k in history if k.endswith("loss")]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in keys:
        ax.plot(range(1, len(history[key]) + 1), history[key], label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if "val_mAP" in history:
        ax2 = ax.twinx()
        ax2.plot(range(1, len(history["val_mAP"]) + 1), history["val_mAP"], "k--o", label="val_mAP")
        ax2.set_ylabel("val mAP@0.5")
        ax2.set_ylim(0, 1)
        ax2.legend(loc="center right")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
