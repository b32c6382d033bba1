"""Training under ``tf.distribute``: strategies, a distributed loop, chief-only checkpoints.

One machine, several GPUs (or logical CPUs), with Keras ``fit`` (TensorFlow backend)::

    from tfrcnn.training.distributed import make_strategy, ChiefCheckpoint, resume

    strategy = make_strategy("mirrored")          # first thing the program does (see below)
    with strategy.scope():                        # variables are created as mirrored variables
        model = FasterRCNN(num_classes=3)
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    start = resume(model, "ckpts")                # finished epochs; 0 when there is no checkpoint
    model.fit(dataset.batch(GLOBAL_BATCH), epochs=10, initial_epoch=start,
              callbacks=[ChiefCheckpoint("ckpts")])

Several machines (``"multi_worker"``): Keras 3.15's ``fit`` stops before the first step under
``MultiWorkerMirroredStrategy`` when the inputs are a dict, as ours are (it averages a sample batch
with ``strategy.reduce``, which that strategy accepts only for single tensors; keras-team/keras
issue #20329), so train with :func:`distributed_fit`, the same step on the strategy's own API::

    strategy = make_strategy("multi_worker")      # reads TF_CONFIG; at program start
    with strategy.scope():
        model = FasterRCNN(num_classes=3)
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    resume(model, "ckpts")                        # continues from the optimizer step saved
    history = distributed_fit(model, dataset.batch(GLOBAL_BATCH).repeat(), strategy, steps=1000,
                              checkpoint_dir="ckpts", checkpoint_every=100)

Batch the dataset with the *global* batch size (replicas x images a replica); the strategy splits
every batch across the replicas. Each replica computes the loss of its share and
``FasterRCNN.compute_loss`` divides it by the number of replicas; the optimizer sums the gradients
across replicas, so one step is one step on the global batch on one device. It is exactly that when
every replica's share has the same number of sampled anchors / ROIs (the loss normalisers), which
the default fixed-size sampling gives whenever an image has enough candidates. Two things stay per
replica, as in every data-parallel detector: BatchNormalization statistics in training mode (freeze
BN, or keep several images a replica) and the random anchor / ROI sampling. With several workers,
shard the data (``tf.data`` auto-sharding by file needs file-based sources such as TFRecords).

Device set-up has to happen before TensorFlow initialises its devices, that is before the first op
runs (creating a tensor, ``tf.config.list_logical_devices``, building a model):

- ``make_strategy("mirrored", num_cpu_devices=2)`` splits the CPU into 2 logical devices
  (testing data-parallel code on a laptop); too late, it raises ``RuntimeError`` saying so.
- ``make_strategy("multi_worker")`` reads ``TF_CONFIG`` and must likewise be called at start-up.

Checkpoints are ``tf.train.Checkpoint`` files (model and optimizer variables, ``ckpt-<n>``) written
by the chief only; every worker takes part in a save (reading synchronised variables is collective)
but the others write to a temporary folder that is deleted at once.
"""

import json
import logging
import math
import os
import re
import shutil
import tempfile

import keras
import tensorflow as tf

log = logging.getLogger("tfrcnn")

STRATEGY_NAMES = ("default", "mirrored", "multi_worker", "tpu")
CHECKPOINT_PREFIX = "ckpt"


