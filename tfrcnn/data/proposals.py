"""External region proposals for Fast R-CNN: selective search, a proposal file, fixed-size padding.

Shapes: ``H``, ``W`` image height and width in pixels; ``P`` proposals of one image; ``N`` the fixed
number of proposals the Fast R-CNN input takes (``FasterRCNN(num_external_proposals=N)``).

Boxes are float32 ``[P, 4]`` ``[y1, x1, y2, x2]`` in absolute pixels of the original image
(continuous coordinates: a box covering pixel columns 0..9 has ``x1 = 0, x2 = 10``).

- :func:`selective_search` runs OpenCV's selective search (Uijlings et al., 2013), the proposal
  method of R-CNN and Fast R-CNN. It needs the optional extra ``selective_search``
  (``pip install opencv-contrib-python-headless``); everything else here is plain numpy.
- :func:`save_proposals` / :func:`load_proposals` store proposals of many images in one ``.npz``
  keyed by image id (computing selective search once and training on it many times is how Fast
  R-CNN was run). The write is atomic: the file is complete or absent.
- :func:`pad_proposals` makes the fixed-size, zero-padded ``[N, 4]`` array the model takes.

Example::

    boxes = selective_search(load_image(record["path"]), mode="fast", max_proposals=2000)
    save_proposals("bccd_test_ss.npz", {record["image_id"]: boxes})
    proposals = pad_proposals(load_proposals("bccd_test_ss.npz")[record["image_id"]], 2000)
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import zipfile

import numpy as np

from tfrcnn.data.images import load_image
from tfrcnn.export.atomic import atomic_file

SELECTIVE_SEARCH_MODES = ("fast", "quality")
"""OpenCV's two presets: ``fast`` (HSV and Lab colour spaces, k = 50, 100) and ``quality`` (more
colour spaces, k = 50..300, more strategies; several times slower and more proposals)."""

DEFAULT_MIN_SIZE = 10
"""Proposals narrower or shorter than this many pixels are dropped by default (selective search
also returns single-segment boxes a few pixels wide, which no detector head can use)."""

INSTALL_HINT = (
    "pip install opencv-contrib-python-headless   (or: pip install 'tfrcnn[selective_search]')"
)

_NPY_SUFFIX = ".npy"


# ---------------------------------------------------------------------------------------------
# selective search
def _import_ximgproc():
    """cv2 with the contrib module ``ximgproc``, or an ImportError that says what to install."""
    try:
        import cv2
    except ImportError as e:
        raise ImportError(
            f"selective search needs OpenCV with the contrib modules: {INSTALL_HINT}"
        ) from e
    if not hasattr(cv2, "ximgproc") or not hasattr(cv2.ximgproc, "segmentation"):
        raise ImportError(
            f"the installed OpenCV ({getattr(cv2, '__version__', 'unknown version')}) has no "
            "cv2.ximgproc.segmentation (the contrib modules); selective search needs "
            f"opencv-contrib: pip uninstall opencv-python opencv-python-headless; {INSTALL_HINT}"
        )
    return cv2


def _seed_c_rand(seed):
    """OpenCV ranks selective-search regions with C ``rand()``; seeding it makes the order
    reproducible. Best effort: where the C library cannot be reached, the order is left unseeded."""
    try:
        libc = ctypes.CDLL(None)
        libc.srand(ctypes.c_uint(int(seed) & 0xFFFFFFFF))
    except (OSError, AttributeError, TypeError):  # pragma: no cover - platform dependent
        pass


@contextlib.contextmanager
def _opencv_threads(cv2, num_threads):
    if num_threads is None:
        yield
        return
    previous = cv2.getNumThreads()
    cv2.setNumThreads(int(num_threads))
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


def _as_rgb8(image):
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(
            f"selective_search takes an image [H, W, 3] (RGB) or [H, W]; got shape {image.shape}"
        )
    image = image[:, :, :3]
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"selective_search got an empty image of shape {image.shape}")
    if image.dtype != np.uint8:
        if not np.all(np.isfinite(image)):
            raise ValueError("selective_search got an image with NaN or Inf pixels")
        image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return image


def unique_boxes(boxes):
    """The rows of ``boxes`` without repeats, first occurrences kept in their order.

    Example:
        >>> unique_boxes(np.array([[0, 0, 2, 2], [1, 1, 3, 3], [0, 0, 2, 2]]))
        array([[0, 0, 2, 2],
               [1, 1, 3, 3]])
    """
    boxes = np.asarray(boxes)
    if len(boxes) == 0:
        return boxes.reshape(0, 4)
    _, first = np.unique(boxes, axis=0, return_index=True)
    return boxes[np.sort(first)]


def selective_search(
    image,
    mode="fast",
    max_proposals=2000,
    min_size=DEFAULT_MIN_SIZE,
    *,
    max_side=None,
    num_threads=None,
    seed=0,
):
    """Selective-search proposals of one image, with OpenCV's ``ximgproc`` implementation.

    Args:
        image: ``uint8 [H, W, 3]`` RGB as :func:`tfrcnn.data.images.load_image` returns it
            (``[H, W]`` grayscale and RGBA are accepted; float pixels 0..255 are rounded), or a
            path, read with ``load_image``.
        mode: ``"fast"`` or ``"quality"`` (:data:`SELECTIVE_SEARCH_MODES`).
        max_proposals: keep the first this many (``None``: all).
        min_size: drop boxes whose height or width is below this many pixels (of the original
            image; default :data:`DEFAULT_MIN_SIZE`; 0 keeps all).
        max_side: if given and the image's longer side exceeds it, the search runs on the image
            downscaled to that side (much faster on large photos) and the boxes are scaled back.
        num_threads: OpenCV threads for the call (``cv2.setNumThreads``; restored afterwards);
            ``None`` leaves OpenCV's setting.
        seed: OpenCV ranks the regions with a random factor drawn from C ``rand()``; this seeds it
            (``srand``) so the same image gives the same order. ``None`` leaves it unseeded.

    Returns:
        float32 ``[P, 4]`` ``[y1, x1, y2, x2]`` absolute pixels of ``image``, in OpenCV's ranking
        order (its hierarchical-level rank with the random factor, as in Uijlings et al.), with
        repeated boxes removed, converted from OpenCV's ``(x, y, w, h)``; ``P <= max_proposals``.

    Raises:
        ImportError: OpenCV with the contrib modules is not installed (the message gives the
            ``pip install`` command).
        ValueError: a bad image or argument.

    Example:
        >>> boxes = selective_search(load_image("JPEGImages/BloodImage_00000.jpg"))
        >>> boxes.shape          # (P, 4), P <= 2000; ~3 s for 640 x 480 on one CPU core
    """
    if mode not in SELECTIVE_SEARCH_MODES:
        raise ValueError(f"mode must be one of {SELECTIVE_SEARCH_MODES}, got {mode!r}")
    if max_proposals is not None and int(max_proposals) < 0:
        raise ValueError(f"max_proposals must be >= 0 or None, got {max_proposals}")
    if min_size is None or min_size < 0:
        raise ValueError(f"min_size must be >= 0 pixels, got {min_size}")
    if max_side is not None and int(max_side) < 1:
        raise ValueError(f"max_side must be a positive number of pixels or None, got {max_side}")
    if num_threads is not None and int(num_threads) < 0:
        raise ValueError(f"num_threads must be >= 0 or None, got {num_threads}")
    cv2 = _import_ximgproc()
    if isinstance(image, (str, os.PathLike)):
        image = load_image(image)
    image = _as_rgb8(image)
    height, width = image.shape[:2]

    scale = 1.0
    if max_side is not None and max(height, width) > int(max_side):
        scale = int(max_side) / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))  # cv2 wants (w, h)
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    # OpenCV's colour conversions (HSV, Lab, ...) read the image as BGR.
    bgr = np.ascontiguousarray(image[:, :, ::-1])

    with _opencv_threads(cv2, num_threads):
        search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
        search.setBaseImage(bgr)
        if mode == "fast":
            search.switchToSelectiveSearchFast()
        else:
            search.switchToSelectiveSearchQuality()
        if seed is not None:
            _seed_c_rand(seed)
        xywh = np.asarray(search.process()).reshape(-1, 4)

    xywh = unique_boxes(xywh).astype(np.float64)
    x, y, w, h = xywh.T
    boxes = np.stack([y, x, y + h, x + w], axis=1) / scale
    boxes = np.minimum(np.maximum(boxes, 0.0), [height, width, height, width])
    if scale != 1.0:
        # Boxes of the downscaled image can coincide once mapped back and clipped.
        boxes = unique_boxes(boxes)
    keep = ((boxes[:, 2] - boxes[:, 0]) >= max(min_size, 1e-6)) & (
        (boxes[:, 3] - boxes[:, 1]) >= max(min_size, 1e-6)
    )
    boxes = boxes[keep]
    if max_proposals is not None:
        boxes = boxes[: int(max_proposals)]
    return boxes.astype(np.float32).reshape(-1, 4)


# ---------------------------------------------------------------------------------------------
# fixed-size input
def _check_boxes(boxes, where):
    boxes = np.asarray(boxes, dtype=np.float32)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(
            f"{where}: proposals must be [P, 4] [y1, x1, y2, x2] pixels, got shape {boxes.shape}"
        )
    return boxes


def pad_proposals(boxes, count):
    """Proposals of one image as the fixed-size Fast R-CNN input.

    Args:
        boxes: ``[P, 4]`` ``[y1, x1, y2, x2]`` pixels, best first.
        count: ``N``, the model's ``num_external_proposals``.

    Returns:
        float32 ``[N, 4]``: the first ``min(P, N)`` boxes, then rows of zeros (zero-area boxes,
        which the model treats as padding).

    Example:
        >>> pad_proposals([[0, 0, 5, 5]], 3)
        array([[0., 0., 5., 5.],
               [0., 0., 0., 0.],
               [0., 0., 0., 0.]], dtype=float32)
    """
    count = int(count)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    boxes = _check_boxes(boxes, "pad_proposals")
    out = np.zeros((count, 4), np.float32)
    kept = boxes[:count]
    out[: len(kept)] = kept
    return out


# ---------------------------------------------------------------------------------------------
# proposal files
def atomic_write(path, write):
    """Write a file atomically: ``write(fileobj)`` fills a temporary sibling of ``path``, which is
    then renamed into place (``os.replace``). On any error the temporary file is removed and an
    existing ``path`` is left as it was: the file is complete or absent, never half-written.

    Example:
        >>> atomic_write("out.bin", lambda f: f.write(b"data"))
    """
    with atomic_file(os.fspath(path)) as tmp, open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def save_proposals(path, proposals_by_image_id):
    """Save proposals of many images to one ``.npz`` (one float32 ``[P, 4]`` array an image id).

    Args:
        path: the file to write (conventionally ``*.npz``; the name is used as given). Written
            atomically (a temporary sibling, then ``os.replace``): complete or absent.
        proposals_by_image_id: ``{image_id: [P, 4] boxes}`` (ids are turned into ``str``; any id
            works, including ones like ``"file"`` that ``np.savez`` keywords would clash with).

    The file is a standard ``.npz`` (a zip of ``{image_id}.npy``), readable with ``np.load``.

    Example:
        >>> save_proposals("ss_test.npz", {"BloodImage_00001": boxes})
    """
    arrays = {}
    for image_id, boxes in proposals_by_image_id.items():
        key = str(image_id)
        if not key:
            raise ValueError("save_proposals: an empty image id")
        if key in arrays:
            raise ValueError(f"save_proposals: two image ids are both {key!r} as text")
        arrays[key] = _check_boxes(boxes, f"save_proposals {path}, image {key!r}")

    def write(f):
        with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_DEFLATED) as archive:
            for key, boxes in arrays.items():
                with archive.open(key + _NPY_SUFFIX, mode="w", force_zip64=True) as member:
                    np.lib.format.write_array(
                        member, np.ascontiguousarray(boxes), allow_pickle=False
                    )

    atomic_write(path, write)


def load_proposals(path):
    """Read a file written by :func:`save_proposals`.

    Returns:
        ``{image_id: float32 [P, 4]}`` in the order saved.

    Raises:
        FileNotFoundError: no such file. ValueError: not a proposal file, or an entry that is not
        ``[P, 4]`` (the message names the file and image id).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no proposal file at {path}")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise ValueError(
            f"{path} is not a proposal file written by save_proposals (.npz): {e}"
        ) from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} holds a single array, not proposals keyed by image id (.npz)")
    result = {}
    with archive:
        for key in archive.files:
            try:
                boxes = archive[key]
            except (ValueError, OSError, zipfile.BadZipFile) as e:
                raise ValueError(f"{path}, image {key!r}: unreadable entry: {e}") from e
            result[key] = _check_boxes(boxes, f"{path}, image {key!r}")
    return result
