"""A training run: data, model, ``fit``, evaluation, and a run folder that keeps everything.

The run folder holds ``config.json`` (the resolved configuration), ``checkpoints/`` (the model
after every epoch as ``.keras``, plus ``last.keras``), ``history.json`` / ``history.csv`` (every
loss term and the validation mAP per epoch), ``model.keras`` (the final model) and
``metrics.json`` (the final mAP on the held-out split).

Under ``strategy="multi_worker"`` every worker runs :func:`train` with the same ``run_dir`` (shared
storage in a real cluster) and only the chief writes it: ``config.json``, the checkpoints (a
``tf.train.Checkpoint`` of the model and optimizer, ``checkpoints/ckpt-<step>``, written by
:func:`tfrcnn.training.distributed.distributed_fit`), ``model.keras``, ``history.json`` and
``metrics.json``; ``resume=True`` restarts every worker from the chief's newest checkpoint.
"""

import json
import logging
import os
import time

import keras
import numpy as np

from tfrcnn import config as presets
from tfrcnn.data import make_dataset, read_voc, synthetic_splits, SYNTHETIC_CLASS_NAMES
from tfrcnn.evaluation import MeanAveragePrecisionCallback, evaluate_model
from tfrcnn.export.atomic import atomic_file
from tfrcnn.models import FasterRCNN
from tfrcnn.accel import check_cpu_allocator
from tfrcnn.training.callbacks import NaNGuard
from tfrcnn.training.distributed import (distributed_fit, is_chief, latest_checkpoint,
                                         make_strategy, resume as resume_checkpoint)
from tfrcnn.training.precision import precision_scope, resolve_precision
from tfrcnn.training.schemes import train_alternating

log = logging.getLogger("tfrcnn")

# The training settings of a run, with the values of the built-in demo (tiny preset, synthetic data).
RUN_DEFAULTS = dict(
    preset="tiny",
    data="synthetic",
    data_path=None,
    train_split="trainval",
    val_split="test",
    augment={},
    strategy="default",
    precision="float32",
    num_train=1000,
    num_val=200,
    seed=0,
    epochs=16,
    steps_per_epoch=125,
    batch_size=4,
    optimizer="adamw",
    learning_rate=2e-3,
    weight_decay=1e-4,
    warmup_steps=100,
    clipnorm=10.0,
    eval_every=4,
    model={},
)


def _optimizer(settings, total_steps):
    lr = float(settings["learning_rate"])
    warmup = int(settings.get("warmup_steps", 0))
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0 if warmup else lr, decay_steps=max(total_steps - warmup, 1), alpha=0.01,
        warmup_target=lr if warmup else None, warmup_steps=warmup)
    name = settings["optimizer"].lower()
    clip = settings.get("clipnorm")
    if name == "adamw":
        return keras.optimizers.AdamW(schedule, weight_decay=float(settings["weight_decay"]), clipnorm=clip)
    if name == "adam":
        return keras.optimizers.Adam(schedule, clipnorm=clip)
    if name == "sgd":
        return keras.optimizers.SGD(schedule, momentum=0.9, weight_decay=float(settings["weight_decay"]),
                                    clipnorm=clip)
    raise ValueError(f"optimizer must be 'adamw', 'adam' or 'sgd', got {settings['optimizer']!r}")


