"""from_pretrained (class outputs fresh, every other weight identical, training runs) and the
import-weights command (a user checkpoint with its class names and settings; one-line errors)."""

import os
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrcnn.models import FasterRCNN


def _batch(height=96, width=128):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (1, height, width, 3)).astype("float32")
    boxes = np.array([[[10, 12, 50, 60], [30, 40, 90, 120]]], "float32")
    return {
        "images": images,
        "image_shape": np.array([[height, width]], "int32"),
        "gt_boxes": boxes,
        "gt_classes": np.array([[0, 1]], "int32"),
    }


def test_from_pretrained_keeps_all_but_class_outputs(tmp_path):
    source = FasterRCNN.from_preset("tiny", num_classes=3, class_names=["a", "b", "c"])
    source.compile(optimizer=keras.optimizers.SGD(1e-3))
    source.fit(tf.data.Dataset.from_tensors(_batch()), epochs=1, verbose=0)  # non-initial weights
    source.save(tmp_path / "source.keras")
    model = FasterRCNN.from_pretrained(
        str(tmp_path / "source.keras"), num_classes=5, class_names=list("vwxyz")
    )
    assert model.num_classes == 5 and model.class_names == tuple("vwxyz")
    assert model.rcnn_head.classifier.kernel.shape[-1] == 6
    assert model.rcnn_head.regressor.kernel.shape[-1] == 20
    fresh = {
        id(w)
        for layer in (model.rcnn_head.classifier, model.rcnn_head.regressor)
        for w in layer.weights
    }
    compared = 0
    for new, old in zip(model.weights, source.weights):
        if id(new) in fresh:
            continue
        np.testing.assert_array_equal(new.numpy(), old.numpy(), err_msg=new.path)
        compared += 1
    assert compared == len(model.weights) - 4
    # one training step runs with the new classes (ids up to 4)
    data = _batch()
    data["gt_classes"] = np.array([[4, 2]], "int32")
    model.compile(optimizer=keras.optimizers.SGD(1e-3))
    history = model.fit(tf.data.Dataset.from_tensors(data), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    with pytest.raises(ValueError, match="no such model file"):
        FasterRCNN.from_pretrained(str(tmp_path / "missing.keras"), num_classes=2)


def _run(argv):
    """The exit status and standard error of ``tfrcnn import-weights ...`` through the command.

    A download's progress display (lines redrawn with a carriage return) is left out, so what is
    returned is what the command said.
    """
    import contextlib
    import io
    import re

    from tfrcnn.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = main(argv)
    said = re.sub(r"\r[^\r\n]*\n?", "", err.getvalue())
    return status, said.rstrip("\n")


@pytest.fixture(scope="module")
def user_checkpoint(tmp_path_factory):
    """A torchvision fasterrcnn_resnet50_fpn with 3 rows (background + 2 classes), saved by torch."""
    code = (
        "import sys, torch\n"
        "from torchvision.models import detection\n"
        "torch.manual_seed(0)\n"
        "m = detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3)\n"
        "torch.save({'model': m.state_dict()}, sys.argv[1])\n"
    )
    pth = tmp_path_factory.mktemp("user") / "user.pth"
    subprocess.run([sys.executable, "-c", code, str(pth)], check=True)
    return pth


@pytest.mark.slow
def test_import_weights_user_checkpoint(tmp_path, user_checkpoint):
    pth = user_checkpoint
    out = tmp_path / "pets.keras"
    base = ["import-weights", "torchvision", str(pth), "--preset", "torchvision_resnet50_fpn"]
    # the class-name count must match: one line, exit 2, nothing written
    status, message = _run(base + ["--class-names", "cat,dog,cow", "--output", str(out)])
    assert status == 2 and "3 class names given, but the checkpoint has 2 classes" in message
    assert not out.exists() and "\n" not in message
    status, _ = _run(
        base
        + [
            "--class-names",
            "cat,dog",
            "--set",
            "image_min_side=480",
            "--set",
            "image_max_side=640",
            "--output",
            str(out),
        ]
    )
    assert status == 0
    model = keras.saving.load_model(out)
    assert model.class_names == ("cat", "dog") and model.num_classes == 2
    assert (model.image_min_side, model.image_max_side) == (480, 640)
    assert model.preset == "torchvision_resnet50_fpn"
    from tfrcnn.weights.pth import load_state_dict

    state = load_state_dict(pth)
    np.testing.assert_array_equal(
        model.backbone_model.get_layer("conv1").kernel.numpy(),
        state["backbone.body.conv1.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        model.rcnn_head.classifier.bias.numpy(), state["roi_heads.box_predictor.cls_score.bias"]
    )
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []  # no temporary left


def test_import_weights_refuses_code_and_bad_input(tmp_path):
    import pickle
    import zipfile

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    evil = tmp_path / "evil.pth"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"w": Exploit()}, protocol=2))
    out = tmp_path / "x.keras"
    status, message = _run(
        [
            "import-weights",
            "torchvision",
            str(evil),
            "--preset",
            "torchvision_resnet50_fpn",
            "--output",
            str(out),
        ]
    )
    assert status == 2 and "refused without running it" in message and "\n" not in message
    assert not (tmp_path / "pwned").exists() and not out.exists()
    status, message = _run(
        [
            "import-weights",
            "torchvision",
            str(tmp_path / "none.pth"),
            "--preset",
            "torchvision_resnet50_fpn",
            "--output",
            str(out),
        ]
    )
    assert status == 2 and "no such checkpoint file" in message
    status, message = _run(["import-weights", "torchvision", str(evil), "--output", str(out)])
    assert status == 2 and "preset=" in message
    status, message = _run(
        [
            "import-weights",
            "torchvision",
            str(evil),
            "--preset",
            "torchvision_resnet50_fpn",
            "--output",
            str(tmp_path / "x.h5"),
        ]
    )
    assert status == 2 and "must end with .keras" in message
    assert sorted(os.listdir(tmp_path)) == ["evil.pth"]