# ------------------------------------------------------------------------------------------------
# strategies
def configure_cpu_devices(num_devices):
    """Split the physical CPU into ``num_devices`` logical CPU devices.

    Must run before TensorFlow initialises its devices (before the first op). Calling it again with
    the same number is harmless.

    Args:
        num_devices: int >= 1.

    Returns:
        The names of the logical CPU devices, e.g. ``["/device:CPU:0", "/device:CPU:1"]``.

    Raises:
        ValueError: ``num_devices`` < 1.
        RuntimeError: TensorFlow's devices are already initialised with another number of CPUs.
    """
    num_devices = int(num_devices)
    if num_devices < 1:
        raise ValueError(f"num_cpu_devices must be >= 1, got {num_devices}")
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)]
        )
    except RuntimeError as error:
        existing = tf.config.list_logical_devices("CPU")
        if len(existing) != num_devices:
            raise RuntimeError(
                f"cannot split the CPU into {num_devices} logical devices: TensorFlow has already "
                f"initialised its devices ({len(existing)} logical CPU device(s)). Call "
                "make_strategy('mirrored', num_cpu_devices=...) (or configure_cpu_devices) at the "
                "very start of the program, before any TensorFlow op, tensor or model is created; "
                f"TensorFlow said: {error}"
            ) from error
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def _parse_tf_config():
    """TF_CONFIG as a dict, checked for what MultiWorkerMirroredStrategy needs."""
    raw = os.environ.get("TF_CONFIG")
    example = (
        '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
        '"task": {"type": "worker", "index": 0}}'
    )
    if not raw:
        raise ValueError(
            "make_strategy('multi_worker') needs the TF_CONFIG environment variable "
            f"describing the cluster and this task, e.g. TF_CONFIG='{example}'"
        )
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"TF_CONFIG is not valid JSON ({error}): {raw!r}; expected e.g. {example}"
        ) from error
    if not isinstance(config, dict):
        raise ValueError(f"TF_CONFIG must be a JSON object, got {raw!r}; expected e.g. {example}")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise ValueError(
            f"TF_CONFIG needs a non-empty 'cluster' object mapping task types "
            f"('chief', 'worker') to lists of 'host:port'; got {raw!r}"
        )
    for task_type, addresses in cluster.items():
        if (
            not isinstance(addresses, list)
            or not addresses
            or not all(isinstance(a, str) and re.fullmatch(r".+:\d+", a) for a in addresses)
        ):
            raise ValueError(
                f"TF_CONFIG cluster[{task_type!r}] must be a non-empty list of "
                f"'host:port' strings; got {addresses!r}"
            )
    if "worker" not in cluster and "chief" not in cluster:
        raise ValueError(
            f"TF_CONFIG cluster needs 'worker' (and optionally one 'chief') tasks; "
            f"got task types {sorted(cluster)}"
        )
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ValueError(
            f"TF_CONFIG needs a 'task' object with 'type' and 'index' (this process's "
            f"place in the cluster); got {task!r}"
        )
    task_type, index = task["type"], task["index"]
    if task_type not in cluster:
        raise ValueError(
            f"TF_CONFIG task type {task_type!r} is not in the cluster "
            f"(task types {sorted(cluster)})"
        )
    count = len(cluster[task_type])
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count:
        raise ValueError(
            f"TF_CONFIG task index {index!r} is out of range for "
            f"{len(cluster[task_type])} {task_type!r} task(s)"
        )
    return config


