"""Start-up: help without TensorFlow, TensorFlow's log level, presets from the registry and the
resolved configuration."""

import os
import subprocess
import sys

import yaml

from tfrcnn import config
from tfrcnn.cli import main
from tfrcnn.cli.common import QUIET_TF_LOG_LEVEL, quiet_tensorflow_log

HELP_CODE = """
import sys, time
start = time.perf_counter()
from tfrcnn.cli import main
for argv in ([], ["train"], ["evaluate"], ["convert"], ["export"], ["predict"], ["presets"]):
    try:
        main(argv + ["--help"])
    except SystemExit as e:
        assert e.code == 0, (argv, e.code)
loaded = sorted(m for m in ("tensorflow", "keras", "numpy") if m in sys.modules)
print("LOADED", loaded, "SECONDS", time.perf_counter() - start)
"""


def test_help_of_every_command_imports_no_tensorflow():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    out = subprocess.run(
        [sys.executable, "-c", HELP_CODE],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    last = out.stdout.strip().splitlines()[-1].split()
    assert last[:2] == ["LOADED", "[]"], last
    assert float(last[-1]) < 3.0  # seven help texts; TensorFlow alone takes several seconds


def test_tensorflow_log_level_is_quiet_unless_the_user_chose():
    env = {}
    assert quiet_tensorflow_log(environ=env) is True
    assert env["TF_CPP_MIN_LOG_LEVEL"] == QUIET_TF_LOG_LEVEL == "2"
    env = {"TF_CPP_MIN_LOG_LEVEL": "0"}
    assert quiet_tensorflow_log(environ=env) is False and env["TF_CPP_MIN_LOG_LEVEL"] == "0"
    env = {"TF_CPP_MIN_LOG_LEVEL": "3"}
    assert quiet_tensorflow_log(tf_log=True, environ=env) is False
    assert env["TF_CPP_MIN_LOG_LEVEL"] == "0"


def test_presets_lists_the_registry(capsys):
    assert main(["presets"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split()[:2] == ["preset", "backbone"]
    for name in config.preset_names():
        row = next(r for r in rows if r.startswith(name + " "))
        preset = config.get_preset(name)
        assert preset["backbone"] in row
        assert f"{preset['image_min_side']}-{preset['image_max_side']}" in row
        assert config.PRESET_USES[name] in row
    assert set(config.PRESET_USES) == set(config.PRESETS)


def test_train_help_lists_every_preset_and_the_defaults(capsys):
    try:
        main(["train", "--help"])
    except SystemExit as e:
        assert e.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert ", ".join(config.preset_names()) in text
    for flag, key in (
        ("--epochs", "epochs"),
        ("--batch-size", "batch_size"),
        ("--learning-rate", "learning_rate"),
        ("--steps-per-epoch", "steps_per_epoch"),
    ):
        assert f"(default {config.RUN_DEFAULTS[key]})" in text, flag


def test_print_config_is_the_resolved_yaml(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (
        main(
            [
                "train",
                "--preset",
                "small_fpn",
                "--epochs",
                "3",
                "--set",
                "model.head_units=[64,64]",
                "--print-config",
            ]
        )
        == 0
    )
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["run"]["preset"] == "small_fpn" and resolved["run"]["epochs"] == 3
    assert resolved["run"]["batch_size"] == config.RUN_DEFAULTS["batch_size"]
    expected = config.get_preset("small_fpn")
    assert resolved["model"]["head_units"] == [64, 64]
    assert resolved["model"]["image_min_side"] == expected["image_min_side"] == 480
    assert resolved["model"]["anchor_scales"] == [list(s) for s in expected["anchor_scales"]]
    assert os.listdir(tmp_path) == []  # nothing written
