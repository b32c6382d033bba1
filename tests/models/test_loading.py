"""tfrcnn.models.load_model: .keras files load with safe_mode on; anything else is one clear line."""

import json
import zipfile

import keras
import numpy as np
import pytest

from tfrcnn.models import FasterRCNN, ModelFileError, load_model


def _class_names(config):
    if isinstance(config, dict):
        if "class_name" in config:
            yield config["class_name"]
        for value in config.values():
            yield from _class_names(value)
    elif isinstance(config, list):
        for value in config:
            yield from _class_names(value)


def test_a_saved_model_loads_with_safe_mode_and_holds_no_code(tmp_path):
    model = FasterRCNN(
        num_classes=2,
        image_min_side=64,
        image_max_side=96,
        detection_score_threshold=0.0,
        max_detections=10,
    )
    path = str(tmp_path / "model.keras")
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    names = set(_class_names(config))
    assert "Lambda" not in names and "__lambda__" not in json.dumps(config)
    loaded = load_model(path)
    also = keras.models.load_model(path, safe_mode=True)
    images = np.random.default_rng(0).uniform(0, 255, (1, 64, 80, 3)).astype(np.float32)
    ref = model.predict(images, verbose=0)
    for other in (loaded, also):
        out = other.predict(images, verbose=0)
        for key in ref:
            np.testing.assert_array_equal(out[key], ref[key])


def test_files_that_are_not_a_tfrcnn_model_give_one_line(tmp_path):
    text = tmp_path / "notes.keras"
    text.write_text("hello")
    empty_zip = tmp_path / "empty.keras"
    with zipfile.ZipFile(empty_zip, "w") as archive:
        archive.writestr("readme.txt", "no model here")
    other = tmp_path / "dense.keras"
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save(str(other))
    cases = [
        (tmp_path / "missing.keras", "model file not found: "),
        (text, "is not a .keras model file (not a zip archive)"),
        (empty_zip, "is a zip archive but not a .keras model file (no config.json)"),
        (other, "holds a Keras model of class 'Sequential', not a tfrcnn FasterRCNN"),
    ]
    for path, message in cases:
        with pytest.raises(ModelFileError) as info:
            load_model(str(path))
        assert message in str(info.value) and str(path) in str(info.value)
        assert "\n" not in str(info.value)
