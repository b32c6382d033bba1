"""A training run: data, model, ``fit``, evaluation, and a run folder that keeps everything.

The run folder holds ``config.json`` (the resolved configuration), ``checkpoints/``
(``last.keras``, the model after the latest epoch, and ``best.keras``, the one with the highest
validation mAP, with ``best.keras.json`` naming its epoch and mAP), ``history.json`` /
``history.csv`` (every loss term and the validation mAP per epoch), ``logs/`` (TensorBoard: the
losses, and detections drawn on a few validation images at each evaluation under ``images/``),
``model.keras`` (the final model) and ``metrics.json`` (the final mAP on the held-out split).
The folder is created only once the settings, the data and the model are set up.

Under ``strategy="multi_worker"`` every worker runs :func:`train` with the same ``run_dir`` (shared
storage in a real cluster) and only the chief writes it: ``config.json``, the checkpoints (a
``tf.train.Checkpoint`` of the model and optimizer, ``checkpoints/ckpt-<step>``, written by
:func:`tfrcnn.training.distributed.distributed_fit`), ``model.keras``, ``history.json`` and
``metrics.json``; ``resume=True`` restarts every worker from the chief's newest checkpoint.
"""

import csv
import json
import logging
import os
import shutil
import time
import zipfile

import keras
import numpy as np

from tfrcnn import config as presets
from tfrcnn.accel import check_cpu_allocator
from tfrcnn.data import SYNTHETIC_CLASS_NAMES, make_dataset, synthetic_splits
from tfrcnn.evaluation import DetectionImagesCallback, MeanAveragePrecisionCallback, evaluate_model
from tfrcnn.export.atomic import OLD_TAG, TMP_TAG, atomic_file
from tfrcnn.models import FasterRCNN
from tfrcnn.training.callbacks import BestCheckpoint, NaNGuard
from tfrcnn.training.distributed import distributed_fit, is_chief, latest_checkpoint, make_strategy
from tfrcnn.training.distributed import resume as resume_checkpoint
from tfrcnn.training.precision import precision_scope, resolve_precision
from tfrcnn.training.schemes import train_alternating

log = logging.getLogger("tfrcnn")

RUN_DEFAULTS = presets.RUN_DEFAULTS


def _optimizer(settings, total_steps):
    lr = float(settings["learning_rate"])
    warmup = int(settings.get("warmup_steps", 0))
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0 if warmup else lr,
        decay_steps=max(total_steps - warmup, 1),
        alpha=0.01,
        warmup_target=lr if warmup else None,
        warmup_steps=warmup,
    )
    name = settings["optimizer"].lower()
    clip = settings.get("clipnorm")
    if name == "adamw":
        return keras.optimizers.AdamW(
            schedule, weight_decay=float(settings["weight_decay"]), clipnorm=clip
        )
    if name == "adam":
        return keras.optimizers.Adam(schedule, clipnorm=clip)
    if name == "sgd":
        return keras.optimizers.SGD(
            schedule, momentum=0.9, weight_decay=float(settings["weight_decay"]), clipnorm=clip
        )
    raise ValueError(f"optimizer must be 'adamw', 'adam' or 'sgd', got {settings['optimizer']!r}")


