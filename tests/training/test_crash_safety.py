"""`tfrcnn train` killed with SIGKILL at ten points (during steps and evaluation, while writing the
checkpoint, the history, the state and the final files) and resumed each time: the run finishes its planned steps with a
history without gaps or repeats, and no file in the run folder is ever partial."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import keras
import pytest

from tfrcnn.training.run import RUN_STATE_MEMBER, read_run_state, train

EPOCHS, STEPS = 12, 2  # enough epochs for every kill point to fire before the run ends
ARGS = [
    "--preset",
    "tiny",
    "--epochs",
    str(EPOCHS),
    "--steps-per-epoch",
    str(STEPS),
    "--batch-size",
    "2",
    "--seed",
    "0",
    "--verbose",
    "0",
    "--set",
    "num_train=8",
    "--set",
    "num_val=4",
    "--set",
    "eval_every=1",
    "--set",
    "warmup_steps=0",
]


def _hidden(folder, tag):
    return os.path.isdir(folder) and any(n.startswith(".") and tag in n for n in os.listdir(folder))


def _epochs_done(run):
    try:
        with open(os.path.join(run, "checkpoints", "state.json")) as f:
            return json.load(f)["epochs_done"]
    except (OSError, ValueError, KeyError):
        return 0


# When to kill: a condition on the run folder (polled every few ms) given the epochs done when the
# process started. A write too quick to be seen falls back to "one epoch later, during its steps".
def _writing(folder, tag):
    return lambda run, start: _hidden(os.path.join(run, folder), tag)


def _after_epochs(more):
    return lambda run, start: _epochs_done(run) >= start + more


TRIGGERS = [
    ("while writing the first checkpoint", _writing("checkpoints", ".last.keras.tmp-")),
    ("during the steps of the next epoch", _after_epochs(1)),
    ("while writing history.csv", _writing("", ".history.csv.tmp-")),
    ("while writing state.json", _writing("checkpoints", ".state.json.tmp-")),
    ("while writing a checkpoint", _writing("checkpoints", ".last.keras.tmp-")),
    ("during the steps or the evaluation of the next epoch", _after_epochs(1)),
    ("while writing a checkpoint", _writing("checkpoints", ".last.keras.tmp-")),
    ("during the final evaluation", lambda run, start: _epochs_done(run) >= EPOCHS),
    ("while writing the final model", _writing("", ".model.keras.tmp-")),
    ("while writing metrics.json", _writing("", ".metrics.json.tmp-")),
]


def _run_cli(run, resume, trigger=None, timeout=1800):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    cmd = [sys.executable, "-m", "tfrcnn.cli", "train"]
    cmd += ["--resume", run] if resume else ["--run-dir", run]
    process = subprocess.Popen(
        cmd + ARGS, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + timeout
    killed = False
    start = _epochs_done(run)
    while process.poll() is None and time.time() < deadline:
        if trigger is not None and (trigger(run, start) or _epochs_done(run) >= start + 2):
            os.kill(process.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.003)
    if process.poll() is None and not killed:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"tfrcnn train did not finish in {timeout} s")
    _, err = process.communicate()
    if not killed:
        assert process.returncode == 0, err[-3000:]
    return killed


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _check_complete(run):
    """Every visible file of the run folder is whole (hidden .tmp- files are a killed write's
    leftovers, removed by the next start)."""
    checkpoints = os.path.join(run, "checkpoints")
    last = os.path.join(checkpoints, "last.keras")
    for folder in (run, checkpoints):
        for name in os.listdir(folder) if os.path.isdir(folder) else []:
            path = os.path.join(folder, name)
            if name.startswith(".") or os.path.isdir(path):
                continue
            if name.endswith(".json"):
                with open(path) as f:
                    json.load(f)
            elif name.endswith(".keras"):
                with zipfile.ZipFile(path) as archive:
                    assert archive.testzip() is None
            elif name.endswith(".csv"):
                rows = _rows(path)
                assert [int(r["epoch"]) for r in rows] == list(range(len(rows)))
    state = read_run_state(last)
    if state is not None:
        # the checkpoint is the commit point: state.json and history.csv are at most one epoch behind
        assert state["epochs_done"] - _epochs_done(run) in (0, 1)
        assert len(state["history"]) == state["epochs_done"]
        history = os.path.join(run, "history.csv")
        rows = _rows(history) if os.path.exists(history) else []
        assert state["epochs_done"] - len(rows) in (0, 1)


@pytest.mark.slow
def test_sigkill_at_many_points_then_resume(tmp_path):
    run = str(tmp_path / "run")
    kills = []
    resume = False
    for name, trigger in TRIGGERS:
        # a run killed before its first checkpoint resumes too (from its first epoch)
        kills.append((name, _run_cli(run, resume, trigger)))
        _check_complete(run)
        resume = True
        if os.path.exists(os.path.join(run, "metrics.json")):
            break
    if not os.path.exists(os.path.join(run, "metrics.json")):
        _run_cli(run, resume=True)
    assert sum(k for _, k in kills) >= 6, kills
    _check_complete(run)
    assert not any(n.startswith(".") for n in os.listdir(run))
    assert not any(n.startswith(".") for n in os.listdir(os.path.join(run, "checkpoints")))
    rows = _rows(os.path.join(run, "history.csv"))
    assert [int(r["epoch"]) for r in rows] == list(range(EPOCHS))  # no gap, no repeat
    state = read_run_state(os.path.join(run, "checkpoints", "last.keras"))
    assert state["epochs_done"] == EPOCHS and len(state["history"]) == EPOCHS
    for row, logged in zip(rows, state["history"]):
        assert abs(float(row["loss"]) - logged["loss"]) < 1e-6
    model = keras.models.load_model(os.path.join(run, "model.keras"))
    assert int(model.optimizer.iterations.numpy()) == EPOCHS * STEPS  # every planned step, once
    with open(os.path.join(run, "history.json")) as f:
        assert len(json.load(f)["loss"]) == EPOCHS
    with open(os.path.join(run, "metrics.json")) as f:
        metrics = json.load(f)
    assert 0.0 <= metrics["mAP"] <= 1.0


def test_the_checkpoint_carries_its_epoch_count_and_history(tmp_path):
    run = str(tmp_path / "run")
    train(
        run,
        {
            "num_train": 4,
            "num_val": 2,
            "epochs": 2,
            "steps_per_epoch": 1,
            "batch_size": 2,
            "eval_every": 100,
            "warmup_steps": 0,
        },
        verbose=0,
    )
    last = os.path.join(run, "checkpoints", "last.keras")
    state = read_run_state(last)
    assert state["epochs_done"] == 2 and len(state["history"]) == 2
    with zipfile.ZipFile(last) as archive:
        assert RUN_STATE_MEMBER in archive.namelist()
    rows = _rows(os.path.join(run, "history.csv"))
    assert [float(r["loss"]) for r in rows] == pytest.approx([h["loss"] for h in state["history"]])
    keras.models.load_model(last)  # the extra member does not disturb Keras