def default_bccd_path():
    """``$TFRCNN_BCCD`` or ``../shared/datasets/bccd`` from the project root."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.environ.get("TFRCNN_BCCD", os.path.join(root, "..", "shared", "datasets", "bccd"))


def load_data(settings, model_args=None):
    """Training and validation records plus class names for the run's ``data`` setting:
    ``"synthetic"`` (built in), ``"voc"`` (``data_path`` a VOC folder, ``train_split`` /
    ``val_split``) or ``"bccd"`` (the shared BCCD dataset, VOC layout)."""
    kind = settings["data"]
    if kind == "synthetic":
        train, val = synthetic_splits(num_train=int(settings["num_train"]),
                                      num_val=int(settings["num_val"]), seed=int(settings["seed"]))
        return train, val, list(SYNTHETIC_CLASS_NAMES)
    if kind in ("voc", "bccd"):
        path = settings.get("data_path") or (default_bccd_path() if kind == "bccd" else None)
        if not path:
            raise ValueError("data='voc' needs data_path, the folder holding Annotations/")
        train, names, report = read_voc(path, settings["train_split"])
        log.info("train split: %s", report.summary())
        val, _, report = read_voc(path, settings["val_split"], class_names=names)
        log.info("validation split: %s", report.summary())
        return train, val, list(names)
    raise ValueError(f"unknown data {kind!r}: use 'synthetic', 'voc' (with data_path) or 'bccd'")


def resolve_settings(overrides=None):
    """RUN_DEFAULTS updated with ``overrides`` (a dict; ``model`` merges key by key)."""
    settings = json.loads(json.dumps(RUN_DEFAULTS))
    for key, value in (overrides or {}).items():
        if key == "model":
            settings["model"].update(value or {})
        elif key == "augment":
            settings["augment"] = dict(value or {})
        elif key in settings:
            settings[key] = value
        else:
            raise ValueError(f"unknown run setting {key!r}; known: {', '.join(sorted(settings))} "
                             "(model settings go under 'model.<name>')")
    presets.get_preset(settings["preset"])
    resolve_precision(settings["precision"])  # a clear error for an unknown name
    return settings


def _datasets(model, train, val, settings):
    side = (model.image_max_side, model.image_max_side)
    pad = tuple(int(np.ceil(s / model.size_divisor) * model.size_divisor) for s in side)
    common = dict(min_side=model.image_min_side, max_side=model.image_max_side, pad_to=pad,
                  size_divisor=model.size_divisor)
    train_ds = make_dataset(train, batch_size=int(settings["batch_size"]), training=True,
                            seed=int(settings["seed"]), augment=settings.get("augment") or None,
                            **common).repeat()
    val_ds = make_dataset(val, batch_size=int(settings["batch_size"]), training=False, **common)
    return train_ds, val_ds


class RunCheckpoint(keras.callbacks.Callback):
    """After every epoch: the model with its optimizer state to ``checkpoints/last.keras`` and the
    number of finished epochs to ``checkpoints/state.json``, each written to a temporary file and
    moved into place, so an interruption leaves the previous complete checkpoint."""

    def __init__(self, run_dir):
        super().__init__()
        self.folder = os.path.join(run_dir, "checkpoints")

    def on_epoch_end(self, epoch, logs=None):
        with atomic_file(os.path.join(self.folder, "last.keras"), suffix=".keras") as tmp:
            self.model.save(tmp)
        _write_json(os.path.join(self.folder, "state.json"), {"epochs_done": epoch + 1})


def _read_csv_history(path):
    history = {}
    if not os.path.exists(path):
        return history
    import csv
    with open(path) as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key == "epoch":
                    continue
                try:
                    history.setdefault(key, []).append(float(value))
                except (TypeError, ValueError):
                    pass
    return history


def train(run_dir, overrides=None, verbose=1, resume=False, extra_callbacks=()):
    """Run a whole training job into ``run_dir`` and return its final metrics dict.

    With ``resume=True`` the run's saved configuration is used (``overrides`` may only raise
    ``epochs``), the model and optimizer state come from ``checkpoints/last.keras`` and training
    continues at the epoch after the last finished one.

    Example:
        >>> metrics = train("runs/demo")           # the tiny preset on the synthetic shapes
        >>> metrics["mAP"]
    """
    initial_epoch = 0
    checkpoints = os.path.join(run_dir, "checkpoints")
    if resume:
        config_path = os.path.join(run_dir, "config.json")
        state_path = os.path.join(checkpoints, "state.json")
        saved = json.load(open(config_path))["run"] if os.path.exists(config_path) else None
        # multi_worker runs keep tf.train checkpoints numbered by optimizer step (no state.json)
        multi_worker = saved is not None and saved.get("strategy") == "multi_worker"
        step = latest_checkpoint(checkpoints)[1] if multi_worker else 0
        if saved is None or not (step if multi_worker else os.path.exists(state_path)):
            raise ValueError(f"nothing to resume in {run_dir}: no config.json or checkpoint")
        extra = dict(overrides or {})
        if set(extra) - {"epochs"}:
            raise ValueError("--resume continues the saved configuration; only epochs may change "
                             f"(got {sorted(set(extra) - {'epochs'})})")
        saved.update(extra)
        settings = resolve_settings(saved)
        initial_epoch = (step // int(settings["steps_per_epoch"]) if multi_worker
                         else int(json.load(open(state_path))["epochs_done"]))
    else:
        settings = resolve_settings(overrides)
    strategy = make_strategy(settings["strategy"])
    multi_worker = settings["strategy"] == "multi_worker"
    chief = is_chief(strategy)
    if chief:
        os.makedirs(checkpoints, exist_ok=True)
    keras.utils.set_random_seed(int(settings["seed"]) + initial_epoch)
    train_records, val_records, class_names = load_data(settings, settings["model"])
    check_cpu_allocator(log)
    # "auto" is resolved once and recorded, so a resumed run keeps the policy it started with.
    settings["precision"] = resolve_precision(settings["precision"])
    with strategy.scope(), precision_scope(settings["precision"]):
        if resume and not multi_worker:
            model = keras.models.load_model(os.path.join(checkpoints, "last.keras"))
        else:
            model = FasterRCNN.from_preset(settings["preset"], num_classes=len(class_names),
                                           class_names=class_names, **settings["model"])
    if not resume and chief:
        _write_json(os.path.join(run_dir, "config.json"),
                    {"run": settings, "model": model.get_config()}, indent=2, default=list)
    train_ds, val_ds = _datasets(model, train_records, val_records, settings)
    epochs, steps = int(settings["epochs"]), int(settings["steps_per_epoch"])
    map_callback = MeanAveragePrecisionCallback(val_ds, len(class_names), class_names=class_names,
                                                every=int(settings["eval_every"]), verbose=verbose)
    callbacks = [
        NaNGuard(),
        map_callback,
        RunCheckpoint(run_dir),
        keras.callbacks.CSVLogger(os.path.join(run_dir, "history.csv"), append=resume),
        keras.callbacks.TensorBoard(os.path.join(run_dir, "logs"), write_graph=False),
    ] + list(extra_callbacks)
    start = time.time()
    if model.training_scheme == "alternating":
        quarter = max(epochs // 4, 1)
        model.compile(optimizer=_optimizer(settings, quarter * steps))
        results = train_alternating(model, train_ds, epochs_per_stage=(quarter,) * 4,
                                    steps_per_epoch=steps, callbacks=callbacks, verbose=verbose,
                                    optimizer_factory=lambda: _optimizer(settings, quarter * steps))
        history = {}
        for _, h in results:
            for k, v in h.history.items():
                history.setdefault(k, []).extend(v)
    elif multi_worker:
        # Keras fit cannot run dict batches under MultiWorkerMirroredStrategy (keras#20329): use
        # the strategy's own loop, checkpointing on the chief only (after every epoch's steps).
        with strategy.scope():
            model.compile(optimizer=_optimizer(settings, epochs * steps))
        done = resume_checkpoint(model, checkpoints) if resume else 0
        if done:
            log.info("resuming at optimizer step %d of %d", done, epochs * steps)
        per_step = distributed_fit(model, train_ds, strategy, steps=max(epochs * steps - done, 0),
                                   checkpoint_dir=checkpoints, checkpoint_every=steps)
        history = {k: [float(v) for v in vals] for k, vals in per_step.items()}
        previous = os.path.join(run_dir, "history.json")
        if resume and os.path.exists(previous):   # the steps before the checkpoint stay recorded
            with open(previous) as f:
                earlier = json.load(f)
            history = {k: list(earlier.get(k, []))[:done] + v for k, v in history.items()}
    else:
        if not resume:
            with strategy.scope():
                model.compile(optimizer=_optimizer(settings, epochs * steps))
        model.fit(train_ds, epochs=epochs, steps_per_epoch=steps, callbacks=callbacks,
                  verbose=verbose, initial_epoch=initial_epoch)
        history = _read_csv_history(os.path.join(run_dir, "history.csv"))
    train_seconds = time.time() - start
    result = evaluate_model(model, val_ds, len(class_names), class_names=class_names)
    metrics = {
        "mAP": float(result["mAP"]),
        "per_class_ap": {k: float(v) for k, v in result["per_class"].items()},
        "train_seconds": train_seconds,
        "seconds_per_image": float(result.get("seconds_per_image", float("nan"))),
        "epochs": epochs, "steps_per_epoch": steps,
    }
    if chief:
        with atomic_file(os.path.join(run_dir, "model.keras"), suffix=".keras") as tmp:
            model.save(tmp)
        _write_json(os.path.join(run_dir, "history.json"),
                    {k: [float(x) for x in v] for k, v in history.items()}, indent=2)
        _write_json(os.path.join(run_dir, "metrics.json"), metrics, indent=2)
    return metrics


def _write_json(path, value, **kwargs):
    """``json.dump`` into a temporary sibling moved into place: a reader never sees half a file."""
    with atomic_file(path) as tmp, open(tmp, "w") as f:
        json.dump(value, f, **kwargs)