def default_bccd_path():
    """``$TFRCNN_BCCD`` or ``../shared/datasets/bccd`` from the project root."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.environ.get("TFRCNN_BCCD", os.path.join(root, "..", "shared", "datasets", "bccd"))


DATA_KINDS = ("synthetic", "voc", "bccd", "coco", "tfrecord")


def load_data(settings, model_args=None):
    """Training and validation records plus class names for the run's ``data`` setting.

    - ``"synthetic"``: the built-in shapes (``num_train``, ``num_val``);
    - ``"voc"``: ``data_path`` a Pascal VOC folder, ``train_split`` / ``val_split``;
    - ``"bccd"``: the shared BCCD dataset (VOC layout; ``data_path`` overrides where it is);
    - ``"coco"``: ``data_path`` a COCO instances JSON, ``image_dir`` its images;
    - ``"tfrecord"``: ``data_path`` a TFRecord file pattern (what ``tfrcnn convert`` writes).

    For COCO and TFRecords the validation set is ``val_data_path`` (with ``val_image_dir`` for
    COCO, default ``image_dir``); without it a seeded ``val_fraction`` of the training file is
    held out.
    """
    from tfrcnn.data.sources import read_source

    kind = settings["data"]
    if kind == "synthetic":
        train, val = synthetic_splits(
            num_train=int(settings["num_train"]),
            num_val=int(settings["num_val"]),
            seed=int(settings["seed"]),
        )
        return train, val, list(SYNTHETIC_CLASS_NAMES)
    if kind in ("voc", "bccd"):
        path = settings.get("data_path") or (default_bccd_path() if kind == "bccd" else None)
        if not path:
            raise ValueError("data='voc' needs data_path, the folder holding Annotations/")
        train, names, report = read_source("voc", path, split=settings["train_split"])
        log.info("train split: %s", report.summary())
        val, _, report = read_source("voc", path, split=settings["val_split"], class_names=names)
        log.info("validation split: %s", report.summary())
        return train, val, list(names)
    if kind in ("coco", "tfrecord"):
        path = settings.get("data_path")
        if not path:
            raise ValueError(
                f"data='{kind}' needs data_path: "
                + ("the COCO instances JSON" if kind == "coco" else "a TFRecord file pattern")
            )
        train, names, report = read_source(kind, path, image_dir=settings.get("image_dir"))
        log.info("training data %s: %s", path, report.summary())
        val_path = settings.get("val_data_path")
        if val_path:
            val, _, report = read_source(
                kind,
                val_path,
                class_names=names,
                image_dir=settings.get("val_image_dir") or settings.get("image_dir"),
            )
            log.info("validation data %s: %s", val_path, report.summary())
        else:
            train, val = hold_out(train, float(settings["val_fraction"]), int(settings["seed"]))
            log.info(
                "no val_data_path: %d of the %d images of %s held out for validation",
                len(val),
                len(train) + len(val),
                path,
            )
        return train, val, list(names)
    raise ValueError(f"unknown data {kind!r}: use {', '.join(DATA_KINDS)}")


def hold_out(records, fraction, seed):
    """``(train, val)``: a seeded random ``fraction`` of ``records`` (at least one) held out, both
    parts in their original order."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {fraction}")
    if len(records) < 2:
        raise ValueError(
            f"{len(records)} image(s): too few to hold out a validation set; give val_data_path"
        )
    count = min(max(int(round(len(records) * fraction)), 1), len(records) - 1)
    chosen = set(np.random.default_rng(seed).permutation(len(records))[:count].tolist())
    return (
        [r for i, r in enumerate(records) if i not in chosen],
        [r for i, r in enumerate(records) if i in chosen],
    )


def model_setting_names():
    """The names ``model.<name>`` accepts: the keyword arguments of ``FasterRCNN``."""
    import inspect

    params = inspect.signature(FasterRCNN.__init__).parameters
    return sorted(
        k
        for k, p in params.items()
        if k not in ("self", "num_classes", "class_names", "preset")
        and p.kind is not inspect.Parameter.VAR_KEYWORD
    )


def _suggest(name, known):
    import difflib

    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(known))}"


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
            raise ValueError(
                f"unknown run setting {key!r}; {_suggest(key, list(settings))} "
                "(model settings go under 'model.<name>')"
            )
    if not isinstance(settings["model"], dict):
        raise ValueError(f"the model settings must be a mapping, got {settings['model']!r}")
    known = model_setting_names()
    for key in settings["model"]:
        if key not in known:
            raise ValueError(f"unknown model setting {key!r}; {_suggest(key, known)}")
    presets.apply_init_defaults(settings, set(overrides or {}))
    if settings["init"] is not None and not isinstance(settings["init"], str):
        raise ValueError(
            f"init must be a model file or torchvision:<name>, got {settings['init']!r}"
        )
    if not settings["init"] and settings["preset"] not in presets.PRESETS:
        raise ValueError(
            f"unknown preset {settings['preset']!r}; "
            f"{_suggest(str(settings['preset']), list(presets.PRESETS))}"
        )
    if settings["data"] not in DATA_KINDS:
        raise ValueError(f"unknown data {settings['data']!r}; use {', '.join(DATA_KINDS)}")
    resolve_precision(settings["precision"])  # a clear error for an unknown name
    return settings


