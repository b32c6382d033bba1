"""NaNGuard on a real training run: a NaN written into one weight and a NaN in one gradient each
stop training within one step, naming the variable; the last checkpoint on disk still loads and
evaluates to the mAP it had; the CLI turns the stop into one line and exit status 1."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrcnn.cli import main
from tfrcnn.data import make_dataset, synthetic_splits
from tfrcnn.evaluation import evaluate_model
from tfrcnn.models import FasterRCNN
from tfrcnn.training import NaNGuard, NonFiniteTrainingError
from tfrcnn.training.run import RunCheckpoint, train

SMALL = {
    "num_train": 8,
    "num_val": 4,
    "epochs": 3,
    "steps_per_epoch": 2,
    "batch_size": 2,
    "eval_every": 100,
    "warmup_steps": 0,
}


def _rpn_kernel(model):
    return next(v for v in model.trainable_weights if "rpn" in v.path and "kernel" in v.path)


class _Record(keras.callbacks.Callback):
    """At the end of ``epoch`` (after the checkpoint is written): the weights and the mAP."""

    def __init__(self, epoch, val_ds, num_classes):
        super().__init__()
        self.epoch, self.val_ds, self.num_classes = epoch, val_ds, num_classes
        self.weights = self.map = None

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            self.weights = [w.numpy().copy() for w in self.model.weights]
            self.map = evaluate_model(self.model, self.val_ds, self.num_classes)["mAP"]


class _WriteNaN(keras.callbacks.Callback):
    """Writes a NaN into one entry of the RPN convolution kernel after step 1 of epoch 2."""

    def __init__(self):
        super().__init__()
        self.epoch = 0
        self.path = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 1 and batch == 0:
            kernel = _rpn_kernel(self.model)
            value = kernel.numpy()
            value.flat[7] = np.nan
            kernel.assign(value)
            self.path = kernel.path


def _val_ds(model, num_val=4, seed=0):
    _, val = synthetic_splits(num_train=0, num_val=num_val, seed=seed)
    side = model.image_max_side
    return make_dataset(
        val,
        batch_size=2,
        training=False,
        min_side=model.image_min_side,
        max_side=side,
        pad_to=(side, side),
        size_divisor=model.size_divisor,
    )


def _check_checkpoint(run_dir, record, compile=True):
    loaded = keras.models.load_model(
        os.path.join(run_dir, "checkpoints", "last.keras"), compile=compile
    )
    for a, b in zip(record.weights, loaded.weights):
        np.testing.assert_array_equal(a, b.numpy())
    assert evaluate_model(loaded, record.val_ds, record.num_classes)["mAP"] == record.map


def test_a_nan_written_into_a_weight_stops_the_run_before_the_next_step(tmp_path):
    run = str(tmp_path / "run")
    probe = FasterRCNN(num_classes=3)
    record = _Record(0, _val_ds(probe), 3)
    writer = _WriteNaN()
    with pytest.raises(NonFiniteTrainingError) as info:
        train(run, SMALL, verbose=0, extra_callbacks=[writer, record])
    error = info.value
    assert error.variable == writer.path and (error.epoch, error.step) == (2, 2)
    assert str(error).startswith(
        f"non-finite weight before epoch 2, step 2: variable "
        f"{writer.path} is non-finite (changed between steps)"
    )
    with open(os.path.join(run, "checkpoints", "state.json")) as f:
        assert json.load(f) == {"epochs_done": 1}
    assert not os.path.exists(os.path.join(run, "model.keras"))
    _check_checkpoint(run, record)


class _PoisonedAdam(keras.optimizers.Adam):
    """Adam whose gradient for one variable is NaN from iteration ``start`` on."""

    def __init__(self, target, start, **kwargs):
        super().__init__(name="poisoned_adam", **kwargs)
        self.target, self.start = target, start

    def apply(self, grads, trainable_variables=None):
        variables = (
            trainable_variables if trainable_variables is not None else self._trainable_variables
        )
        grads = [
            tf.where(self.iterations >= self.start, tf.fill(tf.shape(g), float("nan")), g)
            if v.path == self.target
            else g
            for g, v in zip(grads, variables)
        ]
        return super().apply(grads, trainable_variables)


def test_a_nan_gradient_stops_training_in_the_same_step(tmp_path):
    keras.utils.set_random_seed(0)
    model = FasterRCNN(num_classes=3)
    target = _rpn_kernel(model).path
    model.compile(optimizer=_PoisonedAdam(target, start=3, learning_rate=1e-3))
    train_records, _ = synthetic_splits(num_train=8, num_val=0, seed=0)
    side = model.image_max_side
    train_ds = make_dataset(
        train_records,
        batch_size=2,
        training=True,
        seed=0,
        min_side=model.image_min_side,
        max_side=side,
        pad_to=(side, side),
        size_divisor=model.size_divisor,
    ).repeat()
    run = str(tmp_path / "run")
    record = _Record(0, _val_ds(model), 3)
    with pytest.raises(NonFiniteTrainingError) as info:
        model.fit(
            train_ds,
            epochs=3,
            steps_per_epoch=2,
            verbose=0,
            callbacks=[NaNGuard(), RunCheckpoint(run), record],
        )
    error = info.value
    # iteration 3 (0-based) is epoch 2, step 2: the loss is still finite, the update is not
    assert (error.epoch, error.step, error.variable) == (2, 2, target)
    assert not error.losses
    assert str(error).startswith(
        f"non-finite weight after epoch 2, step 2: variable {target} is "
        "non-finite (a non-finite gradient or update)"
    )
    assert int(model.optimizer.iterations.numpy()) == 4
    _check_checkpoint(run, record, compile=False)  # the test's optimizer is not registered


def test_the_cli_reports_one_line_and_exit_status_1(tmp_path, capsys):
    run = str(tmp_path / "run")
    # lr 0 in step 1 (a good checkpoint), then 1e30: the weights overflow two steps later
    status = main(
        [
            "train",
            "--run-dir",
            run,
            "--preset",
            "tiny",
            "--epochs",
            "6",
            "--steps-per-epoch",
            "1",
            "--batch-size",
            "2",
            "--learning-rate",
            "1e30",
            "--set",
            "num_train=4",
            "--set",
            "num_val=2",
            "--set",
            "eval_every=100",
            "--set",
            "warmup_steps=1",
            "--set",
            "clipnorm=null",
            "--verbose",
            "0",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1
    line = [l for l in err if l.startswith("tfrcnn train: stopped:")]
    assert len(line) == 1, err
    checkpoint = os.path.join(run, "checkpoints", "last.keras")
    assert line[0].endswith(f"; the last good checkpoint is {checkpoint}")
    assert "non-finite" in line[0]
    keras.models.load_model(checkpoint)  # still loads
