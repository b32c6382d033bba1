"""tfrcnn.export.saved_model: signatures, equality with Keras, metadata, loading without tfrcnn,
saved_model_cli, atomic writes."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrcnn.export import atomic, saved_model
from tfrcnn.models import FasterRCNN

CLASS_NAMES = ("cat", "dog", "red blood cell")
SIZES = ((64, 80), (120, 90), (200, 300))  # three sizes: landscape, portrait, larger
OUTPUTS = (
    "detection_boxes",
    "detection_boxes_normalized",
    "detection_scores",
    "detection_classes",
    "num_detections",
)


def _image(height, width, seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image[height // 4 : height // 2, width // 4 : width // 2] = (250, 20, 20)  # a bright block
    return image


def _subprocess_env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    env.pop("PYTHONPATH", None)
    return env


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    # Random weights and score threshold 0: every image has D = 100 detections.
    return FasterRCNN(num_classes=3, class_names=CLASS_NAMES, detection_score_threshold=0.0)


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("export") / "tiny")
    saved_model(model, path)
    return path


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(exported)


def test_folder_layout_assets_and_no_temp_left(exported, model):
    parent = os.path.dirname(exported)
    assert sorted(os.listdir(parent)) == ["tiny"]  # no .tiny.tmp-* / .tiny.old-* sibling left
    assert os.path.isfile(os.path.join(exported, "saved_model.pb"))
    with open(os.path.join(exported, "assets", "class_names.txt"), encoding="utf-8") as f:
        assert f.read().splitlines() == list(CLASS_NAMES)
    with open(os.path.join(exported, "assets", "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    assert config["num_classes"] == 3 and config["class_names"] == list(CLASS_NAMES)
    # The config rebuilds the same architecture.
    rebuilt = FasterRCNN.from_config(config)
    assert [w.shape for w in rebuilt.weights] == [w.shape for w in model.weights]


def test_metadata_on_the_loaded_object_and_signature(loaded, model):
    assert sorted(loaded.signatures) == ["metadata", "serve_encoded", "serving_default"]
    assert [n.decode() for n in loaded.class_names.numpy()] == list(CLASS_NAMES)
    assert json.loads(loaded.config_json.numpy().decode()) == json.loads(
        json.dumps(model.get_config())
    )
    meta = loaded.signatures["metadata"]()
    assert [n.decode() for n in meta["class_names"].numpy()] == list(CLASS_NAMES)
    assert int(meta["num_classes"]) == 3 and int(meta["max_detections"]) == 100
    assert json.loads(meta["config_json"].numpy().decode())["preset"] == "tiny"
    # The asset files are tracked (they travel with a copy of the folder).
    assert loaded.class_names_file.asset_path.numpy().decode().endswith("class_names.txt")


def test_serving_default_equals_keras_predict_at_three_sizes(model, loaded):
    serve = loaded.signatures["serving_default"]
    for seed, (height, width) in enumerate(SIZES):
        images = np.stack([_image(height, width, seed), _image(height, width, seed + 10)])
        expected = model.predict(images, verbose=0)
        got = {k: v.numpy() for k, v in serve(images=tf.constant(images)).items()}
        assert sorted(got) == sorted(OUTPUTS)
        assert got["detection_boxes"].shape == (2, 100, 4)
        np.testing.assert_array_equal(got["num_detections"], expected["num_detections"])
        assert (got["num_detections"] == 100).all()
        np.testing.assert_array_equal(got["detection_classes"], expected["detection_classes"])
        # Same kernels: equal up to float32 rounding at pixel magnitudes (< 1e-4 px).
        np.testing.assert_allclose(got["detection_boxes"], expected["detection_boxes"], atol=1e-4)
        np.testing.assert_allclose(got["detection_scores"], expected["detection_scores"], atol=1e-5)
        size = np.array([height, width, height, width], np.float32)
        np.testing.assert_allclose(
            got["detection_boxes_normalized"] * size, got["detection_boxes"], atol=1e-4
        )
        assert got["detection_boxes_normalized"].min() >= 0.0
        assert got["detection_boxes_normalized"].max() <= 1.0
        assert got["detection_classes"].dtype == np.int32


def test_serve_encoded_mixed_sizes_and_formats(loaded):
    serve = loaded.signatures["serving_default"]
    encoded_fn = loaded.signatures["serve_encoded"]
    rgb = [_image(h, w, i) for i, (h, w) in enumerate(SIZES)]
    gray = _image(72, 96, 7)[:, :, :1]
    payloads = [
        tf.io.encode_png(rgb[0]),
        tf.io.encode_png(rgb[1]),
        tf.io.encode_png(rgb[2]),
        tf.io.encode_png(gray),
        tf.io.encode_jpeg(rgb[0], quality=95),
    ]
    got = {k: v.numpy() for k, v in encoded_fn(encoded_images=tf.stack(payloads)).items()}
    assert got["detection_boxes"].shape == (5, 100, 4)
    # PNG is lossless: the same result as the uint8 signature on the same pixels.
    references = rgb + [np.repeat(gray, 3, axis=-1)]
    for i, image in enumerate(references):
        expected = {k: v.numpy()[0] for k, v in serve(images=tf.constant(image[None])).items()}
        np.testing.assert_array_equal(got["detection_classes"][i], expected["detection_classes"])
        np.testing.assert_allclose(
            got["detection_boxes"][i], expected["detection_boxes"], atol=1e-4
        )
        np.testing.assert_allclose(
            got["detection_boxes_normalized"][i], expected["detection_boxes_normalized"], atol=1e-6
        )
        np.testing.assert_allclose(
            got["detection_scores"][i], expected["detection_scores"], atol=1e-5
        )
    # The JPEG decodes to its own size; boxes stay inside that image.
    height, width = SIZES[0]
    assert got["detection_boxes"][4][:, 2].max() <= height
    assert got["detection_boxes"][4][:, 3].max() <= width
    empty = encoded_fn(encoded_images=tf.zeros([0], tf.string))
    assert empty["detection_boxes"].shape == (0, 100, 4)


def test_zero_detections_are_padded(tmp_path):
    keras.utils.set_random_seed(1)
    model = FasterRCNN(num_classes=3, detection_score_threshold=0.999, max_detections=20)
    path = saved_model(model, tmp_path / "empty")
    serve = tf.saved_model.load(path).signatures["serving_default"]
    images = np.stack([_image(64, 80, 0), _image(64, 80, 1)])
    expected = model.predict(images, verbose=0)
    got = {k: v.numpy() for k, v in serve(images=tf.constant(images)).items()}
    np.testing.assert_array_equal(expected["num_detections"], [0, 0])
    np.testing.assert_array_equal(got["num_detections"], [0, 0])
    assert got["detection_boxes"].shape == (2, 20, 4)
    np.testing.assert_array_equal(got["detection_boxes"], 0.0)
    np.testing.assert_array_equal(got["detection_boxes_normalized"], 0.0)
    np.testing.assert_array_equal(got["detection_scores"], 0.0)
    np.testing.assert_array_equal(got["detection_classes"], -1)
    # The default class names when the model has none.
    assert [n.decode() for n in tf.saved_model.load(path).class_names.numpy()] == [
        "class_0",
        "class_1",
        "class_2",
    ]


def test_loads_and_runs_where_tfrcnn_and_keras_cannot_be_imported(exported, tmp_path):
    script = textwrap.dedent(f"""
        import json, sys
        sys.modules["tfrcnn"] = None   # any `import tfrcnn...` now raises ImportError
        sys.modules["keras"] = None
        for name in ("tfrcnn", "tfrcnn.models", "keras"):
            try:
                __import__(name)
            except ImportError:
                pass
            else:
                raise SystemExit(name + " is importable")
        import numpy as np
        import tensorflow as tf
        loaded = tf.saved_model.load({exported!r})
        out = loaded.signatures["serving_default"](images=tf.zeros([1, 64, 80, 3], tf.uint8))
        png = tf.io.encode_png(tf.zeros([50, 70, 3], tf.uint8))
        enc = loaded.signatures["serve_encoded"](encoded_images=tf.stack([png]))
        print(json.dumps({{
            "boxes": list(out["detection_boxes"].shape),
            "num": int(out["num_detections"][0]),
            "encoded": list(enc["detection_scores"].shape),
            "names": [n.decode() for n in loaded.class_names.numpy()],
            "tfrcnn_loaded": any(m.startswith("tfrcnn") and sys.modules[m] is not None
                                 for m in sys.modules),
        }}))
    """)
    # the first call of each signature compiles its XLA functions: minutes on a loaded 2-core machine
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {
        "boxes": [1, 100, 4],
        "num": 100,
        "encoded": [1, 100],
        "names": list(CLASS_NAMES),
        "tfrcnn_loaded": False,
    }


def _saved_model_cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", *args],
        cwd=cwd,
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_saved_model_cli_show_and_run(exported, tmp_path):
    shown = _saved_model_cli("show", "--all", "--dir", exported, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr[-3000:]
    for text in (
        "signature_def['serving_default']",
        "signature_def['serve_encoded']",
        "signature_def['metadata']",
        "images",
        "encoded_images",
        *OUTPUTS,
    ):
        assert text in shown.stdout, text
    # TF 2.21's saved_model_cli evaluates --input_exprs with ast.literal_eval only (no numpy
    # calls), so the same zeros image goes in as a .npy file through --inputs.
    npy = str(tmp_path / "images.npy")
    np.save(npy, np.zeros((1, 64, 80, 3), dtype=np.uint8))
    ran = _saved_model_cli(
        "run",
        "--dir",
        exported,
        "--tag_set",
        "serve",
        "--signature_def",
        "serving_default",
        "--inputs",
        f"images={npy}",
        cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "detection_boxes" in ran.stdout and "num_detections" in ran.stdout


def test_interrupted_export_keeps_the_previous_model(model, tmp_path, monkeypatch):
    path = str(tmp_path / "model")
    small = FasterRCNN(num_classes=3, max_detections=7)
    saved_model(small, path)
    before = sorted(os.listdir(path))

    def broken_save(obj, export_dir, signatures=None, options=None):
        os.makedirs(os.path.join(export_dir, "variables"))
        with open(os.path.join(export_dir, "saved_model.pb"), "wb") as f:
            f.write(b"half a protobuf")
        raise KeyboardInterrupt("simulated interruption")

    monkeypatch.setattr(tf.saved_model, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        saved_model(model, path)
    # Absent target stays absent.
    with pytest.raises(KeyboardInterrupt):
        saved_model(model, tmp_path / "new")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["model"]  # no temp folder, no half-written "new"
    assert sorted(os.listdir(path)) == before
    meta = tf.saved_model.load(path).signatures["metadata"]()
    assert int(meta["max_detections"]) == 7  # still the previous, complete model


def test_overwrite_false_and_replace(tmp_path):
    path = tmp_path / "m"
    path.mkdir()
    (path / "old.txt").write_text("old")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        with atomic.atomic_directory(path, overwrite=False):
            pass
    with atomic.atomic_directory(path) as tmp:
        with open(os.path.join(tmp, "new.txt"), "w") as f:
            f.write("new")
    assert sorted(os.listdir(path)) == ["new.txt"]
    assert sorted(os.listdir(tmp_path)) == ["m"]
    file_path = tmp_path / "x.bin"
    atomic.write_bytes_atomic(file_path, b"one")
    with pytest.raises(FileExistsError):
        atomic.write_bytes_atomic(file_path, b"two", overwrite=False)
    with pytest.raises(RuntimeError):
        with atomic.atomic_file(file_path) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"tw")
            raise RuntimeError("interrupted")
    assert file_path.read_bytes() == b"one"
    assert sorted(os.listdir(tmp_path)) == ["m", "x.bin"]