def _datasets(model, train, val, settings):
    side = (model.image_max_side, model.image_max_side)
    pad = tuple(int(np.ceil(s / model.size_divisor) * model.size_divisor) for s in side)
    common = dict(
        min_side=model.image_min_side,
        max_side=model.image_max_side,
        pad_to=pad,
        size_divisor=model.size_divisor,
    )
    train_ds = make_dataset(
        train,
        batch_size=int(settings["batch_size"]),
        training=True,
        seed=int(settings["seed"]),
        augment=settings.get("augment") or None,
        **common,
    ).repeat()
    val_ds = make_dataset(val, batch_size=int(settings["batch_size"]), training=False, **common)
    return train_ds, val_ds


RUN_STATE_MEMBER = "tfrcnn_run_state.json"
"""The member of ``checkpoints/last.keras`` (a zip) holding ``epochs_done`` and the history rows."""


def save_model_atomic(model, path, run_state=None):
    """``model.save`` into a hidden temporary sibling, ``run_state`` (a JSON-able dict) added as the
    zip member :data:`RUN_STATE_MEMBER`, then one ``os.replace``: ``path`` is the previous complete
    file or the new complete one, whenever the process dies."""
    with atomic_file(path) as tmp:
        keras_tmp = tmp + ".keras"  # Keras wants the extension
        try:
            model.save(keras_tmp)
            if run_state is not None:
                with zipfile.ZipFile(keras_tmp, "a") as archive:
                    archive.writestr(RUN_STATE_MEMBER, json.dumps(run_state))
            os.replace(keras_tmp, tmp)
        finally:
            if os.path.exists(keras_tmp):
                os.remove(keras_tmp)


def read_run_state(path):
    """The :data:`RUN_STATE_MEMBER` dict of a checkpoint written by :class:`RunCheckpoint`, or
    ``None`` (no file, or a ``.keras`` file without it)."""
    if not os.path.exists(path):
        return None
    with zipfile.ZipFile(path) as archive:
        if RUN_STATE_MEMBER not in archive.namelist():
            return None
        return json.loads(archive.read(RUN_STATE_MEMBER))


def remove_partial_files(run_dir):
    """Delete the hidden temporary files an interrupted write leaves in ``run_dir`` and
    ``run_dir/checkpoints`` (``.NAME.tmp-*``, ``.NAME.old-*``); returns their names."""
    removed = []
    for folder in (run_dir, os.path.join(run_dir, "checkpoints")):
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            if name.startswith(".") and (TMP_TAG in name or OLD_TAG in name):
                path = os.path.join(folder, name)
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.remove(path)
                removed.append(name)
    return removed


def write_history_csv(path, rows):
    """``rows`` (one dict of logged values an epoch) as ``history.csv`` (an ``epoch`` column, then
    the sorted keys; ``NA`` where an epoch did not log a key), written atomically."""
    keys = sorted({k for row in rows for k in row})
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch"] + keys)
        for epoch, row in enumerate(rows):
            writer.writerow([epoch] + [row.get(k, "NA") for k in keys])


class RunCheckpoint(keras.callbacks.Callback):
    """After every epoch: ``checkpoints/last.keras`` (the model, its optimizer state, and as the zip
    member :data:`RUN_STATE_MEMBER` the number of finished epochs with the logged values of every
    epoch), then ``history.csv`` and ``checkpoints/state.json`` (``{"epochs_done": N}``) from the
    same data. Each file is written to a hidden temporary sibling and moved into place; the
    checkpoint is the commit point, so a process killed at any moment leaves a complete checkpoint
    whose history matches its weights, and ``--resume`` rewrites the other two from it.

    Args:
        run_dir: the run folder.
        rows: the history rows of the epochs already done (when resuming).
    """

    def __init__(self, run_dir, rows=()):
        super().__init__()
        self.run_dir = run_dir
        self.folder = os.path.join(run_dir, "checkpoints")
        self.rows = [dict(r) for r in rows]

    def on_epoch_end(self, epoch, logs=None):
        os.makedirs(self.folder, exist_ok=True)
        row = {}
        for key, value in (logs or {}).items():
            try:
                row[key] = float(value)
            except (TypeError, ValueError):
                continue
        self.rows = self.rows[:epoch] + [row]
        state = {"epochs_done": epoch + 1, "history": self.rows}
        save_model_atomic(self.model, os.path.join(self.folder, "last.keras"), state)
        write_history_csv(os.path.join(self.run_dir, "history.csv"), self.rows)
        _write_json(os.path.join(self.folder, "state.json"), {"epochs_done": epoch + 1})


