"""Seconds an image of ``model.predict`` against the exported SavedModel's ``serving_default``.

For each model (default ``resnet50_fpn`` and ``mobilenet_v3_fpn``, random weights, 800x800, batch
1): one process builds the model, exports it with :func:`tfrcnn.export.saved_model`, times
``model.predict`` on a fixed uint8 image and saves its detections; a second process, which never
imports tfrcnn, loads the folder with ``tf.saved_model.load``, times ``serving_default`` on the
same image and returns its detections. The two run one after the other in one invocation, each
with the same process configuration (``tfrcnn.accel.configure_process()``'s variables, set before
TensorFlow starts). Asserts the detections are equal (same count and classes, scores within 1e-4,
boxes within 0.05 pixel), prints the ratio ``serving / predict`` of the median seconds, and writes
everything to a JSON file.

    python benchmarks/export_speed.py --out benchmarks/results/export_speed.json

Acceptance (issue 25): ratio <= 1.05 for both models.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

PREDICT = r"""
import json, os, sys, time
import numpy as np
import tfrcnn.accel
tfrcnn.accel.configure_process()
import tensorflow as tf
from tfrcnn.export import saved_model
from tfrcnn.models import FasterRCNN

model_name, size, folder, repeats, warmup = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
keras_seed = 0
import keras
keras.utils.set_random_seed(keras_seed)
model = FasterRCNN.from_preset(model_name, num_classes=90, image_min_side=size, image_max_side=size,
                               detection_score_threshold=0.0)
image = np.random.default_rng(0).integers(0, 256, (1, size, size, 3)).astype("uint8")
np.save(os.path.join(folder, "image.npy"), image)
start = time.perf_counter()
saved_model(model, os.path.join(folder, "sm"))
export_seconds = time.perf_counter() - start
for _ in range(warmup):
    out = model.predict(image, verbose=0)
seconds = []
for _ in range(repeats):
    start = time.perf_counter()
    out = model.predict(image, verbose=0)
    seconds.append(time.perf_counter() - start)
np.savez(os.path.join(folder, "predict.npz"), **{k: np.asarray(v) for k, v in out.items()})
print(json.dumps({"seconds": seconds, "export_seconds": export_seconds,
                  "tensorflow": tf.__version__}))
"""

SERVE = r"""
import json, os, sys, time
import numpy as np
import tensorflow as tf
assert "tfrcnn" not in sys.modules
folder, repeats, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
loaded = tf.saved_model.load(os.path.join(folder, "sm"))
serve = loaded.signatures["serving_default"]
image = tf.constant(np.load(os.path.join(folder, "image.npy")))
for _ in range(warmup):
    out = serve(images=image)
seconds = []
for _ in range(repeats):
    start = time.perf_counter()
    out = {k: v.numpy() for k, v in serve(images=image).items()}
    seconds.append(time.perf_counter() - start)
np.savez(os.path.join(folder, "serve.npz"), **out)
print(json.dumps({"seconds": seconds, "tfrcnn_imported": "tfrcnn" in sys.modules}))
"""


def _environment():
    """The variables configure_process sets (computed here without importing TensorFlow)."""
    sys.path.insert(0, ROOT)
    from tfrcnn.accel.process import configure_process

    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    configure_process(environ)
    environ.update(TF_CPP_MIN_LOG_LEVEL="2")
    return environ


def _run(code, args, environ, pythonpath):
    env = dict(environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    out = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"subprocess failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _compare(folder):
    import numpy as np

    want = np.load(os.path.join(folder, "predict.npz"))
    got = np.load(os.path.join(folder, "serve.npz"))
    np.testing.assert_array_equal(got["num_detections"], want["num_detections"])
    n = int(want["num_detections"][0])
    np.testing.assert_array_equal(got["detection_classes"][0, :n], want["detection_classes"][0, :n])
    np.testing.assert_allclose(
        got["detection_scores"][0, :n], want["detection_scores"][0, :n], atol=1e-4
    )
    boxes_diff = (
        float(np.abs(got["detection_boxes"][0, :n] - want["detection_boxes"][0, :n]).max())
        if n
        else 0.0
    )
    assert boxes_diff <= 0.05, f"boxes differ by {boxes_diff} pixel"
    return {
        "num_detections": n,
        "max_box_difference": boxes_diff,
        "max_score_difference": float(
            np.abs(got["detection_scores"][0, :n] - want["detection_scores"][0, :n]).max()
        )
        if n
        else 0.0,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet50_fpn", "mobilenet_v3_fpn"])
    parser.add_argument("--size", type=int, default=800)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    environ = _environment()
    results = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "size": args.size,
        "batch": 1,
        "models": {},
    }
    for name in args.models:
        with tempfile.TemporaryDirectory(prefix="tfrcnn_export_speed_") as folder:
            predict = _run(
                PREDICT, [name, args.size, folder, args.repeats, args.warmup], environ, ROOT
            )
            serve = _run(SERVE, [folder, args.repeats, args.warmup], environ, None)
            assert not serve["tfrcnn_imported"]
            detections = _compare(folder)
        p, s = statistics.median(predict["seconds"]), statistics.median(serve["seconds"])
        results["models"][name] = {
            "predict_seconds": predict["seconds"],
            "serving_seconds": serve["seconds"],
            "predict_median": p,
            "serving_median": s,
            "ratio": s / p,
            "predict_spread": [min(predict["seconds"]), max(predict["seconds"])],
            "serving_spread": [min(serve["seconds"]), max(serve["seconds"])],
            "export_seconds": predict["export_seconds"],
            "detections": detections,
        }
        results["tensorflow"] = predict["tensorflow"]
        print(
            f"{name} {args.size}x{args.size} batch 1: predict {p:.3f} s "
            f"[{min(predict['seconds']):.3f}-{max(predict['seconds']):.3f}], serving_default "
            f"{s:.3f} s [{min(serve['seconds']):.3f}-{max(serve['seconds']):.3f}], ratio "
            f"{s / p:.3f}; detections equal ({detections['num_detections']})",
            flush=True,
        )
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
