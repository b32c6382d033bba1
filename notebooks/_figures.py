"""Figure helpers shared by the notebooks in this folder: boxes drawn with matplotlib, labels that
neither overlap nor leave their panel, and legends placed outside the data.

Boxes are ``[y1, x1, y2, x2]`` pixels of the image, as everywhere in tfrcnn.
"""
import numpy as np
from matplotlib import patches

from tfrcnn.visualize import class_color


def _rgb(class_id):
    return tuple(c / 255.0 for c in class_color(class_id))


def _overlaps(a, b, pad=1.0):
    return not (a.x1 + pad <= b.x0 or b.x1 + pad <= a.x0 or a.y1 + pad <= b.y0 or b.y1 + pad <= a.y0)


def draw_detections(ax, image, boxes, classes, scores=None, names=None, labels=True, fontsize=8,
                    line_width=1.5, legend=True):
    """Show ``image`` on ``ax`` with its boxes, one colour a class.

    With ``labels`` each box gets a ``name score`` tag, placed at the first of a few spots (above
    the box, inside its top, below it, inside its bottom; left or right aligned) where it stays
    inside the panel and overlaps no earlier tag; a tag with no free spot is left out and counted
    in the returned number. Without ``labels`` (many small boxes) the class colours go in a legend
    under the panel. Returns the number of tags left out. Lay the figure out before calling it
    (no ``tight_layout`` afterwards: the tags are placed for the panel's size at the call).
    """
    image = np.asarray(image)
    ax.imshow(image)
    ax.set_xlim(-0.5, image.shape[1] - 0.5)
    ax.set_ylim(image.shape[0] - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    classes = np.asarray(classes).reshape(-1)
    order = np.argsort(-np.asarray(scores)) if scores is not None else np.arange(len(classes))
    name = (lambda c: names[int(c)]) if names is not None else (lambda c: str(int(c)))
    for i in order:
        if classes[i] < 0:
            continue
        y1, x1, y2, x2 = boxes[i]
        ax.add_patch(patches.Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False,
                                       edgecolor=_rgb(classes[i]), lw=line_width))
    if not labels:
        if legend:
            present = sorted({int(c) for c in classes if c >= 0})
            handles = [patches.Patch(facecolor="none", edgecolor=_rgb(c), lw=2, label=name(c))
                       for c in present]
            if handles:
                ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02),
                          ncol=len(handles), fontsize=fontsize, frameon=False)
        return 0
    renderer = ax.figure.canvas.get_renderer()
    ax.apply_aspect()  # the panel's final box (imshow keeps the image's aspect)
    panel = ax.get_window_extent(renderer)
    placed, dropped = [], 0
    for i in order:
        if classes[i] < 0:
            continue
        y1, x1, y2, x2 = (float(v) - 0.5 for v in boxes[i])
        text = name(classes[i]) if scores is None else f"{name(classes[i])} {float(scores[i]):.2f}"
        spots = [(x, y, ha, va) for (y, va) in ((y1, "bottom"), (y1, "top"), (y2, "top"),
                                                (y2, "bottom"))
                 for (x, ha) in ((x1, "left"), (x2, "right"))]
        for x, y, ha, va in spots:
            tag = ax.text(x, y, text, ha=ha, va=va, fontsize=fontsize, color="black",
                          bbox={"boxstyle": "square,pad=0.1", "facecolor": _rgb(classes[i]),
                                "edgecolor": "none", "alpha": 0.85}, clip_on=True)
            extent = tag.get_window_extent(renderer)
            inside = (extent.x0 >= panel.x0 and extent.x1 <= panel.x1 and extent.y0 >= panel.y0
                      and extent.y1 <= panel.y1)
            if inside and not any(_overlaps(extent, other) for other in placed):
                placed.append(extent)
                break
            tag.remove()
        else:
            dropped += 1
    return dropped


def legend_below(ax, ncol=3, fontsize=9, **kwargs):
    """A legend under the axes, outside the data."""
    return ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=ncol,
                     fontsize=fontsize, frameon=False, **kwargs)


def legend_right(ax, fontsize=9, **kwargs):
    """A legend to the right of the axes, outside the data."""
    return ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=fontsize,
                     frameon=False, **kwargs)
