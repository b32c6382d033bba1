"""InputChecks / tfrcnn.ops.checks: a table of bad model inputs, each through fit and predict (a
user's tf.data pipeline of whole batches) and the SavedModel: a clear error naming the input, element and value (or, where
a route never reads that input, the clean result), never a silent drop or a wrong answer."""

import numpy as np
import pytest
import tensorflow as tf

from tfrcnn.export import saved_model
from tfrcnn.layers import InputChecks
from tfrcnn.models import FasterRCNN
from tfrcnn.ops import checks

MODEL_ERRORS = (TypeError, ValueError, tf.errors.InvalidArgumentError)
GT_KEYS = ("gt_boxes", "gt_classes")


def clean_batch():
    rng = np.random.default_rng(0)
    return {
        "images": rng.uniform(0, 255, (2, 64, 64, 3)).astype(np.float32),
        "image_shape": np.array([[64, 64], [64, 64]], np.int32),
        "image_scale": np.array([1.0, 1.0], np.float32),
        "gt_boxes": np.array(
            [
                [[4, 4, 30, 40], [10, 12, 50, 60], [-1, -1, -1, -1]],
                [[8, 8, 40, 40], [-1, -1, -1, -1], [-1, -1, -1, -1]],
            ],
            np.float32,
        ),
        "gt_classes": np.array([[0, 2, -1], [1, -1, -1]], np.int32),
    }


def _set(key, index, value, dtype=None):
    def change(batch):
        array = batch[key].astype(dtype) if dtype is not None else batch[key].copy()
        if index is not None:
            array[index] = value
        batch[key] = array

    return change


def _replace(key, make):
    def change(batch):
        batch[key] = make(batch[key])

    return change


SERVE_DTYPE = "expected to be a uint8 tensor"


def _layout(shape):
    return rf"images must be \[B, H, W, 3\] RGB pixels, got shape \[{shape}\]"