def make_strategy(name="default", *, num_cpu_devices=None, tpu=None):
    """A ``tf.distribute.Strategy`` by name.

    Args:
        name: ``"default"`` (``tf.distribute.get_strategy()``: one device, or the strategy whose
            scope is open), ``"mirrored"`` (synchronous data parallelism on one machine: every GPU,
            or the logical CPU devices when there is no GPU), ``"multi_worker"``
            (``MultiWorkerMirroredStrategy``: several machines/processes described by the
            ``TF_CONFIG`` environment variable) or ``"tpu"`` (``TPUStrategy``).
        num_cpu_devices: ``"mirrored"`` without a GPU only: split the CPU into this many logical
            devices first (see :func:`configure_cpu_devices`; must be called before TensorFlow
            initialises its devices). Ignored when GPUs are present.
        tpu: ``"tpu"`` only: the TPU name or address for ``TPUClusterResolver`` (None: from the
            environment, e.g. a Cloud TPU VM).

    Returns:
        The strategy. Build and compile the model inside ``strategy.scope()``.

    Raises:
        ValueError: an unknown name, or TF_CONFIG missing / malformed for ``"multi_worker"``.
        RuntimeError: logical CPU devices requested too late, or no TPU found.

    Example:
        >>> strategy = make_strategy("mirrored", num_cpu_devices=2)   # at program start
        >>> strategy.num_replicas_in_sync
        2
    """
    if name not in STRATEGY_NAMES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {STRATEGY_NAMES}")
    if num_cpu_devices is not None and name != "mirrored":
        raise ValueError(f"num_cpu_devices applies to the 'mirrored' strategy only, not {name!r}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            if num_cpu_devices is not None:
                log.warning(
                    "num_cpu_devices=%s ignored: mirroring over %d GPU(s)",
                    num_cpu_devices,
                    len(gpus),
                )
            return tf.distribute.MirroredStrategy()
        if num_cpu_devices is not None:
            devices = configure_cpu_devices(num_cpu_devices)
        else:
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker":
        _parse_tf_config()
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as error:
            raise RuntimeError(
                "could not create MultiWorkerMirroredStrategy: it must be created at program "
                f"start, before any TensorFlow op runs; TensorFlow said: {error}"
            ) from error
    # tpu
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        raise RuntimeError(
            f"no TPU found (tpu={tpu!r}): make_strategy('tpu') needs a Cloud TPU VM or a TPU "
            "name/address; use 'mirrored' for GPUs/CPUs. TensorFlow said: "
            f"{type(error).__name__}: {error}"
        ) from error
    return tf.distribute.TPUStrategy(resolver)


# ------------------------------------------------------------------------------------------------
# a training loop on the strategy's API
def distributed_fit(
    model,
    dataset,
    strategy=None,
    steps=1,
    optimizer=None,
    *,
    checkpoint_dir=None,
    checkpoint_every=None,
    max_to_keep=3,
):
    """Train ``steps`` steps with ``strategy.run`` / ``strategy.reduce`` (no ``model.fit``).

    ``model.fit`` works under the default and ``MirroredStrategy``; under
    ``MultiWorkerMirroredStrategy`` Keras 3.15's ``fit`` fails before the first step with dict
    inputs (it averages a dict batch with ``strategy.reduce``, which that strategy only accepts for
    single tensors), so use this loop there. One step is exactly ``fit``'s step: each replica runs
    the training graph on its share of the global batch, ``model.compute_loss`` (divided by the
    number of replicas), and the optimizer sums the gradients across replicas.

    Every worker runs the same loop. It continues from the optimizer's step, so after
    :func:`resume` it picks up where the checkpoint left off.

    Args:
        model: a ``FasterRCNN`` (any Keras model whose ``compute_loss`` takes ``y_pred``) whose
            variables were created inside ``strategy.scope()``.
        dataset: a ``tf.data.Dataset`` of input dicts batched with the *global* batch size; it must
            yield at least ``steps`` more batches (use ``.repeat()``).
        strategy: default: the model's strategy.
        steps: int, the optimizer step to stop at is ``optimizer.iterations + steps``.
        optimizer: default: ``model.optimizer``; if the model is not compiled, it is compiled with
            this optimizer inside the strategy's scope.
        checkpoint_dir, checkpoint_every: when both are given, :func:`save_checkpoint` every
            ``checkpoint_every`` optimizer steps (numbered by the step; chief only) and at the end.
        max_to_keep: checkpoints kept.

    Returns:
        A dict of per-step lists: ``"loss"`` (the global-batch loss) and every loss term of the
        model's ``loss_trackers`` (e.g. ``"rpn_cls_loss"``), averaged over replicas.

    Example:
        >>> strategy = make_strategy("multi_worker")
        >>> with strategy.scope():
        ...     model = FasterRCNN(num_classes=3)
        ...     model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
        >>> resume(model, "ckpts")
        >>> history = distributed_fit(model, dataset.repeat(), strategy, steps=1000,
        ...                           checkpoint_dir="ckpts", checkpoint_every=100)
    """
    strategy = strategy or model.distribute_strategy
    if optimizer is not None and optimizer is not getattr(model, "optimizer", None):
        with strategy.scope():
            model.compile(optimizer=optimizer)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        raise ValueError(
            "distributed_fit needs an optimizer: pass optimizer=... or compile the "
            "model inside strategy.scope() first"
        )
    _build_optimizer(model)
    trackers = dict(getattr(model, "loss_trackers", {}))
    variables = model.trainable_variables

    def replica_step(data):
        with tf.GradientTape() as tape:
            y_pred = model(data, training=True)
            loss = model.compute_loss(x=data, y=None, y_pred=y_pred, training=True)
        gradients = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(gradients, variables))
        return loss

    @tf.function
    def train_step(iterator):
        per_replica = strategy.run(replica_step, args=(next(iterator),))
        # Each replica's loss is already divided by the number of replicas: the sum is the
        # global-batch loss.
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    history = {"loss": [], **{name: [] for name in trackers}}
    saving = checkpoint_dir is not None and checkpoint_every
    stop = int(optimizer.iterations.numpy()) + int(steps)
    step = int(optimizer.iterations.numpy())
    while step < stop:
        for tracker in trackers.values():
            tracker.reset_state()
        loss = train_step(iterator)
        step = int(optimizer.iterations.numpy())
        history["loss"].append(float(loss))
        for name, tracker in trackers.items():
            history[name].append(float(tracker.result()))
        if not math.isfinite(history["loss"][-1]):
            raise FloatingPointError(f"non-finite loss at step {step}: {history['loss'][-1]}")
        if saving and (step % int(checkpoint_every) == 0 or step == stop):
            save_checkpoint(model, checkpoint_dir, step, strategy=strategy, max_to_keep=max_to_keep)
    return history


# ------------------------------------------------------------------------------------------------
# chief-only checkpoints
def _task(strategy=None):
    """``(task_type, task_id, has_chief)`` of this process (``(None, None, False)`` if single)."""
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None) if resolver is not None else None
    if task_type is None:
        return None, None, False
    cluster = resolver.cluster_spec().as_dict() if resolver.cluster_spec() else {}
    return task_type, resolver.task_id, "chief" in cluster


