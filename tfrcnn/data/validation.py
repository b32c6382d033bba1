"""Checking and cleaning ground-truth boxes, and counting what was wrong.

Shapes: ``N`` boxes of one image. Boxes are float ``[N, 4]`` ``(y1, x1, y2, x2)`` absolute pixels,
continuous coordinates (a box covering pixels 0..9 is ``[0, 0, 10, 10]``); classes are int ``[N]``
in ``0 .. num_classes - 1``.

The rules of :func:`validate_record`, checked in this order; a box gets at most one issue, the first
that applies:

=============  ======================================================  ================  =========
kind           when                                                    mode="skip"       "strict"
=============  ======================================================  ================  =========
non_finite     a coordinate is NaN or +-Inf                            dropped, warning  raises
inverted       ``y2 < y1`` or ``x2 < x1`` (``inclusive``: as written)  dropped, warning  raises
degenerate     zero height or width (see ``inclusive`` for VOC)        dropped, warning  raises
bad_label      class not in ``0 .. num_classes - 1`` / unknown name    dropped, warning  raises
outside        nothing of the box is left inside the image             dropped, warning  raises
clipped        partly outside the image: clipped to it                 clipped, info     clipped
=============  ======================================================  ================  =========

Every issue is a string naming the source (file), the box index, the box values and the problem;
skip mode logs it as a warning (clipping: info) and strict mode raises :class:`AnnotationError`
with the same message. Readers count the issues, and the image-level ones (unreadable_image, size_mismatch, empty_image, bad_annotation), in a
:class:`ValidationReport`.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

logger = logging.getLogger(__name__)

SKIP = "skip"
STRICT = "strict"
MODES = (SKIP, STRICT)

NON_FINITE = "non_finite"
INVERTED = "inverted"
DEGENERATE = "degenerate"
BAD_LABEL = "bad_label"
OUTSIDE = "outside"
CLIPPED = "clipped"


class AnnotationError(ValueError):
    """A ground-truth annotation is invalid (strict mode). The message names file, box and values."""


def check_mode(mode):
    """Raises ValueError unless ``mode`` is ``"skip"`` or ``"strict"``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


@dataclasses.dataclass
class ValidationReport:
    """Counts of what a reader found wrong, and kept.

    Box-level counts (one per box): ``non_finite``, ``inverted``, ``degenerate`` (zero area),
    ``bad_label``, ``outside`` (all dropped), ``clipped`` (kept, clipped to the image).
    Image-level counts: ``unreadable_image`` (missing, corrupt or truncated file: skipped),
    ``bad_annotation`` (annotation file missing or unparsable: skipped), ``size_mismatch``
    (annotated size disagrees with the real image: rescaled or skipped, see the reader),
    ``empty_image`` (no boxes left: kept, or skipped with ``skip_empty``).
    ``images`` and ``boxes`` count what was kept; ``skipped_images`` the images left out;
    ``issues`` holds every message.

    Example::

        records, names, report = read_voc(root)
        print(report.summary())
    """

    images: int = 0
    boxes: int = 0
    skipped_images: int = 0
    non_finite: int = 0
    degenerate: int = 0
    inverted: int = 0
    clipped: int = 0
    outside: int = 0
    bad_label: int = 0
    unreadable_image: int = 0
    bad_annotation: int = 0
    size_mismatch: int = 0
    empty_image: int = 0
    issues: list = dataclasses.field(default_factory=list)

    COUNT_FIELDS = (
        "non_finite",
        "degenerate",
        "inverted",
        "clipped",
        "outside",
        "bad_label",
        "unreadable_image",
        "bad_annotation",
        "size_mismatch",
        "empty_image",
    )

    def add(self, kind, message):
        """Counts one issue of ``kind`` (a count field name) and keeps its message."""
        if kind not in self.COUNT_FIELDS:
            raise ValueError(f"unknown issue kind {kind!r}; expected one of {self.COUNT_FIELDS}")
        setattr(self, kind, getattr(self, kind) + 1)
        self.issues.append(message)

    @property
    def num_issues(self):
        """The number of issues of every kind."""
        return sum(getattr(self, k) for k in self.COUNT_FIELDS)

    def summary(self):
        """One line: what was kept, then every non-zero issue count."""
        head = f"{self.images} images, {self.boxes} boxes kept"
        if self.skipped_images:
            head += f", {self.skipped_images} images skipped"
        found = [f"{getattr(self, k)} {k}" for k in self.COUNT_FIELDS if getattr(self, k)]
        return head + ("; issues: " + ", ".join(found) if found else "; no issues")


def _fmt_box(box):
    return "[" + ", ".join(f"{float(v):g}" for v in box) + "]"


