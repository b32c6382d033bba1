"""Seconds an image of one model through Keras' ways of running it: ``model.predict``,
``model.predict_on_batch``, the model called inside ``tf.function``, and the eager call.

All four run the same computation on the same uint8 image (random weights, batch 1), in one
process, taking turns for ``--repeats`` rounds after two untimed calls each; medians are printed.

    python benchmarks/predict_paths.py --model mobilenet_v3_fpn --size 800
"""

import argparse
import time

import numpy as np


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mobilenet_v3_fpn")
    parser.add_argument("--size", type=int, default=800)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    import tfrcnn.accel

    tfrcnn.accel.configure_process()
    import keras
    import tensorflow as tf

    from tfrcnn.models import FasterRCNN

    keras.utils.set_random_seed(0)
    model = FasterRCNN.from_preset(
        args.model,
        num_classes=90,
        image_min_side=args.size,
        image_max_side=args.size,
        detection_score_threshold=0.0,
    )
    image = np.random.default_rng(0).integers(0, 256, (1, args.size, args.size, 3), "uint8")
    tensor = tf.constant(image)
    compiled = tf.function(lambda x: model(x, training=False))
    paths = {
        "model.predict": lambda: model.predict(image, verbose=0),
        "model.predict_on_batch": lambda: model.predict_on_batch(image),
        "tf.function(model)": lambda: {k: v.numpy() for k, v in compiled(tensor).items()},
        "eager model(x)": lambda: {k: v.numpy() for k, v in model(tensor).items()},
    }
    for run in paths.values():
        run()
        run()
    seconds = {name: [] for name in paths}
    for _ in range(args.repeats):
        for name, run in paths.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    print(f"{args.model} {args.size}x{args.size} batch 1, medians of {args.repeats} rounds")
    for name, values in seconds.items():
        print(
            f"  {name:24s} {np.median(values):.3f} s  (range {min(values):.3f}-{max(values):.3f})"
        )


if __name__ == "__main__":
    main()