def is_chief(strategy=None):
    """True on the process that writes checkpoints: a single process, the ``"chief"`` task, or
    worker 0 when the cluster has no chief task."""
    task_type, task_id, has_chief = _task(strategy)
    if task_type is None:
        return True
    if has_chief:
        return task_type == "chief"
    return task_type == "worker" and task_id == 0


def _checkpoint(model):
    objects = {"model": model}
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None:
        objects["optimizer"] = optimizer
    return tf.train.Checkpoint(**objects)


def _build_optimizer(model):
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built:
        with model.distribute_strategy.scope():
            optimizer.build(model.trainable_variables)


def save_checkpoint(model, directory, number, *, strategy=None, max_to_keep=3):
    """Save the model's (and its optimizer's) variables as ``directory/ckpt-<number>``, chief only.

    Every worker must call it (reading synchronised variables is a collective operation); the chief
    writes to ``directory``, the other workers to a temporary directory that is deleted at once.

    Args:
        model: a compiled or uncompiled Keras model (the optimizer is saved when compiled).
        directory: checkpoint folder (the same path on every worker; only the chief writes there).
        number: int, the checkpoint number (e.g. finished epochs or the optimizer step).
        strategy: default: the model's strategy.
        max_to_keep: the newest checkpoints kept in ``directory``.

    Returns:
        The path prefix written on the chief, else None.
    """
    strategy = strategy or model.distribute_strategy
    chief = is_chief(strategy)
    _build_optimizer(model)
    if chief:
        target = directory
    else:
        task_type, task_id, _ = _task(strategy)
        target = tempfile.mkdtemp(prefix=f"tfrcnn_ckpt_{task_type}_{task_id}_")
    try:
        manager = tf.train.CheckpointManager(
            _checkpoint(model), target, max_to_keep=max_to_keep, checkpoint_name=CHECKPOINT_PREFIX
        )
        path = manager.save(checkpoint_number=int(number))
    finally:
        if not chief:
            shutil.rmtree(target, ignore_errors=True)
    return path if chief else None


def latest_checkpoint(directory):
    """``(path, number)`` of the newest checkpoint in ``directory``, or ``(None, 0)``."""
    path = tf.train.latest_checkpoint(directory) if tf.io.gfile.isdir(directory) else None
    if path is None:
        return None, 0
    match = re.search(rf"{CHECKPOINT_PREFIX}-(\d+)$", path)
    return path, int(match.group(1)) if match else 0


def resume(model, directory):
    """Restore the newest checkpoint of ``directory`` into ``model`` (and its optimizer).

    Call it after ``compile`` (inside or after ``strategy.scope()``) and before training; every
    worker reads the chief's folder, so in a multi-machine cluster it must be shared storage.

    Returns:
        The checkpoint number (finished epochs for :class:`ChiefCheckpoint` with
        ``save_freq="epoch"``), to pass as ``fit(initial_epoch=...)``; 0 when there is none.
    """
    path, number = latest_checkpoint(directory)
    if path is None:
        return 0
    _build_optimizer(model)
    _checkpoint(model).restore(path).assert_existing_objects_matched()
    log.info("resumed from %s", path)
    return number


class ChiefCheckpoint(keras.callbacks.Callback):
    """Writes checkpoints during ``fit``, on the chief only (see :func:`save_checkpoint`).

    Args:
        directory: checkpoint folder; files are ``ckpt-<n>.index`` / ``.data-*``.
        save_freq: ``"epoch"`` (``n`` = finished epochs) or an int: every that many steps (``n`` =
            the optimizer step).
        max_to_keep: the newest checkpoints kept.

    Example:
        >>> model.fit(ds, epochs=5, initial_epoch=resume(model, "ckpts"),
        ...           callbacks=[ChiefCheckpoint("ckpts")])
    """

    def __init__(self, directory, save_freq="epoch", max_to_keep=3):
        super().__init__()
        if save_freq != "epoch" and (not isinstance(save_freq, int) or save_freq < 1):
            raise ValueError(f"save_freq must be 'epoch' or a positive int, got {save_freq!r}")
        self.directory = directory
        self.save_freq = save_freq
        self.max_to_keep = max_to_keep
        self.last_saved = None

    def _save(self, number):
        self.last_saved = save_checkpoint(
            self.model, self.directory, number, max_to_keep=self.max_to_keep
        )

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq != "epoch":
            step = int(self.model.optimizer.iterations.numpy())
            if step % self.save_freq == 0:
                self._save(step)

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save(epoch + 1)
