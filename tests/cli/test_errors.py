"""A table of command-line mistakes: each prints one line naming the thing and the fix, exits with
status 2, shows no traceback and leaves no run folder or output behind."""

import os
import socket
import subprocess
import sys
import zipfile

import pytest

from tfrcnn.cli import main

SMALL = [
    "--set",
    "num_train=4",
    "--set",
    "num_val=2",
    "--epochs",
    "1",
    "--steps-per-epoch",
    "1",
    "--verbose",
    "0",
]

# (argv, words the one line must hold); "VOC" stands for the shapes VOC folder of conftest.
MISTAKES = [
    (
        ["train", "--data", "voc", "--data-path", "no_such_folder"],
        ["data path not found: no_such_folder"],
    ),
    (["train", "--data-path", "empty_folder"], ["without Annotations/"]),
    (["train", "--data-path", "notes.txt"], ["neither a COCO JSON file nor a TFRecord"]),
    (
        ["train", "--data", "coco", "--data-path", "broken.json"] + SMALL,
        ["cannot parse COCO annotation file", "broken.json"],
    ),
    (["train", "--data", "tfrecord", "--data-path", "data/none-*.tfrecord"], ["no files match"]),
    (["train", "--data", "coco", "--data-path", "VOC"], ["is a Pascal VOC folder", "--data voc"]),
    (["train", "--data", "coco"], ["--data coco needs --data-path"]),
    (
        ["train", "--data-path", "VOC", "--data", "synthetic"],
        ["--data-path is not used with --data synthetic"],
    ),
    (
        ["train", "--data", "coco", "--data-path", "empty.json", "--image-dir", "no_images"],
        ["--image-dir folder not found: no_images"],
    ),
    (["train", "--set", "model.hed_units=[64,64]"], ["'hed_units'", "did you mean 'head_units'"]),
    (["train", "--set", "epoch=3"], ["unknown run setting 'epoch'", "did you mean 'epochs'"]),
    (["train", "--preset", "smal_fpn"], ["unknown preset 'smal_fpn'", "did you mean 'small_fpn'"]),
    (["train", "--set", "model.roi_op=roi_magic"] + SMALL, ["roi_op must be one of"]),
    (
        ["train", "--set", "model.anchor_scales=7"] + SMALL,
        ["value of the wrong type", "model.anchor_scales", "--print-config"],
    ),
    (
        ["train", "--preset", "mobilenet_v3_fpn", "--set", "model.backbone_weights=imagenet"]
        + SMALL,
        ["no network", "mobilenet_v3_large_224_1.0_float_no_top_v2.h5", "backbone_weights=PATH"],
    ),
    (["train", "--epochs", "0"], ["epochs must be a positive integer"]),
    (["train", "--precision", "float64"], ["invalid choice: 'float64'", "--help"]),
    (["train", "--config", "missing.yaml"], ["config file not found: missing.yaml"]),
    (["train", "--config", "bad.yaml"], ["bad.yaml is not valid YAML at line"]),
    (["train", "--set", "epochs"], ["bad --set 'epochs'", "key=value"]),
    (["train", "--resume", "no_run"], ["run folder not found: no_run"]),
    (["train", "--run-dir", "old_run"], ["already holds a run", "--resume old_run"]),
    (
        ["train", "--resume", "old_run", "--batch-size", "8", "--epochs", "9"],
        ["only --epochs may change (got a different batch_size)", "start a new run"],
    ),
    (["train", "--init", "nope.keras"], ["--init not found: nope.keras"]),
    (["train", "--init", "model.pth"], ["is a torchvision checkpoint", "tfrcnn import-weights"]),
    (["train", "--init", "torchvision:resnet50"], ["not a published torchvision detector"]),
    (
        ["train", "--init", "broken.keras", "--preset", "tiny"],
        ["sets the architecture", "--preset"],
    ),
    (["train", "--init", "broken.keras"] + SMALL, ["broken.keras is not a .keras model file"]),
    (
        ["train", "--init", "other.keras"] + SMALL,
        ["other.keras is a zip archive but not a .keras model file"],
    ),
    (
        ["train", "--init", "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn_coco"] + SMALL,
        ["no network", "fasterrcnn_mobilenet_v3_large_320_fpn-907ea3f9.pth"],
    ),
    (["evaluate", "nope.keras"], ["model not found: nope.keras"]),
    (["evaluate", "broken.keras"], ["cannot load broken.keras as a tfrcnn model"]),
    (["evaluate", "notes.txt"], ["is not a .keras file"]),
    (
        ["evaluate", "other.keras"],
        ["other.keras is a zip archive but not a .keras model file", "tfrcnn train"],
    ),
    (["evaluate", "broken.keras", "--out", "notes.txt"], ["--out notes.txt is a file"]),
    (["predict", "missing.jpg", "--model", "broken.keras"], ["image not found: missing.jpg"]),
    (["predict", "fake.jpg", "--model", "broken.keras"], ["fake.jpg"]),
    (
        ["predict", "fake.jpg", "--model", "x.keras", "--box-format", "xyz"],
        ["invalid choice: 'xyz'"],
    ),
    (
        ["convert", "--source", "VOC", "--to", "coco", "--output", "out/train"],
        ["give --output a .json name"],
    ),
    (["convert", "--source", "VOC", "--split", "no_split", "--output", "out/x"], ["no_split"]),
    (["convert", "--source", "notes.txt", "--output", "out/x"], ["--source", "notes.txt"]),
    (
        [
            "export",
            "broken.keras",
            "--format",
            "tflite",
            "--output",
            "m.tflite",
            "--input-size",
            "19x",
        ],
        ["--input-size '19x'", "e.g. 192x192"],
    ),
    (["export", "broken.keras", "--output", "notes.txt"], ["--output notes.txt is a file"]),
]


