"""The SavedModel under hostile or heavy use: a decompression bomb refused from its header (memory
measured in a subprocess), images of the wrong layout, several threads at once."""

import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import threading
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfrcnn.export import saved_model
from tfrcnn.models import FasterRCNN

OUTPUTS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")


def bomb_png(height, width):
    """An 8-bit grayscale PNG of constant pixels, built row by row (its decoded size never sits in
    memory): 20,000 x 20,000 is about 400 KB of file."""

    def chunk(tag, data):
        return (
            struct.pack(">I", len(data))
            + tag
            + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    compressor = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # filter byte 0 + one byte a pixel
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def _png(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _image(seed, height=72, width=88):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image[10:40, 20:60] = (240, 30, 30)
    return image


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    keras.utils.set_random_seed(1)
    model = FasterRCNN(
        num_classes=3,
        image_min_side=64,
        image_max_side=96,
        detection_score_threshold=0.0,
        max_detections=20,
    )
    path = str(tmp_path_factory.mktemp("serving") / "tiny")
    saved_model(model, path)
    return path


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(exported)


def test_bomb_png_is_what_the_test_claims():
    data = bomb_png(20000, 20000)
    assert 300_000 < len(data) < 500_000
    assert struct.unpack(">II", data[16:24]) == (20000, 20000)
    with Image.open(io.BytesIO(bomb_png(30, 50))) as img:  # the builder writes valid PNGs
        assert img.size == (50, 30) and img.mode == "L"
        assert np.asarray(img).max() == 0


def test_serve_encoded_refuses_a_decompression_bomb_without_allocating_it(exported, tmp_path):
    """In a fresh process: peak RSS grows < 500 MB over the refused call, the error names the
    size and the limit, and the next normal request gives the same answer as the first."""
    script = textwrap.dedent(f"""
        import json, resource, sys
        sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
        import numpy as np, tensorflow as tf
        from test_serving_safety import bomb_png, _png, _image
        loaded = tf.saved_model.load({exported!r})
        serve = loaded.signatures["serve_encoded"]
        good = tf.constant([_png(_image(0))])
        first = serve(encoded_images=good)
        bomb = bomb_png(20000, 20000)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            serve(encoded_images=tf.constant([bomb]))
            error = None
        except tf.errors.InvalidArgumentError as e:
            error = e.message
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        second = serve(encoded_images=good)
        same = all(np.array_equal(first[k].numpy(), second[k].numpy()) for k in first)
        print(json.dumps(dict(error=error, grew_kb=after - before, same=same,
                              n=int(second["num_detections"][0]))))
    """)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["error"] is not None
    assert (
        "encoded_images[0]: image of 20000 x 20000 pixels (400.0 megapixels) is above the "
        "decoded-size limit of 40.0 megapixels (max_image_pixels)"
    ) in result["error"]
    assert result["grew_kb"] < 500 * 1024
    assert result["same"] and result["n"] == 20


def test_serve_encoded_names_the_refused_image_of_a_batch_and_keeps_serving(loaded):
    serve = loaded.signatures["serve_encoded"]
    good = _png(_image(3))
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"encoded_images\[1\]: image of 9000 x 5000 pixels \(45\.0 megapixels\)",
    ):
        serve(encoded_images=tf.constant([good, bomb_png(9000, 5000)]))
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"encoded_images\[0\]: not a JPEG, PNG, GIF, BMP or WebP image",
    ):
        serve(encoded_images=tf.constant([b"this is not an image at all, just text"]))
    out = serve(encoded_images=tf.constant([good]))
    ref = loaded.signatures["serving_default"](images=tf.constant(_image(3)[None]))
    for key in OUTPUTS:
        np.testing.assert_allclose(out[key].numpy(), ref[key].numpy(), rtol=1e-5, atol=1e-4)


def test_the_limit_is_a_model_setting_saved_with_the_export(tmp_path):
    model = FasterRCNN(num_classes=2, image_min_side=64, image_max_side=96, max_image_pixels=5000)
    assert model.get_config()["max_image_pixels"] == 5000
    path = saved_model(model, str(tmp_path / "small_limit"))
    serve = tf.saved_model.load(path).signatures["serve_encoded"]
    assert (
        int(serve(encoded_images=tf.constant([_png(_image(0, 50, 100))]))["num_detections"][0]) >= 0
    )
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"image of 50 x 101 pixels \(0\.0 megapixels\) is above the "
        r"decoded-size limit of 0\.0 megapixels",
    ):
        serve(encoded_images=tf.constant([_png(_image(0, 50, 101))]))


@pytest.mark.parametrize(
    "images, shape",
    [
        (np.zeros((72, 88, 3), np.uint8), "72, 88, 3"),
        (np.zeros((1, 72, 88, 1), np.uint8), "1, 72, 88, 1"),
        (np.zeros((1, 72, 88, 4), np.uint8), "1, 72, 88, 4"),
    ],
)
def test_serving_default_refuses_the_wrong_layout(loaded, images, shape):
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=rf"images must be \[B, H, W, 3\] RGB pixels, got shape \[{shape}\]",
    ):
        loaded.signatures["serving_default"](images=tf.constant(images))


def test_serving_default_refuses_float_pixels(loaded):
    """Non-finite pixels cannot reach the served model: its signatures take uint8 only."""
    nan = tf.fill([1, 72, 88, 3], float("nan"))
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a uint8 tensor"):
        loaded.signatures["serving_default"](images=nan)


def _rss_kb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def test_threads_get_the_single_threaded_results_and_memory_stays_flat(loaded):
    """8 threads x 25 calls of serving_default on 25 different images: the same detections as
    one thread, and RSS after the last call within 5% of RSS after the first 25."""
    serve = loaded.signatures["serving_default"]
    images = [tf.constant(_image(100 + i)[None]) for i in range(25)]
    reference = [{k: v.numpy() for k, v in serve(images=image).items()} for image in images]
    rss_first = _rss_kb()
    results, errors = {}, []

    def worker(t):
        try:
            order = np.random.default_rng(t).permutation(25)
            for i in order:
                results[(t, int(i))] = {k: v.numpy() for k, v in serve(images=images[i]).items()}
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rss_last = _rss_kb()
    assert not errors and len(results) == 200
    for (t, i), out in results.items():
        ref = reference[i]
        n = int(ref["num_detections"][0])
        assert int(out["num_detections"][0]) == n
        np.testing.assert_array_equal(out["detection_classes"], ref["detection_classes"])
        np.testing.assert_allclose(out["detection_boxes"], ref["detection_boxes"], atol=1e-3)
        np.testing.assert_allclose(out["detection_scores"], ref["detection_scores"], atol=1e-5)
    assert abs(rss_last - rss_first) <= 0.05 * rss_first, (rss_first, rss_last)
