"""Training callbacks: stop on a non-finite loss or weight, naming where it happened; keep the
best model."""

import json
import math
import os

import keras
import tensorflow as tf


class NonFiniteTrainingError(FloatingPointError):
    """Training met a non-finite loss or weight. ``epoch`` and ``step`` (1-based) say where,
    ``variable`` names the first non-finite variable (``None`` when only the loss was),
    ``losses`` holds the non-finite logged terms."""

    def __init__(self, message, epoch, step, variable=None, losses=None):
        super().__init__(message)
        self.epoch, self.step, self.variable = epoch, step, variable
        self.losses = dict(losses or {})


class NaNGuard(keras.callbacks.Callback):
    """Stops training at the first step whose loss, gradients or updated weights are non-finite,
    naming where and which variable, before anything is saved.

    After every step it checks the logged loss terms and every model variable (one compiled
    reduction a variable); before every step it checks the variables again, so a weight changed
    between steps (by a callback or user code) is caught before it is trained on. A non-finite
    gradient shows as a non-finite weight right after its update, so it is caught in the same step;
    the message names the first variable, in model order, that is non-finite and how many are
    (with global-norm clipping, ``clipnorm``, one bad gradient makes every update non-finite).

    It raises :class:`NonFiniteTrainingError` (a ``FloatingPointError``) from the batch callback,
    so ``fit`` stops before ``on_epoch_end``: checkpoint callbacks never write the broken model and
    the last good checkpoint stays as it was. ``keras.callbacks.TerminateOnNaN`` stops silently.

    Args:
        check_weights: also check the variables (default ``True``; ``False`` looks at the logged
            losses only).

    Example:
        >>> model.fit(dataset, epochs=5, callbacks=[NaNGuard(), RunCheckpoint("runs/a")])
    """

    def __init__(self, check_weights=True):
        super().__init__()
        self.check_weights = bool(check_weights)
        self.epoch = 0
        self._finite = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_begin(self, logs=None):
        variables = [getattr(v, "value", v) for v in self.model.variables]
        self._paths = [v.path for v in self.model.variables]

        @tf.function
        def finite():
            return tf.stack(
                [
                    tf.reduce_all(tf.math.is_finite(v))
                    if v.dtype.is_floating
                    else tf.constant(True)
                    for v in variables
                ]
            )

        self._finite = finite

    def _bad_variables(self):
        if not self.check_weights or self._finite is None or not self._paths:
            return []
        flags = self._finite().numpy()
        return [path for path, ok in zip(self._paths, flags) if not ok]

    def _stop(self, batch, when, bad, losses):
        self.model.stop_training = True
        where = f"epoch {self.epoch + 1}, step {batch + 1}"
        variable = ""
        if bad:
            more = f" ({len(bad)} of {len(self._paths)} variables)" if len(bad) > 1 else ""
            variable = f"variable {bad[0]} is non-finite{more}"
        if losses:
            terms = ", ".join(f"{k}={v}" for k, v in sorted(losses.items()))
            text = f"non-finite loss at {where}: {terms}" + (f"; {variable}" if bad else "")
        elif when == "before":
            text = f"non-finite weight before {where}: {variable} (changed between steps)"
        else:
            text = f"non-finite weight after {where}: {variable} (a non-finite gradient or update)"
        raise NonFiniteTrainingError(
            f"{text}. Training stopped before saving; lower the learning rate or check the data "
            "for broken boxes.",
            self.epoch + 1,
            batch + 1,
            variable=bad[0] if bad else None,
            losses=losses,
        )

    def on_train_batch_begin(self, batch, logs=None):
        bad = self._bad_variables()
        if bad:
            self._stop(batch, "before", bad, {})

    def on_train_batch_end(self, batch, logs=None):
        losses = {
            k: float(v)
            for k, v in (logs or {}).items()
            if k.endswith("loss") and not math.isfinite(float(v))
        }
        bad = self._bad_variables()
        if losses or bad:
            self._stop(batch, "after", bad, losses)


class TimeLimit(keras.callbacks.Callback):
    """Stops ``fit`` after a wall-clock budget (checked after every batch), e.g. to compare
    detectors under the same training time. ``self.steps`` counts the batches run.

    Example:
        >>> model.fit(ds.repeat(), epochs=1000, steps_per_epoch=100, callbacks=[TimeLimit(25)])
    """

    def __init__(self, minutes):
        super().__init__()
        self.seconds = float(minutes) * 60.0
        self.steps = 0
        self.start = None

    def on_train_begin(self, logs=None):
        import time

        self.start = time.perf_counter()
        self.steps = 0

    def on_train_batch_end(self, batch, logs=None):
        import time

        self.steps += 1
        if time.perf_counter() - self.start >= self.seconds:
            self.model.stop_training = True


class BestCheckpoint(keras.callbacks.Callback):
    """Keeps the model with the highest ``logs[monitor]`` (default the validation mAP) at ``path``.

    After an epoch whose value beats every earlier one, the model is saved to ``path`` (a ``.keras``
    file, written atomically) and the value and epoch to ``path`` + ``.json``; a resumed run reads
    that file, so it only replaces the model with a better one. Epochs without the value (or with a
    non-finite one) change nothing. Put it after the callback that logs the value.

    Example:
        >>> model.fit(train, epochs=10, callbacks=[MeanAveragePrecisionCallback(val, 3),
        ...                                        BestCheckpoint("run/checkpoints/best.keras")])
    """

    def __init__(self, path, monitor="val_mAP"):
        super().__init__()
        self.path = os.fspath(path)
        self.monitor = monitor
        self.best = -math.inf
        self.best_epoch = None
        state = self.path + ".json"
        if os.path.exists(state):
            with open(state) as f:
                saved = json.load(f)
            self.best, self.best_epoch = float(saved[monitor]), int(saved["epoch"])

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)) or float(value) <= self.best:
            return
        from tfrcnn.export.atomic import atomic_file

        with atomic_file(self.path) as tmp:
            self.model.save(tmp + ".keras")
            os.replace(tmp + ".keras", tmp)
        self.best, self.best_epoch = float(value), epoch + 1
        with atomic_file(self.path + ".json") as tmp, open(tmp, "w") as f:
            json.dump({self.monitor: self.best, "epoch": self.best_epoch}, f)
