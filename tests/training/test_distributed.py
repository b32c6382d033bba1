"""tf.distribute training: strategies, Mirrored == single device, multi-worker chief checkpoints.

Strategies need their devices set up before TensorFlow initialises, so the two training scenarios
run in fresh interpreters (``distributed_worker.py`` next to this file), on loopback only, each
with a timeout and killed on failure.

Determinism: with ``rpn_batch_size_per_image`` >= the number of anchors (768 for 64x64 images),
``rcnn_batch_size_per_image`` >= proposals + ground truth and both positive fractions 1,
``balanced_sample`` takes every positive and negative candidate, so nothing is drawn at random
(only the order of the taken ROIs, which sums see only through float rounding). Every image holds
the same ground-truth boxes, so each replica's loss normalisers (sampled anchors / ROIs) equal the
global batch's, and BatchNorm layers are frozen (training-mode statistics would be per replica).
Then two replicas compute the same maths as one device, up to the order of float32 sums: observed
relative differences ~1e-7 over 3 SGD steps; we allow 1e-4.
"""

import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfrcnn.models  # noqa: F401  (registers the model's classes for keras.models.load_model)
from tfrcnn.training import distributed
from tfrcnn.training.distributed import (
    ChiefCheckpoint,
    configure_cpu_devices,
    is_chief,
    latest_checkpoint,
    make_strategy,
    resume,
    save_checkpoint,
)

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed_worker.py")
TIMEOUT = 240  # seconds a helper process may take before it is killed (they take ~15-30 s)
RTOL = 1e-4


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _run_all(commands, program=(WORKER,)):
    """Start every ``(args, env)`` as ``python *program *args`` at once; wait with a timeout; kill
    all on any failure. Returns their outputs."""
    procs = [
        subprocess.Popen(
            [sys.executable, *program, *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for args, env in commands
    ]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=TIMEOUT)[0].decode(errors="replace"))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, f"helper process failed ({proc.returncode}):\n{output[-4000:]}"
    return outputs


def _free_ports(count):
    sockets = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


# ------------------------------------------------------------------------------------------------
# training under strategies (subprocesses)
def test_mirrored_two_cpu_replicas_match_single_device(tmp_path):
    out = tmp_path / "mirrored.json"
    _run_all([(["mirrored", str(out)], _env())])
    result = json.loads(out.read_text())
    assert result["replicas"] == 2
    assert result["same_initial_weights"]
    single, mirrored = result["single"], result["mirrored"]
    assert (
        set(single)
        == set(mirrored)
        == {"loss", "rpn_cls_loss", "rpn_box_loss", "rcnn_cls_loss", "rcnn_box_loss"}
    )
    looped = result["distributed_fit"]
    for key in single:
        assert len(single[key]) == 3
        np.testing.assert_allclose(mirrored[key], single[key], rtol=RTOL, atol=1e-6, err_msg=key)
        np.testing.assert_allclose(looped[key], single[key], rtol=RTOL, atol=1e-6, err_msg=key)
    # The losses move, so the steps really updated the weights (identically).
    assert single["loss"][0] != single["loss"][1]
    np.testing.assert_allclose(result["mirrored_weights"], result["single_weights"], rtol=RTOL)


