"""Reading image files into 8-bit RGB arrays, robustly.

Shapes: ``H``, ``W`` image height and width in pixels (after EXIF orientation); ``N`` boxes.

Every reader goes through :func:`load_image`, so every image that enters tfrcnn has the same
form: ``uint8 [H, W, 3]`` RGB, upright (EXIF orientation applied), whatever the file held:

- the format is found from the file's content, not its extension (a PNG named ``.jpg`` loads);
- grayscale (``L``, ``1``) is repeated into three channels; palette (``P``) is expanded;
  ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` go through PIL's conversion to RGB;
- transparency (``RGBA``, ``LA``, ``PA``, a palette with a transparent colour) is **composited on
  white**: ``rgb * alpha + 255 * (1 - alpha)``. The colour under a fully transparent pixel is
  arbitrary (often black) and was never meant to be seen; white is what image viewers and
  browsers show, so the network sees what the annotator saw;
- 16-bit grayscale (``I;16``, ``I;16B``, ``I;16L``) maps the full 16-bit range onto 8 bits
  (``round(v / 257)``, so 65535 -> 255). 32-bit integer (``I``) and float (``F``) images carry no
  range of their own: values already within ``0..255`` are kept as they are, otherwise they are
  treated as 16-bit (clipped to ``0..65535``, divided by 257); float images within ``0..1`` are
  scaled by 255;
- an image of more than ``max_pixels`` pixels (default :data:`MAX_IMAGE_PIXELS`, 40 megapixels,
  the same limit and message as the SavedModel's ``serve_encoded``) raises :class:`ImageReadError`
  from its header, before any pixel is decoded;
- a missing, unidentifiable, corrupt or truncated file raises :class:`ImageReadError` naming the
  file. The decode is forced (``img.load()``) so a truncated file fails here, not later inside
  ``tf.data``. PIL's ``ImageFile.LOAD_TRUNCATED_IMAGES`` must stay ``False`` (tfrcnn never sets it);
  with it ``True`` PIL pads truncated images with grey and the error would be silent.

:func:`image_size` reads only the header (no pixel decoding), so sizing a 4000 px image is cheap.
:func:`check_image` adds a cheap integrity check (the end-of-image marker) used by the readers.

Example::

    image = load_image("JPEGImages/BloodImage_00000.jpg")   # uint8 (480, 640, 3)
    image_size("JPEGImages/BloodImage_00000.jpg")            # (480, 640)
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageFile

from tfrcnn.ops.image_header import MAX_IMAGE_PIXELS, too_large_message

ORIENTATION_TAG = 0x0112
"""The EXIF tag holding the orientation (1 = upright, 2..8 = flips and rotations)."""

NORMAL_ORIENTATION = 1

# EXIF orientation -> the PIL transpose that makes the image upright (as PIL.ImageOps.exif_transpose).
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
"""EXIF orientations that exchange the image's height and width."""

_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)

_JPEG_END = b"\xff\xd9"
_PNG_END = b"IEND\xaeB`\x82"


class ImageReadError(ValueError):
    """An image file is missing, not an image, corrupt or truncated. The message names the file."""


def _open(path, max_pixels=None):
    """Opens ``path`` lazily (header only); raises ImageReadError naming the file, also for an
    image above ``max_pixels`` (default :data:`MAX_IMAGE_PIXELS`)."""
    path = os.fspath(path)
    limit = MAX_IMAGE_PIXELS if max_pixels is None else int(max_pixels)
    if not os.path.isfile(path):
        raise ImageReadError(f"image file not found: {path}")
    try:
        img = Image.open(path)
    except Image.DecompressionBombError:
        height, width = _header_size(path)
        raise ImageReadError(
            f"cannot read image {path}: {too_large_message(height, width, limit)}"
        ) from None
    except _PIL_ERRORS as e:
        raise ImageReadError(f"cannot read image {path}: not a readable image ({e})") from None
    width, height = img.size
    if width * height > limit:
        img.close()
        raise ImageReadError(f"cannot read image {path}: {too_large_message(height, width, limit)}")
    return img


def _header_size(path):
    """``(height, width)`` from the file's header bytes (for images PIL refuses to open)."""
    import tensorflow as tf

    from tfrcnn.ops.image_header import encoded_image_size

    with open(path, "rb") as f:
        data = f.read()
    height, width = encoded_image_size(tf.constant(data))
    return int(height), int(width)


def _orientation(img):
    """The EXIF orientation 1..8 of an opened image; 1 when absent or invalid."""
    try:
        value = int(img.getexif().get(ORIENTATION_TAG, NORMAL_ORIENTATION))
    except Exception:  # a malformed EXIF block must not make a good image unreadable
        return NORMAL_ORIENTATION
    return value if value in _ORIENTATION_TRANSPOSE else NORMAL_ORIENTATION


def _oriented_size(stored_height, stored_width, orientation):
    if orientation in SWAPPING_ORIENTATIONS:
        return stored_width, stored_height
    return stored_height, stored_width


def image_orientation(path):
    """Returns ``(stored_height, stored_width, orientation)`` from the header, without decoding.

    ``stored_*`` is the pixel grid as stored in the file (before EXIF orientation);
    ``orientation`` is the EXIF orientation 1..8 (1 when the file has none).
    Raises ImageReadError for a missing or unidentifiable file.
    """
    with _open(path) as img:
        width, height = img.size
        return height, width, _orientation(img)


def image_size(path):
    """Returns ``(height, width)`` of the upright image (EXIF orientation applied), header only.

    No pixels are decoded, so this is cheap for any image size. It cannot detect a truncated
    file (see :func:`check_image`). Raises ImageReadError for a missing or unidentifiable file.
    """
    height, width, orientation = image_orientation(path)
    return _oriented_size(height, width, orientation)


