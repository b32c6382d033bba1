"""Helper process for tests/training/test_distributed.py (not a test module).

Devices and strategies must be set up before TensorFlow initialises, so each scenario runs in a
fresh interpreter:

    python distributed_worker.py mirrored OUT.json
        default-strategy training and MirroredStrategy training over 2 logical CPUs, same data,
        same initial weights; writes the per-step losses and the final weights' checksums.
    python distributed_worker.py multi_worker OUT.json CKPT_DIR STEPS
        one MultiWorkerMirroredStrategy worker (TF_CONFIG from the environment): resumes from
        CKPT_DIR if it holds a checkpoint, trains STEPS steps with ChiefCheckpoint, and reports.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfrcnn.training.distributed import make_strategy  # noqa: E402  (TF not initialised yet)

MODE = sys.argv[1]
if MODE == "mirrored":
    STRATEGY = make_strategy("mirrored", num_cpu_devices=2)
else:
    STRATEGY = make_strategy("multi_worker")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfrcnn.models.faster_rcnn import FasterRCNN  # noqa: E402
from tfrcnn.training.distributed import distributed_fit, is_chief, resume  # noqa: E402

SIZE = 64
GLOBAL_BATCH = 4
# Every image holds the same two boxes (different pixels), so every image has the same number of
# non-ignored anchors and, with take-everything sampling, the same number of sampled ROIs: the
# per-replica loss normalisers then equal the global one and the two trainings are the same maths.
GT_BOXES = np.array([[8.0, 8.0, 40.0, 40.0], [20.0, 30.0, 60.0, 62.0]], "float32")
GT_CLASSES = np.array([0, 2], "int32")


def make_data(seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 60, (GLOBAL_BATCH, SIZE, SIZE, 3)).astype("float32")
    for i in range(GLOBAL_BATCH):
        for (y1, x1, y2, x2), value in zip(GT_BOXES.astype(int), (200 - 20 * i, 120 + 30 * i)):
            images[i, y1:y2, x1:x2, i % 3] = value
    return {
        "images": images,
        "image_shape": np.full((GLOBAL_BATCH, 2), SIZE, "int32"),
        "gt_boxes": np.broadcast_to(GT_BOXES, (GLOBAL_BATCH, 2, 4)).copy(),
        "gt_classes": np.broadcast_to(GT_CLASSES, (GLOBAL_BATCH, 2)).copy(),
    }


def dataset():
    # The same global batch at every step.
    return tf.data.Dataset.from_tensors(make_data()).repeat()


def build_model():
    keras.utils.set_random_seed(0)
    # 8x8 locations x 12 anchors = 768 anchors: rpn_batch_size_per_image >= 768 with positive
    # fraction 1 takes every positive and negative anchor, and 64 >= 16 proposals + 2 gt with
    # fraction 1 takes every ROI, so balanced_sample draws nothing at random (only the order of
    # the taken ROIs is random, which a sum does not see beyond float rounding).
    model = FasterRCNN(
        num_classes=3,
        rpn_batch_size_per_image=1024,
        rpn_positive_fraction=1.0,
        rcnn_batch_size_per_image=64,
        rcnn_positive_fraction=1.0,
        train_post_nms_top_n=16,
    )
    # BatchNorm statistics are per replica in training mode; freeze them (inference mode) so that
    # the replicas compute what one device computes on the global batch. Convs still train.
    for layer in model.backbone_model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    return model


def weight_summary(model):
    return [float(np.sum(np.abs(v.numpy().astype("float64")))) for v in model.trainable_variables]


def train(model, steps, **kwargs):
    # One step an epoch, so the logged losses are per step (Keras averages over an epoch).
    history = model.fit(dataset(), epochs=steps, steps_per_epoch=1, verbose=0, **kwargs)
    return {k: [float(x) for x in v] for k, v in history.history.items()}


def run_mirrored(out):
    steps = 3
    single = build_model()
    initial = weight_summary(single)
    single_losses = train(single, steps)
    with STRATEGY.scope():
        mirrored = build_model()
    same_initial = weight_summary(mirrored) == initial
    mirrored_losses = train(mirrored, steps)
    # The same under the custom loop on the strategy's API.
    with STRATEGY.scope():
        looped = build_model()
    loop_losses = distributed_fit(looped, dataset(), STRATEGY, steps)
    result = {
        "replicas": STRATEGY.num_replicas_in_sync,
        "same_initial_weights": same_initial,
        "single": single_losses,
        "mirrored": mirrored_losses,
        "distributed_fit": loop_losses,
        "single_weights": weight_summary(single),
        "mirrored_weights": weight_summary(mirrored),
    }
    with open(out, "w") as f:
        json.dump(result, f)


def run_multi_worker(out, ckpt_dir, steps):
    with STRATEGY.scope():
        model = build_model()
    start = resume(model, ckpt_dir)
    restored = [v.numpy().tolist() for v in model.trainable_variables[-2:]]
    restored_step = int(model.optimizer.iterations.numpy())
    # Both workers read the same in-memory data; auto-sharding by file needs a file-based source.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    history = distributed_fit(
        model,
        dataset().with_options(options),
        STRATEGY,
        steps,
        checkpoint_dir=ckpt_dir,
        checkpoint_every=steps,
        max_to_keep=5,
    )
    result = {
        "chief": is_chief(STRATEGY),
        "replicas": STRATEGY.num_replicas_in_sync,
        "start": start,
        "restored_step": restored_step,
        "restored": restored,
        "final": [v.numpy().tolist() for v in model.trainable_variables[-2:]],
        "final_step": int(model.optimizer.iterations.numpy()),
        "history": history,
    }
    with open(out, "w") as f:
        json.dump(result, f)


if MODE == "mirrored":
    run_mirrored(sys.argv[2])
else:
    run_multi_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