def validate_record(
    boxes,
    classes,
    height,
    width,
    *,
    source,
    num_classes,
    mode=SKIP,
    inclusive=False,
    class_names=None,
    labels=None,
    describe=None,
    report=None,
):
    """Checks one image's boxes and classes; drops, clips or raises per the module's rules.

    Args:
      boxes: float ``[N, 4]`` ``(y1, x1, y2, x2)`` absolute pixels, continuous coordinates.
      classes: int ``[N]``; valid ids are ``0 .. num_classes - 1``.
      height, width: the image size in pixels (boxes are clipped to ``[0, height] x [0, width]``).
      source: names the image in messages, e.g. ``"Annotations/0001.xml"``.
      num_classes: the number of user classes.
      mode: ``"skip"`` (drop bad boxes with a logged warning) or ``"strict"`` (raise
        AnnotationError with the same message).
      inclusive: True when the boxes were converted from inclusive 1-based pixel corners (VOC:
        ``x1 = xmin - 1, x2 = xmax``). Degenerate and inverted are then judged on the source's
        numbers: ``xmax == xmin`` (one pixel after conversion, the two corners the annotator
        clicked coincide) is degenerate, ``xmax < xmin`` inverted. Default False: judged on the
        continuous box (zero height or width is degenerate, ``x2 < x1`` inverted).
      class_names: optional names of the classes, used in messages.
      labels: optional ``[N]`` labels as written in the source (e.g. class names), used in messages
        for bad labels.
      describe: optional ``describe(i) -> str`` naming box ``i`` as the source wrote it (e.g. VOC's
        xmin/ymin/xmax/ymax); default ``"box i [y1, x1, y2, x2]=[...]"``.
      report: optional ValidationReport that counts every issue.

    Returns:
      ``((boxes, classes, kept_mask), issues)``: float32 ``[M, 4]`` cleaned boxes, int32 ``[M]``
      classes, bool ``[N]`` mask of the input boxes kept, and the list of issue messages (clipped
      boxes included).

    Raises:
      AnnotationError: in strict mode, for the first dropped box.
      ValueError: for a bad mode, shapes or image size.

    Example::

        (b, c, keep), issues = validate_record([[0, 0, 10, 10], [5, 5, 5, 9]], [0, 1], 20, 20,
                                               source="a.xml", num_classes=2)
        # b == [[0, 0, 10, 10]], keep == [True, False], issues[0] names "a.xml box 1"
    """
    check_mode(mode)
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"{source}: boxes must have shape [N, 4] (y1, x1, y2, x2), got {b.shape}")
    c = np.asarray(classes).reshape(-1)
    if c.shape[0] != b.shape[0]:
        raise ValueError(f"{source}: {b.shape[0]} boxes but {c.shape[0]} classes")
    if not (height > 0 and width > 0):
        raise ValueError(
            f"{source}: image size must be positive, got height={height}, width={width}"
        )
    if labels is not None and len(labels) != b.shape[0]:
        raise ValueError(f"{source}: {b.shape[0]} boxes but {len(labels)} labels")

    offset = 1.0 if inclusive else 0.0
    kept = np.zeros(b.shape[0], dtype=bool)
    out = b.copy()
    issues = []
    for i in range(b.shape[0]):
        box = b[i]
        y1, x1, y2, x2 = box
        if describe is None:
            where = f"{source} box {i} [y1, x1, y2, x2]={_fmt_box(box)}"
        else:
            where = f"{source} {describe(i)}"
        kind, problem = None, None
        if not np.all(np.isfinite(box)):
            kind, problem = NON_FINITE, "non-finite coordinate"
        elif (y2 - y1) - offset < 0 or (x2 - x1) - offset < 0:
            kind, problem = INVERTED, "inverted box (bottom or right edge before top or left edge)"
        elif (y2 - y1) - offset <= 0 or (x2 - x1) - offset <= 0:
            kind, problem = (
                DEGENERATE,
                "degenerate box (zero area: the two corners coincide in a dimension)",
            )
        else:
            label_ok = _is_valid_label(c[i], num_classes)
            if not label_ok:
                kind, problem = (
                    BAD_LABEL,
                    _label_problem(
                        c[i], num_classes, class_names, None if labels is None else labels[i]
                    ),
                )
            else:
                cy1, cx1 = min(max(y1, 0.0), height), min(max(x1, 0.0), width)
                cy2, cx2 = min(max(y2, 0.0), height), min(max(x2, 0.0), width)
                if cy2 - cy1 <= 0 or cx2 - cx1 <= 0:
                    kind, problem = OUTSIDE, f"box entirely outside the {height}x{width} image"
                elif (cy1, cx1, cy2, cx2) != (y1, x1, y2, x2):
                    msg = (
                        f"{where}: partly outside the {height}x{width} image, clipped to "
                        f"{_fmt_box((cy1, cx1, cy2, cx2))}"
                    )
                    out[i] = (cy1, cx1, cy2, cx2)
                    issues.append(msg)
                    logger.info(msg)
                    if report is not None:
                        report.add(CLIPPED, msg)
        if kind is None:
            kept[i] = True
            continue
        msg = f"{where}: {problem}"
        if mode == STRICT:
            raise AnnotationError(msg)
        logger.warning("%s; box skipped", msg)
        issues.append(msg)
        if report is not None:
            report.add(kind, msg)
    new_boxes = out[kept].astype(np.float32).reshape(-1, 4)
    new_classes = c[kept].astype(np.int32) if c.size else np.zeros((0,), np.int32)
    return (new_boxes, new_classes, kept), issues


def _is_valid_label(value, num_classes):
    try:
        f = float(value)
    except (TypeError, ValueError):
        return False
    return np.isfinite(f) and f == int(f) and 0 <= int(f) < num_classes


def _label_problem(value, num_classes, class_names, label):
    if isinstance(label, str):
        known = ", ".join(class_names) if class_names is not None else f"{num_classes} classes"
        return f"unknown class name {label!r} (known: {known})"
    if isinstance(value, np.generic):
        value = value.item()
    return f"class id {value!r} not in 0..{num_classes - 1}"