@pytest.mark.slow
def test_published_name_downloads_converts_and_fine_tunes(tmp_path, user_checkpoint, monkeypatch):
    """A published name through a server on 127.0.0.1: downloaded into the Keras cache (hash in
    the file name checked), converted by import-weights, then used by from_pretrained."""
    import hashlib
    import shutil

    from tfrcnn.weights import registry

    from .test_download import serve

    data = user_checkpoint.read_bytes()
    file_name = f"fasterrcnn_resnet50_fpn_coco-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(user_checkpoint, served / file_name)
    monkeypatch.setitem(
        registry.TORCHVISION,
        "fasterrcnn_resnet50_fpn_coco",
        registry.Published(
            registry.TORCHVISION_BASE + file_name, "torchvision_resnet50_fpn", "detector", 37.0
        ),
    )
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    with serve(served) as (base, requests):
        monkeypatch.setenv("TFRCNN_WEIGHTS_BASE_URL", base)
        out = tmp_path / "coco.keras"
        status, message = _run(
            ["import-weights", "torchvision", "fasterrcnn_resnet50_fpn_coco", "--output", str(out)]
        )
        assert status == 0, message
        assert requests == ["/" + file_name]
        assert (tmp_path / "keras" / "models" / file_name).is_file()
        model = FasterRCNN.from_pretrained(
            "torchvision:fasterrcnn_resnet50_fpn_coco", num_classes=4
        )
        assert requests == ["/" + file_name]  # the cached file is used
    assert keras.saving.load_model(out).num_classes == 2 and model.num_classes == 4
    _check_converted_model_cache(tmp_path / "keras" / "models", requests)
    # a file that does not match the hash in its name is refused and not kept
    (served / file_name).write_bytes(data[:-10] + b"0123456789")
    os.remove(tmp_path / "keras" / "models" / file_name)
    with serve(served) as (base, _):
        monkeypatch.setenv("TFRCNN_WEIGHTS_BASE_URL", base)
        status, message = _run(
            [
                "import-weights",
                "torchvision",
                "fasterrcnn_resnet50_fpn_coco",
                "--output",
                str(tmp_path / "bad.keras"),
            ]
        )
    assert status == 2 and "nothing was kept" in message and "\n" not in message
    left = os.listdir(tmp_path / "keras" / "models")  # the two converted models, no checkpoint
    assert len(left) == 2 and all(".tfrcnn-" in name for name in left), left
    assert not (tmp_path / "bad.keras").exists()


