"""Image sizes from the header bytes of encoded images, in the graph, before any decoding.

A small file can hold a huge image (a constant 20,000 x 20,000 grayscale PNG compresses to about
400 KB and decodes to 1.2 GB of RGB), so anything that decodes untrusted bytes first reads the size
from the header and refuses images above a pixel limit. Width and height sit in the first bytes:

- PNG: big-endian uint32 width, height at bytes 16, 20 (the IHDR chunk);
- GIF: little-endian uint16 width, height at 6, 8 (the logical screen, which the decoder allocates);
- BMP: little-endian int32 width, height at 18, 22 (height negative for top-down rows);
- WebP: the ``VP8 `` (lossy), ``VP8L`` (lossless) or ``VP8X`` (extended) chunk at byte 12;
- JPEG: the start-of-frame segment, found by ``tf.io.extract_jpeg_shape`` (reads markers only).

:func:`encoded_image_size` is the graph op; :func:`too_large_message` the shared text, used by the
SavedModel's ``serve_encoded`` and by the file readers (:mod:`tfrcnn.data.images`) alike.
"""

import tensorflow as tf

MAX_IMAGE_PIXELS = 40_000_000
"""The default decoded-size limit: 40 megapixels (e.g. 8000 x 5000)."""

UNKNOWN_FORMAT = -1
_HEAD = 32


def too_large_message(height, width, limit):
    """The refusal text, e.g. ``image of 20000 x 20000 pixels (400.0 megapixels) is above the
    decoded-size limit of 40.0 megapixels (max_image_pixels): ...``."""
    return (
        f"image of {int(height)} x {int(width)} pixels ({height * width / 1e6:.1f} megapixels) "
        f"is above the decoded-size limit of {limit / 1e6:.1f} megapixels (max_image_pixels): "
        "resize it first, or raise max_image_pixels"
    )


def _tf_too_large_message(height, width, limit):
    megapixels = tf.cast(height, tf.float64) * tf.cast(width, tf.float64) / 1e6
    return tf.strings.join(
        [
            "image of ",
            tf.strings.as_string(height),
            " x ",
            tf.strings.as_string(width),
            " pixels (",
            tf.strings.as_string(megapixels, precision=1),
            (
                f" megapixels) is above the decoded-size limit of {limit / 1e6:.1f} megapixels "
                "(max_image_pixels): resize it first, or raise max_image_pixels"
            ),
        ]
    )


def _u(head, start, count, big_endian):
    """Unsigned integer of ``count`` bytes at ``start`` of the uint8 vector ``head`` (int64)."""
    value = tf.constant(0, tf.int64)
    order = range(count) if big_endian else reversed(range(count))
    for i in order:
        value = value * 256 + tf.cast(head[start + i], tf.int64)
    return value


def _starts_with(head, magic, offset=0):
    return tf.reduce_all(
        tf.equal(head[offset : offset + len(magic)], tf.constant(list(magic), tf.uint8))
    )


def encoded_image_size(data):
    """``(height, width)`` int64 scalars of one encoded image (scalar string), from its header.

    Both are ``-1`` (:data:`UNKNOWN_FORMAT`) when the bytes are none of JPEG, PNG, GIF, BMP and
    WebP. A JPEG whose markers are broken raises ``InvalidArgumentError`` (as decoding would).

    Example:
        >>> encoded_image_size(tf.io.encode_png(tf.zeros([30, 40, 1], tf.uint8)))
        (30, 40)
    """
    head = tf.strings.substr(data, 0, _HEAD)
    head = tf.strings.substr(tf.strings.join([head, "\0" * _HEAD]), 0, _HEAD)
    head = tf.io.decode_raw(head, tf.uint8)
    is_jpeg = _starts_with(head, b"\xff\xd8\xff")
    is_png = _starts_with(head, b"\x89PNG\r\n\x1a\n")
    is_gif = _starts_with(head, b"GIF8")
    is_bmp = _starts_with(head, b"BM")
    is_webp = tf.logical_and(_starts_with(head, b"RIFF"), _starts_with(head, b"WEBP", 8))
    webp_lossy = _starts_with(head, b"VP8 ", 12)
    webp_lossless = _starts_with(head, b"VP8L", 12)
    webp_extended = _starts_with(head, b"VP8X", 12)
    lossless_bits = _u(head, 21, 4, big_endian=False)

    def int32(value):  # BMP stores signed sizes
        return tf.abs(tf.where(value >= 2**31, value - 2**32, value))

    unknown = tf.constant(UNKNOWN_FORMAT, tf.int64)
    candidates = [
        (is_png, _u(head, 20, 4, True), _u(head, 16, 4, True)),
        (is_gif, _u(head, 8, 2, False), _u(head, 6, 2, False)),
        (is_bmp, int32(_u(head, 22, 4, False)), int32(_u(head, 18, 4, False))),
        (
            tf.logical_and(is_webp, webp_lossy),
            _u(head, 28, 2, False) % 16384,
            _u(head, 26, 2, False) % 16384,
        ),
        (
            tf.logical_and(is_webp, webp_lossless),
            (lossless_bits // 16384) % 16384 + 1,
            lossless_bits % 16384 + 1,
        ),
        (
            tf.logical_and(is_webp, webp_extended),
            _u(head, 27, 3, False) + 1,
            _u(head, 24, 3, False) + 1,
        ),
    ]
    height, width = unknown, unknown
    for flag, h, w in reversed(candidates):
        height = tf.where(flag, h, height)
        width = tf.where(flag, w, width)

    def jpeg():
        shape = tf.cast(tf.io.extract_jpeg_shape(data), tf.int64)
        return shape[0], shape[1]

    return tf.cond(is_jpeg, jpeg, lambda: (height, width))


def check_encoded_image(data, max_pixels, name="encoded_images", index=None):
    """``data`` unchanged if its header names a JPEG, PNG, GIF, BMP or WebP image of at most
    ``max_pixels`` pixels; else ``InvalidArgumentError`` with :func:`too_large_message`'s text
    (prefixed by ``name[index]: ``), before anything is decoded."""
    height, width = encoded_image_size(data)
    where = (
        name if index is None else tf.strings.join([name, "[", tf.strings.as_string(index), "]"])
    )
    known = height >= 0
    small = tf.cast(height, tf.float64) * tf.cast(width, tf.float64) <= float(max_pixels)

    def fail(text):
        def build():
            return tf.strings.join([where, ": ", text()])

        return build

    checks = []
    for ok, text in (
        (known, lambda: tf.constant("not a JPEG, PNG, GIF, BMP or WebP image (unknown header)")),
        (
            tf.logical_or(tf.logical_not(known), small),
            lambda: _tf_too_large_message(height, width, max_pixels),
        ),
    ):
        checks.append(tf.cond(ok, lambda: tf.constant(True), _raiser(ok, fail(text))))
    with tf.control_dependencies(checks):
        return tf.identity(data)


def _raiser(ok, message):
    def raise_():
        with tf.control_dependencies(
            [tf.raw_ops.Assert(condition=ok, data=[message()], summarize=1)]
        ):
            return tf.constant(False)

    return raise_
