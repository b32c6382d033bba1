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