def check_image(path, *, full=False, max_pixels=None):
    """Checks that ``path`` is a complete, readable image; returns ``(height, width)`` upright.

    ``full=False`` (quick): reads the header and checks the end-of-image marker of JPEG (``FFD9``)
    and PNG (``IEND``) files; when the marker is missing, or for other formats, it falls back to a
    full decode, which decides. ``full=True`` always decodes the pixels (slow for large datasets, but
    it also catches corrupt data in the middle of a complete-looking file).
    ``max_pixels``: the decoded-size limit (default :data:`MAX_IMAGE_PIXELS`).
    Raises ImageReadError naming the file.
    """
    path = os.fspath(path)
    with _open(path, max_pixels) as img:
        width, height = img.size
        orientation = _orientation(img)
        fmt = img.format
        ok = False
        if not full and fmt in ("JPEG", "MPO", "PNG"):
            ok = _has_end_marker(path, _PNG_END if fmt == "PNG" else _JPEG_END)
        if not ok:
            _force_decode(img, path)
    return _oriented_size(height, width, orientation)


def _has_end_marker(path, marker):
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 64))
        tail = f.read().rstrip(b"\x00\r\n ")
    return tail.endswith(marker)


def _force_decode(img, path):
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise ImageReadError(
            f"cannot check image {path}: PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True, which hides "
            "truncated files; set it back to False"
        )
    try:
        img.load()
    except _PIL_ERRORS as e:
        raise ImageReadError(f"cannot read image {path}: corrupt or truncated file ({e})") from None


def orient_boxes(boxes, orientation, stored_height, stored_width):
    """Maps boxes drawn on the stored pixel grid onto the upright image.

    Args:
      boxes: float ``[N, 4]`` ``(y1, x1, y2, x2)`` continuous pixel coordinates on the image as
        stored in the file (``stored_height`` x ``stored_width``), before EXIF orientation.
      orientation: EXIF orientation 1..8, as :func:`load_image` applies it.
      stored_height, stored_width: the stored image size.

    Returns:
      float32 ``[N, 4]`` boxes on the upright image, the same box order. A box keeps its
      "inverted" property (y2 < y1 stays so), so validation still sees it.

    Example: a ``[0, 0, 10, 20]`` box on a 100 x 200 image with orientation 6 (rotate 90 degrees
    clockwise to display) becomes ``[0, 90, 20, 100]`` on the 200 x 100 upright image.
    """
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    y1, x1, y2, x2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    h, w = float(stored_height), float(stored_width)
    mapped = {
        1: (y1, x1, y2, x2),
        2: (y1, w - x2, y2, w - x1),  # mirror left-right
        3: (h - y2, w - x2, h - y1, w - x1),  # rotate 180
        4: (h - y2, x1, h - y1, x2),  # mirror top-bottom
        5: (x1, y1, x2, y2),  # transpose (main diagonal)
        6: (x1, h - y2, x2, h - y1),  # rotate 90 clockwise
        7: (w - x2, h - y2, w - x1, h - y1),  # transverse (anti-diagonal)
        8: (w - x2, y1, w - x1, y2),  # rotate 90 counter-clockwise
    }
    if orientation not in mapped:
        raise ValueError(f"orientation must be an EXIF orientation 1..8, got {orientation!r}")
    return np.stack(mapped[orientation], axis=-1).astype(np.float32)


def load_image(path, max_pixels=None):
    """Decodes an image file into an upright ``uint8 [H, W, 3]`` RGB array.

    See the module docstring for the conversions (grayscale, palette, CMYK, 16-bit, alpha
    composited on white) and the EXIF orientation. The format is detected from the content.

    ``max_pixels``: the decoded-size limit (default :data:`MAX_IMAGE_PIXELS`, 40 megapixels).

    Raises:
      ImageReadError: the file is missing, not an image, corrupt or truncated, or above
        ``max_pixels`` pixels (names the file).

    Example::

        load_image("photo.jpg").shape   # (H, W, 3), dtype uint8
    """
    path = os.fspath(path)
    with _open(path, max_pixels) as img:
        _force_decode(img, path)
        orientation = _orientation(img)
        try:
            array = _to_rgb8(img)
        except _PIL_ERRORS as e:
            raise ImageReadError(
                f"cannot convert image {path} (mode {img.mode}) to RGB: {e}"
            ) from None
    if orientation != NORMAL_ORIENTATION:
        pil = Image.fromarray(array).transpose(_ORIENTATION_TRANSPOSE[orientation])
        array = np.asarray(pil)
    return np.ascontiguousarray(array, dtype=np.uint8)


def _to_rgb8(img):
    """Converts a decoded PIL image of any mode into ``uint8 [H, W, 3]`` RGB (no orientation)."""
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _gray_to_rgb(_high_depth_to_8bit(np.asarray(img), mode))
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    elif mode == "PA":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:4] / 255.0
        out = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _high_depth_to_8bit(values, mode):
    v = values.astype(np.float64)
    if mode.startswith("I;16"):
        return np.rint(np.clip(v, 0, 65535) / 257.0).astype(np.uint8)
    finite = v[np.isfinite(v)]
    vmin = finite.min() if finite.size else 0.0
    vmax = finite.max() if finite.size else 0.0
    v = np.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0)
    if mode == "F" and vmin >= 0.0 and vmax <= 1.0:
        v = v * 255.0
    elif vmax > 255.0 or vmin < 0.0:
        v = np.clip(v, 0, 65535) / 257.0
    return np.rint(np.clip(v, 0, 255)).astype(np.uint8)


def _gray_to_rgb(gray):
    return np.repeat(gray[..., None], 3, axis=-1)
