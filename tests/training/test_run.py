"""A run folder survives an interruption: --resume continues at the right epoch with the same
optimizer state."""

import csv
import json
import os

import keras
import numpy as np
import pytest

from tfrcnn.cli import main
from tfrcnn.training.run import train

SMALL = {
    "num_train": 12,
    "num_val": 4,
    "epochs": 3,
    "steps_per_epoch": 2,
    "batch_size": 2,
    "eval_every": 1,
    "warmup_steps": 1,
}


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("simulated interruption after epoch 2")


def test_resume_continues_at_the_next_epoch_with_the_optimizer_state(tmp_path):
    run = str(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        train(run, SMALL, verbose=0, extra_callbacks=[_Interrupt()])
    state = json.load(open(os.path.join(run, "checkpoints", "state.json")))
    assert state == {"epochs_done": 2}
    checkpoint = keras.models.load_model(os.path.join(run, "checkpoints", "last.keras"))
    assert int(checkpoint.optimizer.iterations.numpy()) == 4  # 2 epochs x 2 steps
    saved_moments = [v.numpy().copy() for v in checkpoint.optimizer.variables[2:6]]
    assert any(np.abs(m).sum() > 0 for m in saved_moments)
    assert not os.path.exists(os.path.join(run, "model.keras"))

    starts = []

    class _Probe(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            starts.append(
                (
                    int(self.model.optimizer.iterations.numpy()),
                    [v.numpy().copy() for v in self.model.optimizer.variables[2:6]],
                )
            )

        def on_epoch_begin(self, epoch, logs=None):
            starts.append(("epoch", epoch))

    # a setting that differs from the saved run is refused before anything is touched
    with pytest.raises(ValueError, match=r"only epochs may change \(got a different batch_size"):
        train(run, {"batch_size": 4, "epochs": 3}, verbose=0, resume=True)
    with pytest.raises(ValueError, match=r"a different model.image_min_side"):
        train(run, {"model": {"image_min_side": 321}}, verbose=0, resume=True)
    assert json.load(open(os.path.join(run, "checkpoints", "state.json"))) == {"epochs_done": 2}
    # repeating the saved values (as a re-run of the same command line does) is not a change
    same = {k: SMALL[k] for k in ("num_train", "batch_size", "steps_per_epoch")}
    train(run, same, verbose=0, resume=True, extra_callbacks=[_Probe()])
    iterations, moments = starts[0]
    assert iterations == 4
    for a, b in zip(saved_moments, moments):
        np.testing.assert_array_equal(a, b)
    assert starts[1:] == [("epoch", 2)]  # only the third epoch is run
    rows = list(csv.DictReader(open(os.path.join(run, "history.csv"))))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert os.path.exists(os.path.join(run, "model.keras"))
    assert json.load(open(os.path.join(run, "checkpoints", "state.json"))) == {"epochs_done": 3}
    assert os.path.isdir(os.path.join(run, "logs"))  # TensorBoard logs


def test_resume_errors(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "none")]) == 2
    assert "run folder not found" in capsys.readouterr().err
    os.makedirs(tmp_path / "empty")
    assert main(["train", "--resume", str(tmp_path / "empty")]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_init_settings_default_to_torchvisions_fine_tuning_recipe():
    from tfrcnn.training.run import resolve_settings

    settings = resolve_settings({"init": "coco.keras", "batch_size": 8})
    assert settings["preset"] is None and settings["optimizer"] == "sgd"
    assert settings["learning_rate"] == pytest.approx(0.01)  # 0.02 x 8 / 16
    assert settings["weight_decay"] == pytest.approx(1e-4)
    given = resolve_settings({"init": "coco.keras", "learning_rate": 0.003, "optimizer": "adamw"})
    assert (given["optimizer"], given["learning_rate"]) == ("adamw", 0.003)
    plain = resolve_settings({"batch_size": 8})  # without init nothing changes
    assert (plain["preset"], plain["optimizer"], plain["learning_rate"]) == ("tiny", "adamw", 2e-3)
    # a resumed run's saved settings (every key given) come back as they were
    assert resolve_settings(dict(settings)) == settings
    with pytest.raises(ValueError, match="sets the architecture; drop the preset setting 'tiny'"):
        resolve_settings({"init": "coco.keras", "preset": "tiny"})
