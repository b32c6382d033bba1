"""tfrcnn.ops.image_header: sizes from the header bytes of every format decode_image reads, and the
decoded-size limit shared by the serving signature and the file readers."""

import io
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfrcnn.data.images import ImageReadError, check_image, image_size, load_image
from tfrcnn.ops.image_header import (
    MAX_IMAGE_PIXELS,
    UNKNOWN_FORMAT,
    check_encoded_image,
    encoded_image_size,
    too_large_message,
)


def bomb_png(height, width):
    """An 8-bit grayscale PNG of zeros, compressed row by row (20,000 x 20,000 is about 400 KB)."""

    def chunk(tag, data):
        return (
            struct.pack(">I", len(data))
            + tag
            + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    compressor = zlib.compressobj(9)
    row = b"\0" * (width + 1)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def _encode(fmt, size, mode="RGB", **options):
    buffer = io.BytesIO()
    Image.new(mode, size, 128).save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "fmt, mode, options",
    [
        ("PNG", "RGB", {}),
        ("PNG", "L", {}),
        ("PNG", "RGBA", {}),
        ("JPEG", "RGB", {}),
        ("JPEG", "L", {"progressive": True}),
        ("JPEG", "RGB", {"exif": b"Exif\0\0" + b"x" * 3000}),
        ("GIF", "P", {}),
        ("BMP", "RGB", {}),
        ("WEBP", "RGB", {}),
        ("WEBP", "RGB", {"lossless": True}),
        ("WEBP", "RGBA", {"exif": b"Exif\0\0abc"}),
    ],
)
def test_header_size_matches_the_decoded_size(fmt, mode, options):
    for width, height in ((301, 123), (17, 4099), (1, 1)):
        data = _encode(fmt, (width, height), mode, **options)
        h, w = encoded_image_size(tf.constant(data))
        decoded = tf.io.decode_image(data, expand_animations=False)
        assert (int(h), int(w)) == (height, width) == tuple(decoded.shape[:2])


def test_top_down_bmp_and_unknown_bytes():
    data = bytearray(_encode("BMP", (40, 30)))
    data[22:26] = (-30).to_bytes(4, "little", signed=True)  # rows stored top-down
    assert [int(v) for v in encoded_image_size(tf.constant(bytes(data)))] == [30, 40]
    for junk in (b"", b"GIF", b"hello world, not an image", b"\0" * 100):
        assert [int(v) for v in encoded_image_size(tf.constant(junk))] == [UNKNOWN_FORMAT] * 2


def test_check_refuses_above_the_limit_and_passes_below():
    data = _encode("PNG", (100, 50))
    assert check_encoded_image(tf.constant(data), 5000).numpy() == data
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"encoded_images\[3\]: image of 50 x 100 pixels \(0\.0 megapixels\) "
        r"is above the decoded-size limit of 0\.0 megapixels",
    ):
        check_encoded_image(tf.constant(data), 4999, index=3)
    assert too_large_message(50, 100, 4999) == (
        "image of 50 x 100 pixels (0.0 megapixels) is above the decoded-size limit of 0.0 "
        "megapixels (max_image_pixels): resize it first, or raise max_image_pixels"
    )
    assert MAX_IMAGE_PIXELS == 40_000_000


@pytest.mark.parametrize("height, width", [(9000, 5000), (20000, 20000)])
def test_readers_refuse_with_the_same_message(tmp_path, height, width):
    path = tmp_path / "big.png"
    path.write_bytes(bomb_png(height, width))
    text = too_large_message(height, width, MAX_IMAGE_PIXELS)
    for read in (load_image, check_image, image_size):
        with pytest.raises(ImageReadError) as info:
            read(str(path))
        assert str(info.value) == f"cannot read image {path}: {text}"
    small = tmp_path / "small.png"
    small.write_bytes(bomb_png(30, 40))
    assert load_image(str(small)).shape == (30, 40, 3)
    with pytest.raises(ImageReadError, match=r"image of 30 x 40 pixels"):
        load_image(str(small), max_pixels=1199)
    assert np.all(load_image(str(small), max_pixels=1200) == 0)