def _snapshot(root):
    found = set()
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            found.add(os.path.relpath(os.path.join(folder, name), root))
    return found


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working folder holding the broken inputs the mistakes name."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))  # no cached ImageNet files
    # downloads go to a port on 127.0.0.1 where nothing listens: the offline case, never the internet
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("TFRCNN_WEIGHTS_BASE_URL", f"http://127.0.0.1:{port}/")
    (tmp_path / "empty_folder").mkdir()
    (tmp_path / "notes.txt").write_text("not data\n")
    (tmp_path / "broken.json").write_text('{"images": [')
    (tmp_path / "empty.json").write_text('{"images": [], "annotations": [], "categories": []}')
    (tmp_path / "bad.yaml").write_text("epochs: [3\nseed: 1\n")
    (tmp_path / "broken.keras").write_bytes(b"this is not a zip file")
    with zipfile.ZipFile(tmp_path / "other.keras", "w") as archive:  # a zip, but not a model
        archive.writestr("readme.txt", "not a Keras model")
    (tmp_path / "fake.jpg").write_text("a text file named .jpg")
    (tmp_path / "old_run").mkdir()
    (tmp_path / "old_run" / "config.json").write_text('{"run": {"batch_size": 2, "epochs": 3}}')
    return tmp_path


@pytest.mark.parametrize("argv, words", MISTAKES, ids=[" ".join(m[0][:4]) for m in MISTAKES])
def test_mistake_is_one_line_exit_2_and_leaves_nothing(argv, words, workdir, shapes_voc, capsys):
    argv = [shapes_voc[0] if a == "VOC" else a for a in argv]
    before = _snapshot(workdir)
    try:
        status = main(argv)
    except SystemExit as e:  # argparse's own errors
        status = e.code
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)
    assert _snapshot(workdir) == before, _snapshot(workdir) ^ before


def test_the_table_covers_at_least_15_mistakes():
    assert len(MISTAKES) >= 15


def test_a_mistake_in_a_fresh_process_prints_only_the_line(tmp_path):
    """The real command: nothing but the one line on standard error (no TensorFlow start-up
    lines, no traceback), status 2, no run folder."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tfrcnn.cli",
            "train",
            "--data",
            "voc",
            "--data-path",
            "missing_voc",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
    )
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "tfrcnn train: error: --data-path: data path not found: missing_voc"
    ), out.stderr
    assert os.listdir(tmp_path) == []