def _read_csv_history(path):
    history = {}
    if not os.path.exists(path):
        return history
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

    With ``init`` in ``overrides`` (a ``.keras`` model or ``"torchvision:<published name>"``) the
    model starts from that trained model's weights for the data's classes (fine-tuning, see
    :func:`tfrcnn.config.apply_init_defaults` for its optimizer).

    With ``resume=True`` the run's saved configuration is used (``overrides`` may only raise
    ``epochs``), the model and optimizer state come from ``checkpoints/last.keras`` and training
    continues at the epoch after the last finished one.

    Example:
        >>> metrics = train("runs/demo")           # the tiny preset on the synthetic shapes
        >>> metrics["mAP"]
    """
    initial_epoch = 0
    resumed_rows = None
    has_checkpoint = False
    checkpoints = os.path.join(run_dir, "checkpoints")
    remove_partial_files(run_dir)  # hidden temporaries of writes a killed process never finished
    if resume:
        config_path = os.path.join(run_dir, "config.json")
        state_path = os.path.join(checkpoints, "state.json")
        saved = json.load(open(config_path))["run"] if os.path.exists(config_path) else None
        # multi_worker runs keep tf.train checkpoints numbered by optimizer step (no state.json)
        multi_worker = saved is not None and saved.get("strategy") == "multi_worker"
        step = latest_checkpoint(checkpoints)[1] if multi_worker else 0
        last = os.path.join(checkpoints, "last.keras")
        if saved is None:
            raise ValueError(f"nothing to resume in {run_dir}: no config.json, so not a run folder")
        has_checkpoint = bool(step) if multi_worker else os.path.exists(last)
        extra = dict(overrides or {})
        changed = sorted(presets.changed_settings(saved, extra) - {"epochs"})
        if changed:
            raise ValueError(
                "--resume continues the saved configuration; only epochs may change "
                f"(got a different {', '.join(changed)}); drop those flags or start a new run"
            )
        saved.update(extra)
        settings = resolve_settings(saved)
        if not has_checkpoint:
            # stopped before its first checkpoint: the run starts again with its configuration
            log.info("no checkpoint in %s yet: the run starts from its first epoch", run_dir)
        elif multi_worker:
            initial_epoch = step // int(settings["steps_per_epoch"])
        else:
            # the checkpoint holds its own epoch count and history (state.json may lag behind it)
            run_state = read_run_state(last)
            if run_state is None:  # a checkpoint written without its run state
                with open(state_path) as f:
                    run_state = {"epochs_done": int(json.load(f)["epochs_done"]), "history": None}
            initial_epoch = int(run_state["epochs_done"])
            resumed_rows = run_state["history"]
    else:
        settings = resolve_settings(overrides)
    strategy = make_strategy(settings["strategy"])
    multi_worker = settings["strategy"] == "multi_worker"
    chief = is_chief(strategy)
    keras.utils.set_random_seed(int(settings["seed"]) + initial_epoch)
    train_records, val_records, class_names = load_data(settings, settings["model"])
    check_cpu_allocator(log)
    # "auto" is resolved once and recorded, so a resumed run keeps the policy it started with.
    settings["precision"] = resolve_precision(settings["precision"])
    with strategy.scope(), precision_scope(settings["precision"]):
        if resume and has_checkpoint and not multi_worker:
            model = keras.models.load_model(os.path.join(checkpoints, "last.keras"))
        elif settings["init"]:
            # every weight of the trained model but the class outputs (fine-tuning)
            model = FasterRCNN.from_pretrained(
                settings["init"],
                num_classes=len(class_names),
                class_names=class_names,
                **settings["model"],
            )
        else:
            model = FasterRCNN.from_preset(
                settings["preset"],
                num_classes=len(class_names),
                class_names=class_names,
                **settings["model"],
            )
    # The folder is made once the settings, the data and the model are known to be good: a
    # mistake in any of them leaves nothing behind.
    if chief:
        os.makedirs(checkpoints, exist_ok=True)
    if not resume and chief:
        _write_json(
            os.path.join(run_dir, "config.json"),
            {"run": settings, "model": model.get_config()},
            indent=2,
            default=list,
        )
    train_ds, val_ds = _datasets(model, train_records, val_records, settings)
    epochs, steps = int(settings["epochs"]), int(settings["steps_per_epoch"])
    map_callback = MeanAveragePrecisionCallback(
        val_ds,
        len(class_names),
        class_names=class_names,
        every=int(settings["eval_every"]),
        verbose=verbose,
    )
    callbacks = [
        NaNGuard(),
        map_callback,
        BestCheckpoint(os.path.join(checkpoints, "best.keras")),
        DetectionImagesCallback(
            val_ds,
            os.path.join(run_dir, "logs", "images"),
            class_names=class_names,
            every=int(settings["eval_every"]),
        ),
        RunCheckpoint(
            run_dir,
            rows=[] if multi_worker else _resumed_history(run_dir, resumed_rows, initial_epoch),
        ),
        keras.callbacks.TensorBoard(os.path.join(run_dir, "logs"), write_graph=False),
    ] + list(extra_callbacks)
    start = time.time()
    if model.training_scheme == "alternating":
        quarter = max(epochs // 4, 1)
        model.compile(optimizer=_optimizer(settings, quarter * steps))
        results = train_alternating(
            model,
            train_ds,
            epochs_per_stage=(quarter,) * 4,
            steps_per_epoch=steps,
            callbacks=callbacks,
            verbose=verbose,
            optimizer_factory=lambda: _optimizer(settings, quarter * steps),
        )
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
        per_step = distributed_fit(
            model,
            train_ds,
            strategy,
            steps=max(epochs * steps - done, 0),
            checkpoint_dir=checkpoints,
            checkpoint_every=steps,
        )
        history = {k: [float(v) for v in vals] for k, vals in per_step.items()}
        previous = os.path.join(run_dir, "history.json")
        if resume and os.path.exists(previous):  # the steps before the checkpoint stay recorded
            with open(previous) as f:
                earlier = json.load(f)
            history = {k: list(earlier.get(k, []))[:done] + v for k, v in history.items()}
    else:
        if not has_checkpoint:  # a checkpoint brings its compiled optimizer and its state
            with strategy.scope():
                model.compile(optimizer=_optimizer(settings, epochs * steps))
        model.fit(
            train_ds,
            epochs=epochs,
            steps_per_epoch=steps,
            callbacks=callbacks,
            verbose=verbose,
            initial_epoch=initial_epoch,
        )
        history = _read_csv_history(os.path.join(run_dir, "history.csv"))
    train_seconds = time.time() - start
    result = evaluate_model(model, val_ds, len(class_names), class_names=class_names)
    metrics = {
        "mAP": float(result["mAP"]),
        "per_class_ap": {k: float(v) for k, v in result["per_class"].items()},
        "train_seconds": train_seconds,
        "seconds_per_image": float(result.get("seconds_per_image", float("nan"))),
        "epochs": epochs,
        "steps_per_epoch": steps,
    }
    if chief:
        save_model_atomic(model, os.path.join(run_dir, "model.keras"))
        _write_json(
            os.path.join(run_dir, "history.json"),
            {k: [float(x) for x in v] for k, v in history.items()},
            indent=2,
        )
        _write_json(os.path.join(run_dir, "metrics.json"), metrics, indent=2)
    return metrics


def _resumed_history(run_dir, rows, epochs_done):
    """The history rows of the first ``epochs_done`` epochs: from the checkpoint (``rows``), or
    from ``history.csv`` for a checkpoint without them; ``history.csv`` is rewritten to match."""
    if not epochs_done:
        return []
    if rows is None:
        path = os.path.join(run_dir, "history.csv")
        rows = []
        if os.path.exists(path):
            with open(path) as f:
                for record in csv.DictReader(f):
                    rows.append(
                        {
                            k: float(v)
                            for k, v in record.items()
                            if k != "epoch" and v not in (None, "", "NA")
                        }
                    )
    rows = rows[:epochs_done]
    write_history_csv(os.path.join(run_dir, "history.csv"), rows)
    return rows


def _write_json(path, value, **kwargs):
    """``json.dump`` into a temporary sibling moved into place: a reader never sees half a file."""
    with atomic_file(path) as tmp, open(tmp, "w") as f:
        json.dump(value, f, **kwargs)
