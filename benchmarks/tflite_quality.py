"""mAP of a trained model's TFLite exports (float32, float16, dynamic-range int8, int8) on the
held-out synthetic split, next to the Keras model's, with file sizes and latency.

    tfrcnn train --run-dir runs/demo
    python benchmarks/tflite_quality.py runs/demo/model.keras --input-size 192x192

Each image is resized (aspect not kept) to the TFLite model's fixed input size and the boxes are
mapped back to the image, as ``tfrcnn predict`` does for a ``.tflite``; the Keras model gets the
same resized images, so the comparison isolates the conversion.
"""

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a trained .keras model")
    parser.add_argument("--input-size", default="192x192", help="HxW of the TFLite input")
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibration-images", type=int, default=32)
    args = parser.parse_args(argv)

    import keras
    import numpy as np
    from PIL import Image

    import tfrcnn  # noqa: F401
    from tfrcnn.data import synthetic_splits
    from tfrcnn.evaluation import evaluate_detections
    from tfrcnn.export.tflite import run_tflite, tflite

    height, width = (int(v) for v in args.input_size.split("x"))
    model = keras.models.load_model(args.model)
    train, val = synthetic_splits(
        num_train=args.calibration_images, num_val=args.num_val, seed=args.seed
    )

    def resized(image):
        return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))

    calibration = [resized(r["image"]) for r in train]
    gts = [{"boxes": r["boxes"], "classes": r["classes"]} for r in val]

    def evaluate(run):
        dets, seconds = [], []
        for r in val:
            h, w = r["image"].shape[:2]
            start = time.perf_counter()
            out = run(resized(r["image"])[None])
            seconds.append(time.perf_counter() - start)
            n = int(out["num_detections"][0])
            scale = np.array([h / height, w / width, h / height, w / width], np.float32)
            dets.append(
                {
                    "boxes": np.asarray(out["detection_boxes"][0][:n]) * scale,
                    "scores": np.asarray(out["detection_scores"][0][:n]),
                    "classes": np.asarray(out["detection_classes"][0][:n]),
                }
            )
        result = evaluate_detections(dets, gts, model.num_classes)
        return result["mAP"], float(np.median(seconds[1:]))

    rows = {}
    # The Keras model on the same fixed-size input, through the same graph the export uses.
    keras_map, keras_s = evaluate(lambda images: model.predict(images, verbose=0))
    rows["keras"] = {"mAP": keras_map, "seconds_per_image": keras_s}
    folder = tempfile.mkdtemp(prefix="tflite_quality_")
    for quantization in ("float32", "float16", "dynamic_int8", "int8"):
        path = os.path.join(folder, f"model_{quantization}.tflite")
        report = tflite(
            model,
            path,
            quantization=quantization,
            input_size=(height, width),
            representative_images=calibration if quantization == "int8" else None,
        )
        with open(path, "rb") as f:
            content = f.read()
        m, s = evaluate(lambda images, c=content: run_tflite(c, images))
        rows[quantization] = {
            "mAP": m,
            "seconds_per_image": s,
            "bytes": report["bytes"],
            "flex_ops": [o for o in report["operators"] if "Flex" in o],
        }
    print(
        json.dumps(
            {
                "model": args.model,
                "input_size": [height, width],
                "images": len(val),
                "results": rows,
            },
            indent=2,
        )
    )
    print(f"{'model':>14s} {'mAP@0.5':>8s} {'MB':>6s} {'ms/img':>7s}")
    for name, row in rows.items():
        mb = f"{row['bytes'] / 1e6:6.2f}" if "bytes" in row else "     -"
        print(f"{name:>14s} {row['mAP']:8.4f} {mb} {row['seconds_per_image'] * 1000:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
