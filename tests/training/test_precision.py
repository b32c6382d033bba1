"""Mixed precision: the policy choice, the scope, and a whole run under mixed_bfloat16."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrcnn.cli import main
from tfrcnn.models import FasterRCNN
from tfrcnn.training import precision
from tfrcnn.training.precision import precision_scope, resolve_precision

SMALL = {
    "num_train": 8,
    "num_val": 4,
    "epochs": 1,
    "steps_per_epoch": 3,
    "batch_size": 2,
    "eval_every": 1,
    "warmup_steps": 1,
}


def test_resolve_explicit_names_and_errors():
    for name in ("float32", "mixed_bfloat16", "mixed_float16"):
        assert resolve_precision(name) == name
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("bfloat16")


@pytest.mark.parametrize(
    "gpus, bf16, expected",
    [
        (["gpu"], True, "mixed_float16"),
        ([], True, "mixed_bfloat16"),
        ([], False, "float32"),
    ],
)
def test_auto_follows_the_hardware(monkeypatch, gpus, bf16, expected):
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: gpus)
    monkeypatch.setattr(precision, "cpu_has_bfloat16", lambda: bf16)
    assert resolve_precision("auto") == expected


def test_cpu_flag_reading(tmp_path, monkeypatch):
    real_open = open

    def fake(flags):
        path = tmp_path / "cpuinfo"
        path.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        return lambda name, *a, **k: real_open(path if name == "/proc/cpuinfo" else name, *a, **k)

    monkeypatch.setattr("builtins.open", fake("fpu avx2 avx512f amx_bf16 amx_tile"))
    assert precision.cpu_has_bfloat16()
    monkeypatch.setattr("builtins.open", fake("fpu avx2 avx512f"))
    assert not precision.cpu_has_bfloat16()


def test_scope_builds_under_the_policy_and_restores():
    before = keras.mixed_precision.global_policy().name
    with precision_scope("mixed_bfloat16") as name:
        assert name == "mixed_bfloat16"
        model = FasterRCNN.from_preset("tiny", num_classes=3)
    assert keras.mixed_precision.global_policy().name == before
    assert model.rpn_head.compute_dtype == "bfloat16"
    assert model.rcnn_head.compute_dtype == "bfloat16"
    assert model.roi_layer.compute_dtype == "float32"  # coordinates stay float32
    with pytest.raises(RuntimeError):
        with precision_scope("float32"):
            raise RuntimeError("inside")
    assert keras.mixed_precision.global_policy().name == before


def test_mixed_float16_compiles_with_loss_scaling():
    with precision_scope("mixed_float16"):
        model = FasterRCNN.from_preset("tiny", num_classes=3)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


def test_bfloat16_outputs_close_to_float32():
    """The same weights under both policies: detections in float32, scores close."""
    keras.utils.set_random_seed(0)
    model32 = FasterRCNN.from_preset("tiny", num_classes=3, detection_score_threshold=0.0)
    with precision_scope("mixed_bfloat16"):
        model16 = FasterRCNN.from_preset("tiny", num_classes=3, detection_score_threshold=0.0)
    model16.set_weights(model32.get_weights())
    images = np.random.default_rng(0).uniform(0, 255, (2, 160, 160, 3)).astype(np.float32)
    out32 = model32(images, training=False)
    out16 = model16(images, training=False)
    for key in ("detection_boxes", "detection_scores"):
        assert out16[key].dtype == tf.float32
    # the best score of each image agrees to bfloat16's precision (3 significant digits)
    np.testing.assert_allclose(
        out16["detection_scores"][:, 0], out32["detection_scores"][:, 0], atol=2e-2
    )


def test_training_run_under_mixed_bfloat16(tmp_path):
    run = str(tmp_path / "run")
    overrides = ",".join(f"--set={k}={v}" for k, v in SMALL.items()).split(",")
    assert (
        main(
            ["train", "--precision", "mixed_bfloat16", "--run-dir", run, "--verbose", "0"]
            + overrides
        )
        == 0
    )
    config = json.load(open(os.path.join(run, "config.json")))
    assert config["run"]["precision"] == "mixed_bfloat16"
    history = json.load(open(os.path.join(run, "history.json")))
    assert all(np.isfinite(history["loss"]))
    model = keras.models.load_model(os.path.join(run, "model.keras"))
    assert model.rpn_head.compute_dtype == "bfloat16"
    assert model.rpn_head.variable_dtype == "float32"
    metrics = json.load(open(os.path.join(run, "metrics.json")))
    assert np.isfinite(metrics["mAP"])


def test_auto_is_recorded_resolved(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bfloat16", lambda: False)
    run = str(tmp_path / "run")
    overrides = [f"--set={k}={v}" for k, v in SMALL.items()]
    assert (
        main(["train", "--precision", "auto", "--run-dir", run, "--verbose", "0"] + overrides) == 0
    )
    assert json.load(open(os.path.join(run, "config.json")))["run"]["precision"] == "float32"


def test_dtype_argument_and_keras_round_trip(tmp_path):
    model = FasterRCNN.from_preset("tiny", num_classes=3, dtype="mixed_bfloat16")
    assert keras.mixed_precision.global_policy().name == "float32"
    assert model.backbone_model.layers[-1].compute_dtype == "bfloat16"
    assert model.rcnn_head.compute_dtype == "bfloat16"
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.dtype_policy.name == "mixed_bfloat16"
    assert loaded.rcnn_head.compute_dtype == "bfloat16"
    images = np.random.default_rng(1).uniform(0, 255, (1, 160, 160, 3)).astype(np.float32)
    a, b = model(images, training=False), loaded(images, training=False)
    np.testing.assert_array_equal(a["detection_boxes"], b["detection_boxes"])


def test_mobilenet_depthwise_layers_stay_float32_under_mixed_bfloat16():
    from tfrcnn.backbones import build_backbone

    with precision_scope("mixed_bfloat16"):
        backbone, _ = build_backbone("mobilenet_v3_fpn")
    layers = [l for l in backbone.get_layer("mobilenet_v3_large").layers if l.weights]
    depthwise = [l for l in layers if isinstance(l, keras.layers.DepthwiseConv2D)]
    others = [
        l
        for l in layers
        if isinstance(l, keras.layers.Conv2D) and not isinstance(l, keras.layers.DepthwiseConv2D)
    ]
    assert depthwise and all(l.compute_dtype == "float32" for l in depthwise)
    assert others and all(l.compute_dtype == "bfloat16" for l in others)
    out = backbone(np.zeros((1, 64, 64, 3), np.float32))
    assert all(np.isfinite(np.asarray(tf.cast(o, tf.float32))).all() for o in out)
    # float32 and mixed_float16 builds are untouched
    with precision_scope("mixed_float16"):
        backbone16, _ = build_backbone("mobilenet_v3_fpn")
    assert all(
        l.compute_dtype == "float16"
        for l in backbone16.get_layer("mobilenet_v3_large").layers
        if isinstance(l, keras.layers.DepthwiseConv2D)
    )