# (id, change, message of fit and predict, message of the SavedModel's serving_default).
# Ground-truth rows: predict never reads ground truth (its result must equal the clean one) and the
# SavedModel has no such input (an unexpected keyword argument naming it).
CASES = [
    (
        "class_id_equal_to_num_classes",
        _set("gt_classes", (1, 0), 3),
        r"gt_classes\[1, 0\] = 3 is not a class id: expected 0\.\.2, or -1 for padding",
        None,
    ),
    (
        "class_id_far_out_of_range",
        _set("gt_classes", (0, 1), 1000),
        r"gt_classes\[0, 1\] = 1000 is not a class id: expected 0\.\.2, or -1 for padding",
        None,
    ),
    (
        "class_id_minus_two",
        _set("gt_classes", (0, 2), -2),
        r"gt_classes\[0, 2\] = -2 is not a class id: expected 0\.\.2, or -1 for padding",
        None,
    ),
    (
        "class_id_int_min",
        _set("gt_classes", (1, 2), np.iinfo(np.int32).min),
        r"gt_classes\[1, 2\] = -2147483648 is not a class id",
        None,
    ),
    (
        "class_id_int64_out_of_range",
        _set("gt_classes", (1, 1), 7, np.int64),
        r"gt_classes\[1, 1\] = 7 is not a class id",
        None,
    ),
    (
        "class_ids_float_fraction",
        _set("gt_classes", (0, 0), 1.7, np.float32),
        r"gt_classes must hold integer values .*got dtype float32",
        None,
    ),
    (
        "class_ids_float_whole",
        _set("gt_classes", None, None, np.float64),
        r"gt_classes must hold integer values .*got dtype float(64|32)",
        None,
    ),
    (
        "class_ids_bool",
        _set("gt_classes", None, None, bool),
        r"gt_classes must hold integer values .*got dtype bool",
        None,
    ),
    (
        "class_ids_rank_3",
        _replace("gt_classes", lambda c: c[..., None]),
        r"gt_classes must have 2 axes .*got shape \((2|None), 3, 1\)",
        None,
    ),
    (
        "box_nan",
        _set("gt_boxes", (1, 0, 2), np.nan),
        r"gt_boxes\[1, 0\] = \[8, 8, nan, 40\] is not a box: expected finite \[y1, x1, y2, x2\]",
        None,
    ),
    (
        "box_inf",
        _set("gt_boxes", (0, 1, 3), np.inf),
        r"gt_boxes\[0, 1\] = \[10, 12, 50, inf\] is not a box",
        None,
    ),
    (
        "box_y_inverted",
        _set("gt_boxes", (0, 0), [30, 4, 4, 40]),
        r"gt_boxes\[0, 0\] = \[30, 4, 4, 40\] is not a box: .*y1 <= y2 and x1 <= x2",
        None,
    ),
    (
        "box_x_inverted",
        _set("gt_boxes", (1, 0), [8, 40, 40, 8]),
        r"gt_boxes\[1, 0\] = \[8, 40, 40, 8\] is not a box",
        None,
    ),
    (
        "boxes_rank_2",
        _replace("gt_boxes", lambda b: b.reshape(2, 12)),
        r"gt_boxes must have 3 axes .*got shape \((2|None), 12\)",
        None,
    ),
    (
        "boxes_five_coordinates",
        _replace("gt_boxes", lambda b: np.concatenate([b, b[..., :1]], -1)),
        r"gt_boxes must have 4 entries on its last axis .*got shape \((2|None), 3, 5\)",
        None,
    ),
    (
        "boxes_and_classes_differ_in_slots",
        _replace("gt_classes", lambda c: c[:, :2]),
        r"gt_boxes \((2|None), 3, 4\) and gt_classes \((2|None), 2\) must have the same \[B, M\]",
        None,
    ),
    (
        "boxes_as_strings",
        _replace("gt_boxes", lambda b: b.astype(str)),
        r"gt_boxes must hold floating or integer values .*got dtype string",
        None,
    ),
    (
        "image_all_nan",
        _set("images", 0, np.nan),
        (
            r"images\[0\] holds a non-finite pixel \(nan at y=0, x=0, channel 0; 12288 in this batch\): "
            r"pixel values must be finite"
        ),
        SERVE_DTYPE,
    ),
    (
        "image_one_inf_pixel",
        _set("images", (1, 5, 7, 2), np.inf),
        r"images\[1\] holds a non-finite pixel \(inf at y=5, x=7, channel 2; 1 in this batch\)",
        SERVE_DTYPE,
    ),
    (
        "image_minus_inf",
        _set("images", (0, 63, 63, 0), -np.inf),
        r"images\[0\] holds a non-finite pixel \(-inf at y=63, x=63, channel 0; 1 in this batch\)",
        SERVE_DTYPE,
    ),
    (
        "image_without_batch_axis",
        _replace("images", lambda x: x[0]),
        r"images must have 4 axes .*got shape \((64|None), 64, 3\)",
        _layout("64, 64, 3"),
    ),
    (
        "image_one_channel",
        _replace("images", lambda x: x[..., :1]),
        r"images must have 3 entries on its last axis .*got shape \((2|None), 64, 64, 1\)",
        _layout("2, 64, 64, 1"),
    ),
    (
        "image_rgba",
        _replace("images", lambda x: np.concatenate([x, x[..., :1]], -1)),
        r"images must have 3 entries on its last axis .*got shape \((2|None), 64, 64, 4\)",
        _layout("2, 64, 64, 4"),
    ),
    (
        "image_bool",
        _replace("images", lambda x: x > 100),
        r"images must hold integer or floating values .*got dtype bool",
        SERVE_DTYPE,
    ),
    (
        "image_shape_float",
        _set("image_shape", None, None, np.float32),
        r"image_shape must hold integer values .*got dtype float32",
        None,
    ),
    (
        "image_shape_beyond_the_image",
        _set("image_shape", (1, 0), 65),
        (
            r"image_shape\[1\] = \[65, 64\] is not a valid region of the 64, 64 images: expected "
            r"1\.\.64, 1\.\.64"
        ),
        None,
    ),
    (
        "image_shape_zero",
        _set("image_shape", 0, 0),
        r"image_shape\[0\] = \[0, 0\] is not a valid region",
        None,
    ),
    (
        "image_scale_nan",
        _set("image_scale", 0, np.nan),
        r"image_scale\[0\] = nan is not a scale: expected a finite number > 0",
        None,
    ),
    (
        "image_scale_zero",
        _set("image_scale", 1, 0.0),
        r"image_scale\[1\] = 0 is not a scale: expected a finite number > 0",
        None,
    ),
]
assert len(CASES) >= 20