def test_multi_worker_chief_checkpoint_and_resume(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    shared = tmp_path / "ckpt"  # the chief's folder (shared storage in a real cluster)
    own = tmp_path / "ckpt_worker1"  # where worker 1 would write if it were not discarded
    tmp_dirs = [tmp_path / f"tmp{i}" for i in range(2)]
    for d in tmp_dirs:
        d.mkdir()

    def commands(run, dirs):
        return [
            (
                ["multi_worker", str(tmp_path / f"{run}{i}.json"), str(dirs[i]), "2"],
                _env(
                    TMPDIR=str(tmp_dirs[i]),
                    TF_CONFIG=json.dumps(
                        {"cluster": cluster, "task": {"type": "worker", "index": i}}
                    ),
                ),
            )
            for i in range(2)
        ]

    # Run 1: fresh start, two steps; each worker is given its own folder.
    _run_all(commands("first", [shared, own]))
    first = [json.loads((tmp_path / f"first{i}.json").read_text()) for i in range(2)]
    assert [r["chief"] for r in first] == [True, False]
    assert all(r["replicas"] == 2 and r["start"] == 0 and r["final_step"] == 2 for r in first)
    assert latest_checkpoint(str(shared))[1] == 2
    assert not own.exists() or not os.listdir(own)  # worker 1 wrote nothing where it was told
    assert all(not os.listdir(d) for d in tmp_dirs)  # its temporary checkpoint was deleted
    # The workers stay in sync: same losses, same weights.
    np.testing.assert_allclose(first[0]["history"]["loss"], first[1]["history"]["loss"], rtol=1e-6)
    assert all(np.isfinite(first[0]["history"]["loss"]))

    # Run 2: both resume from the chief's checkpoint and train two more steps.
    _run_all(commands("second", [shared, shared]))
    second = [json.loads((tmp_path / f"second{i}.json").read_text()) for i in range(2)]
    for result in second:
        assert result["start"] == 2 and result["restored_step"] == 2 and result["final_step"] == 4
        for restored, saved in zip(result["restored"], first[0]["final"]):
            np.testing.assert_array_equal(np.array(restored), np.array(saved))
        for final, restored in zip(result["final"], result["restored"]):
            assert not np.array_equal(np.array(final), np.array(restored))  # training continued
        assert all(np.isfinite(result["history"]["loss"]))
    assert latest_checkpoint(str(shared))[1] == 4
    assert all(not os.listdir(d) for d in tmp_dirs)


def _metrics_printed(output):
    """The metrics dict ``tfrcnn train`` prints (the JSON block before the final mAP line)."""
    start = output.rindex("\n{") + 1
    return json.loads(output[start : output.index("\n}", start) + 2])


def test_cli_multi_worker_run_folder_by_the_chief_and_resume(tmp_path):
    """``tfrcnn train --strategy multi_worker`` on two local workers: the chief alone writes the
    run folder (never half a file), the workers agree, and ``--resume`` continues at the chief's
    last optimizer step on both."""
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    shared, own = tmp_path / "run", tmp_path / "run_worker1"
    tmp_dirs = [tmp_path / f"tmp{i}" for i in range(2)]
    for d in tmp_dirs:
        d.mkdir()
    quick = [
        "--set",
        "num_train=8",
        "--set",
        "num_val=4",
        "--steps-per-epoch",
        "2",
        "--batch-size",
        "2",
        "--verbose",
        "0",
    ]

    def commands(per_worker_args):
        return [
            (
                ["train", "--strategy", "multi_worker", *per_worker_args[i], *quick],
                _env(
                    TMPDIR=str(tmp_dirs[i]),
                    TF_CONFIG=json.dumps(
                        {"cluster": cluster, "task": {"type": "worker", "index": i}}
                    ),
                ),
            )
            for i in range(2)
        ]

    # Run 1: one epoch of two steps; worker 1 is pointed at a folder of its own, which must stay
    # empty (in a real cluster both name the same shared folder).
    outputs = _run_all(
        commands(
            [["--run-dir", str(shared), "--epochs", "1"], ["--run-dir", str(own), "--epochs", "1"]]
        ),
        program=("-m", "tfrcnn.cli"),
    )
    assert not own.exists() or not any(own.rglob("*"))
    assert all(not os.listdir(d) for d in tmp_dirs)
    written = sorted(p.name for p in shared.iterdir())
    assert written == ["checkpoints", "config.json", "history.json", "metrics.json", "model.keras"]
    assert json.loads((shared / "config.json").read_text())["run"]["strategy"] == "multi_worker"
    assert latest_checkpoint(str(shared / "checkpoints"))[1] == 2
    history = json.loads((shared / "history.json").read_text())
    assert len(history["loss"]) == 2 and all(np.isfinite(history["loss"]))
    printed = [_metrics_printed(o) for o in outputs]
    assert printed[0] == json.loads((shared / "metrics.json").read_text())
    # Both workers hold the same weights, so their evaluations agree.
    assert printed[0]["mAP"] == printed[1]["mAP"]
    first_model = keras.models.load_model(str(shared / "model.keras"))

    # Run 2: both resume from the shared folder and train a second epoch (steps 3 and 4).
    outputs = _run_all(
        commands([["--resume", str(shared), "--epochs", "2"]] * 2), program=("-m", "tfrcnn.cli")
    )
    assert all("resuming at optimizer step 2 of 4" in o for o in outputs), outputs[0][-3000:]
    assert latest_checkpoint(str(shared / "checkpoints"))[1] == 4
    resumed = json.loads((shared / "history.json").read_text())
    # The first run's steps are kept and the two new ones follow.
    assert resumed["loss"][:2] == history["loss"] and len(resumed["loss"]) == 4
    assert all(np.isfinite(resumed["loss"]))
    assert json.loads((shared / "metrics.json").read_text())["epochs"] == 2
    second_model = keras.models.load_model(str(shared / "model.keras"))
    changed = [
        not np.array_equal(a, b)
        for a, b in zip(first_model.get_weights(), second_model.get_weights())
    ]
    assert any(changed)
    assert all(not os.listdir(d) for d in tmp_dirs)


def test_resume_of_a_folder_that_is_not_a_run_is_a_clear_error(tmp_path):
    from tfrcnn.training.run import train

    with pytest.raises(ValueError, match="nothing to resume .* no config.json"):
        train(str(tmp_path), resume=True)


# ------------------------------------------------------------------------------------------------
# make_strategy (in process)
def test_default_strategy():
    assert make_strategy() is tf.distribute.get_strategy()
    assert make_strategy("default").num_replicas_in_sync == 1


def test_bad_names_and_arguments():
    with pytest.raises(ValueError, match="unknown strategy 'gpu'"):
        make_strategy("gpu")
    with pytest.raises(ValueError, match="num_cpu_devices applies to the 'mirrored'"):
        make_strategy("default", num_cpu_devices=2)
    with pytest.raises(ValueError, match="must be >= 1"):
        configure_cpu_devices(0)


def test_logical_cpus_too_late_is_a_clear_error():
    tf.constant(1.0)  # TensorFlow's devices are initialised from here on
    current = len(tf.config.list_logical_devices("CPU"))
    with pytest.raises(RuntimeError, match="already initialised.*at the very start"):
        make_strategy("mirrored", num_cpu_devices=current + 1)
    # Asking for what is already there is fine.
    assert len(configure_cpu_devices(current)) == current


@pytest.mark.parametrize(
    "value, message",
    [
        (None, "needs the TF_CONFIG environment variable"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"task": {"type": "worker", "index": 0}}', "non-empty 'cluster'"),
        (
            '{"cluster": {"worker": ["127.0.0.1"]}, "task": {"type": "worker", "index": 0}}',
            "'host:port'",
        ),
        (
            '{"cluster": {"ps": ["127.0.0.1:1"]}, "task": {"type": "ps", "index": 0}}',
            "needs 'worker'",
        ),
        ('{"cluster": {"worker": ["127.0.0.1:1"]}}', "'task' object"),
        (
            '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "chief", "index": 0}}',
            "not in the cluster",
        ),
        (
            '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 1}}',
            "out of range",
        ),
    ],
)
def test_multi_worker_needs_a_valid_tf_config(monkeypatch, value, message):
    if value is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", value)
    with pytest.raises(ValueError, match=message):
        make_strategy("multi_worker")


def test_tpu_missing_is_a_clear_error():
    with pytest.raises(RuntimeError, match="no TPU found"):
        make_strategy("tpu", tpu="local")


# ------------------------------------------------------------------------------------------------
# chief selection and checkpoints (in process, with a stand-in cluster resolver)
class _Resolver:
    def __init__(self, task_type, task_id, cluster):
        self.task_type, self.task_id, self._cluster = task_type, task_id, cluster

    def cluster_spec(self):
        return tf.train.ClusterSpec(self._cluster)


class _Strategy:
    def __init__(self, task_type, task_id, cluster):
        self.cluster_resolver = _Resolver(task_type, task_id, cluster)


WORKERS = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
WITH_CHIEF = {"chief": ["127.0.0.1:3"], **WORKERS}


def test_is_chief():
    assert is_chief()  # a single process
    assert is_chief(_Strategy("worker", 0, WORKERS))
    assert not is_chief(_Strategy("worker", 1, WORKERS))
    assert is_chief(_Strategy("chief", 0, WITH_CHIEF))
    assert not is_chief(_Strategy("worker", 0, WITH_CHIEF))


def _small_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def test_non_chief_writes_only_a_deleted_temp_dir(tmp_path, monkeypatch):
    made = []
    real_mkdtemp = distributed.tempfile.mkdtemp

    def mkdtemp(**kwargs):
        made.append(real_mkdtemp(dir=str(tmp_path), **kwargs))
        return made[-1]

    monkeypatch.setattr(distributed.tempfile, "mkdtemp", mkdtemp)
    model = _small_model()
    target = tmp_path / "ckpt"
    assert save_checkpoint(model, str(target), 5, strategy=_Strategy("worker", 1, WORKERS)) is None
    assert not target.exists()
    assert len(made) == 1 and not os.path.exists(made[0])
    path = save_checkpoint(model, str(target), 5, strategy=_Strategy("worker", 0, WORKERS))
    assert path.endswith("ckpt-5") and latest_checkpoint(str(target)) == (path, 5)


def test_resume_restores_weights_and_optimizer_step(tmp_path):
    model = _small_model()
    x, y = np.ones((4, 3), "float32"), np.zeros((4, 2), "float32")
    assert resume(model, str(tmp_path / "none")) == 0
    model.fit(x, y, epochs=2, verbose=0, callbacks=[ChiefCheckpoint(str(tmp_path))])
    saved = [v.numpy() for v in model.weights]
    other = _small_model()
    assert resume(other, str(tmp_path)) == 2
    for a, b in zip(other.weights, saved):
        np.testing.assert_array_equal(a.numpy(), b)
    assert int(other.optimizer.iterations.numpy()) == 2
    with pytest.raises(ValueError, match="save_freq"):
        ChiefCheckpoint(str(tmp_path), save_freq=0)
