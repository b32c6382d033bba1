"""The cost of the model's input checks (``FasterRCNN(input_checks=True)``, the default) on a
training step: the checks alone, and ``train_on_batch`` with the checks on and off, same model.

    python benchmarks/input_checks_cost.py --preset resnet50_fpn --size 800 --batch 2
    python benchmarks/input_checks_cost.py --checks-only     # the checks alone, no training

Prints one JSON line: the median milliseconds of the checks alone (one compiled call of
``model.input_checker`` on the batch), of a training step with them and without them, and the
checks' share of a step (checks alone / step without checks); also the time of NaNGuard's
check of every variable (it runs twice a step: before and after).
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(1, os.path.dirname(os.path.abspath(__file__)))


def _batch(batch, size, boxes, num_classes, seed=0):
    rng = np.random.default_rng(seed)
    y1 = rng.uniform(0, size * 0.7, (batch, boxes))
    x1 = rng.uniform(0, size * 0.7, (batch, boxes))
    h = rng.uniform(16, size * 0.3, (batch, boxes))
    w = rng.uniform(16, size * 0.3, (batch, boxes))
    return {
        "images": rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32),
        "image_shape": np.full((batch, 2), size, np.int32),
        "image_scale": np.ones((batch,), np.float32),
        "gt_boxes": np.stack([y1, x1, y1 + h, x1 + w], -1).astype(np.float32),
        "gt_classes": rng.integers(0, num_classes, (batch, boxes)).astype(np.int32),
    }


def _median_ms(fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times)), [round(1e3 * t, 2) for t in times]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="resnet50_fpn")
    parser.add_argument("--size", type=int, default=800)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--boxes", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument(
        "--checks-only", action="store_true", help="time the checks alone (no training steps)"
    )
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    from tfrcnn.models import FasterRCNN

    keras.utils.set_random_seed(0)
    model = FasterRCNN.from_preset(
        args.preset, num_classes=20, image_min_side=args.size, image_max_side=args.size
    )
    model.compile(optimizer=keras.optimizers.SGD(1e-4, momentum=0.9))
    data = _batch(args.batch, args.size, args.boxes, model.num_classes)
    tensors = {k: tf.constant(v) for k, v in data.items()}

    checks = tf.function(lambda x: model.input_checker(x))
    checks_ms, _ = _median_ms(lambda: [t.numpy() for t in tf.nest.flatten(checks(tensors))], 3, 50)
    from tfrcnn.training import NaNGuard

    guard = NaNGuard()
    guard.set_model(model)
    guard.on_train_begin()
    guard_ms, _ = _median_ms(guard._bad_variables, 3, 20)
    if args.checks_only:
        print(
            json.dumps(
                {
                    "preset": args.preset,
                    "size": args.size,
                    "batch": args.batch,
                    "checks_ms": round(checks_ms, 3),
                    "nan_guard_weight_check_ms": round(guard_ms, 2),
                }
            )
        )
        return
    with_ms, with_all = _median_ms(lambda: model.train_on_batch(data), args.warmup, args.steps)
    model.input_checker.enabled = False
    model.make_train_function(force=True)
    without_ms, without_all = _median_ms(
        lambda: model.train_on_batch(data), args.warmup, args.steps
    )
    print(
        json.dumps(
            {
                "preset": args.preset,
                "size": args.size,
                "batch": args.batch,
                "checks_ms": round(checks_ms, 3),
                "step_with_checks_ms": round(with_ms, 1),
                "step_without_checks_ms": round(without_ms, 1),
                "checks_share_of_step": round(checks_ms / without_ms, 5),
                "nan_guard_weight_check_ms": round(guard_ms, 2),
                "nan_guard_share_of_step": round(2 * guard_ms / without_ms, 5),
                "steps_with": with_all,
                "steps_without": without_all,
            }
        )
    )


if __name__ == "__main__":
    main()