def bad_batch(change):
    batch = clean_batch()
    change(batch)
    return batch


@pytest.fixture(scope="module")
def model():
    model = FasterRCNN(
        num_classes=3,
        image_min_side=64,
        image_max_side=96,
        detection_score_threshold=0.0,
        max_detections=20,
    )
    model.compile(optimizer="adam")
    return model


@pytest.fixture(scope="module")
def clean_prediction(model):
    batch = clean_batch()
    return model.predict({k: v for k, v in batch.items() if k not in GT_KEYS}, verbose=0)


@pytest.fixture(scope="module")
def serving(model, tmp_path_factory):
    path = saved_model(model, str(tmp_path_factory.mktemp("checks") / "tiny"))
    return tf.saved_model.load(path).signatures["serving_default"]


def _weights(model):
    return [w.numpy().copy() for w in model.trainable_weights]


def test_the_clean_batch_trains_and_padding_slots_are_not_looked_at(model):
    batch = clean_batch()
    batch["gt_boxes"][1, 2] = [np.nan, 5, -3, np.inf]  # class -1: a padding slot, whatever it holds
    before = _weights(model)
    history = model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert any(not np.array_equal(a, b.numpy()) for a, b in zip(before, model.trainable_weights))


@pytest.mark.parametrize("name, change, message, serve_message", CASES, ids=[c[0] for c in CASES])
def test_fit_refuses(model, name, change, message, serve_message):
    batch = bad_batch(change)
    before = _weights(model)
    with pytest.raises(MODEL_ERRORS, match=message):
        model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)
    for a, b in zip(before, model.trainable_weights):  # no step was taken on the bad batch
        np.testing.assert_array_equal(a, b.numpy())


@pytest.mark.parametrize("name, change, message, serve_message", CASES, ids=[c[0] for c in CASES])
def test_predict_refuses_or_ignores_ground_truth(
    model, clean_prediction, name, change, message, serve_message
):
    batch = bad_batch(change)
    if name.startswith(("class", "box")):
        # predict reads no ground truth: the result is the clean one, whatever gt holds
        out = model.predict(tf.data.Dataset.from_tensors(batch), verbose=0)
        for key, value in clean_prediction.items():
            np.testing.assert_array_equal(out[key], value)
        return
    with pytest.raises(MODEL_ERRORS, match=message):
        model.predict(tf.data.Dataset.from_tensors(batch), verbose=0)


@pytest.mark.parametrize("name, change, message, serve_message", CASES, ids=[c[0] for c in CASES])
def test_saved_model_refuses(serving, name, change, message, serve_message):
    batch = bad_batch(change)
    if serve_message is None:
        # the served signature takes images only: any other input is refused by name
        key = (
            "gt_classes"
            if name.startswith("class")
            else (
                "gt_boxes"
                if name.startswith("box")
                else name.split("_")[0] + "_" + name.split("_")[1]
            )
        )
        with pytest.raises(TypeError, match=f"unexpected keyword argument '{key}'"):
            serving(images=tf.zeros([1, 64, 64, 3], tf.uint8), **{key: tf.constant(batch[key])})
        return
    images = batch["images"]
    if serve_message != SERVE_DTYPE:  # a layout row: the served model's own pixel type
        images = np.clip(np.nan_to_num(images), 0, 255).astype(np.uint8)
    with pytest.raises(
        (TypeError, ValueError, tf.errors.InvalidArgumentError), match=serve_message
    ):
        serving(images=tf.constant(images))