def _check_converted_model_cache(folder, requests):
    """The published name's converted model is cached beside its checkpoint, one file per set of
    arguments; later calls load it unchanged, an unreadable one is converted again."""
    import tfrcnn

    from_torchvision = tfrcnn.weights.from_torchvision  # as the README calls it

    def cached():
        return sorted(folder.glob("fasterrcnn_resnet50_fpn_coco-*.tfrcnn-*.keras"))

    assert len(cached()) == 1  # written by import-weights, used by from_pretrained
    (path,) = cached()
    written = path.stat().st_mtime_ns
    fresh = from_torchvision("fasterrcnn_resnet50_fpn_coco", cache=False)
    loaded = from_torchvision("fasterrcnn_resnet50_fpn_coco")
    assert path.stat().st_mtime_ns == written and cached() == [path]

    def assert_same(a, b):
        assert a.get_config() == b.get_config()
        assert len(a.weights) == len(b.weights)
        for x, y in zip(a.weights, b.weights):
            np.testing.assert_array_equal(x.numpy(), y.numpy(), err_msg=x.path)

    assert_same(loaded, fresh)
    path.write_bytes(b"not a model")
    assert_same(from_torchvision("fasterrcnn_resnet50_fpn_coco"), fresh)
    assert zipfile.is_zipfile(path)  # replaced by a fresh conversion
    other = from_torchvision("torchvision:fasterrcnn_resnet50_fpn_coco", image_min_side=480)
    assert other.image_min_side == 480 and len(cached()) == 2
    assert len(requests) == 1  # the checkpoint was downloaded once
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


def test_train_init_fine_tunes_a_converted_model_on_bccd(tmp_path, torchvision_reference):
    """tfrcnn train --init: a converted torchvision model fine-tuned on BCCD for a few steps with
    torchvision's recipe (SGD, 0.02 x batch / 16); the frozen weights (first backbone stages,
    frozen batch norm) stay bit-identical, the trained ones move, the classes are BCCD's."""
    import json

    from tfrcnn.cli import main

    _, pth = torchvision_reference("fasterrcnn_mobilenet_v3_large_320_fpn")
    converted = tmp_path / "coco_320.keras"
    preset = "torchvision_mobilenet_v3_large_320_fpn"
    status, message = _run(
        ["import-weights", "torchvision", str(pth), "--preset", preset, "--output", str(converted)]
    )
    assert status == 0, message
    run_dir = tmp_path / "run"
    argv = ["train", "--init", str(converted), "--data", "bccd"]  # $TFRCNN_BCCD or ../shared
    argv += ["--epochs", "1", "--steps-per-epoch", "3", "--batch-size", "2", "--verbose", "0"]
    assert main(argv + ["--run-dir", str(run_dir)]) == 0
    run = json.loads((run_dir / "config.json").read_text())["run"]
    assert (run["init"], run["preset"], run["optimizer"]) == (str(converted), None, "sgd")
    assert run["learning_rate"] == pytest.approx(0.02 * 2 / 16)
    start = keras.saving.load_model(converted)
    tuned = keras.saving.load_model(run_dir / "model.keras")
    assert sorted(tuned.class_names) == ["Platelets", "RBC", "WBC"] and tuned.num_classes == 3
    assert tuned.rcnn_head.classifier.kernel.shape[-1] == 4  # background + 3
    assert tuned.preset == preset and tuned.image_min_side == 320
    class_outputs = {id(w) for w in tuned.rcnn_head.classifier.weights}
    class_outputs |= {id(w) for w in tuned.rcnn_head.regressor.weights}
    trainable = {id(w) for w in tuned.trainable_weights}
    frozen = moved = 0
    for new, old in zip(tuned.weights, start.weights):
        assert new.path == old.path
        if id(new) in class_outputs:
            continue
        if id(new) in trainable:
            moved += int(not np.array_equal(new.numpy(), old.numpy()))
        else:
            np.testing.assert_array_equal(new.numpy(), old.numpy(), err_msg=new.path)
            frozen += 1
    stem = tuned.backbone_model.weights[0]
    assert id(stem) not in trainable  # the first stages are frozen (trainable_backbone=3)
    assert frozen > 100 and moved > 10