def test_train_on_batch_and_eager_calls_give_the_same_message(model):
    batch = bad_batch(_set("gt_classes", (1, 0), 3))
    message = r"gt_classes\[1, 0\] = 3 is not a class id: expected 0\.\.2, or -1 for padding"
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        model.train_on_batch(batch)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        model(batch, training=True)


def test_a_plain_nan_image_tensor_is_refused_by_predict(model):
    images = np.zeros((1, 40, 50, 3), np.float32)
    images[0, 3, 4, 1] = np.nan
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"images\[0\] holds a non-finite pixel \(nan at y=3, x=4, channel 1",
    ):
        model.predict(images, verbose=0)


def test_checks_can_be_switched_off_and_the_setting_round_trips():
    model = FasterRCNN(num_classes=3, image_min_side=64, image_max_side=96, input_checks=False)
    assert model.get_config()["input_checks"] is False
    assert FasterRCNN.from_config(model.get_config()).input_checker.enabled is False
    batch = bad_batch(_set("gt_boxes", (0, 0), [30, 4, 4, 40]))  # inverted box, value check off
    out = model(batch, training=True)
    assert "rcnn_labels" in out
    with pytest.raises(TypeError, match="gt_classes must hold integer values"):  # dtypes: always
        model(bad_batch(_set("gt_classes", None, None, np.float32)), training=True)


def test_the_layer_returns_its_inputs_unchanged_and_round_trips():
    layer = InputChecks(3)
    batch = clean_batch()
    out = layer({k: tf.constant(v) for k, v in batch.items()})
    for key, value in batch.items():
        np.testing.assert_array_equal(out[key].numpy(), value)
    assert InputChecks.from_config(layer.get_config()).get_config() == layer.get_config()


def test_ops_work_inside_tf_function_with_unknown_shapes():
    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, 4], tf.float32),
            tf.TensorSpec([None, None], tf.int32),
        ]
    )
    def run(boxes, classes):
        return checks.check_ground_truth(boxes, classes, num_classes=2)

    _, classes = run(tf.constant([[[0.0, 0, 1, 1]]]), tf.constant([[1]]))
    assert classes.numpy().tolist() == [[1]]
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"gt_classes\[0, 0\] = 2 is not a class id: expected 0\.\.1",
    ):
        run(tf.constant([[[0.0, 0, 1, 1]]]), tf.constant([[2]]))
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"gt_boxes \(1, 1, 4\) and gt_classes \(1, 2\) must have the same",
    ):
        run(tf.constant([[[0.0, 0, 1, 1]]]), tf.constant([[0, 1]]))


def test_a_batch_refused_while_the_first_step_is_traced_leaves_the_model_trainable():
    """The first fit of a new model gets a batch refused at trace time (float image_shape): the
    next fit with bad values is refused with its own message, then good data trains."""
    model = FasterRCNN(num_classes=3, image_min_side=64, image_max_side=96, max_detections=20)
    model.compile(optimizer="adam")
    before = _weights(model)
    with pytest.raises(MODEL_ERRORS, match="image_shape must hold integer values"):
        model.fit(
            tf.data.Dataset.from_tensors(bad_batch(_set("image_shape", None, None, np.float32))),
            verbose=0,
        )
    with pytest.raises(MODEL_ERRORS, match=r"image_shape\[0\] = \[0, 0\] is not a valid region"):
        model.fit(tf.data.Dataset.from_tensors(bad_batch(_set("image_shape", 0, 0))), verbose=0)
    for a, b in zip(before, model.trainable_weights):
        np.testing.assert_array_equal(a, b.numpy())
    history = model.fit(tf.data.Dataset.from_tensors(clean_batch()), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert any(not np.array_equal(a, b.numpy()) for a, b in zip(before, model.trainable_weights))
