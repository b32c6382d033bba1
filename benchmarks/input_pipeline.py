"""Is the input pipeline ever the bottleneck? Images a second that ``tfrcnn.data.make_dataset``
delivers (JPEG decode, resize, flip, pad, batch, with parallel map and prefetch) against images a
second that a training step consumes, on the same machine, one after the other.

    python benchmarks/input_pipeline.py                       # BCCD trainval, small_fpn settings
    python benchmarks/input_pipeline.py --data-path ../shared/datasets/bccd --batch-size 2

The pipeline is timed alone (no model running), over ``--batches`` batches after one warm-up
batch; the training step is timed with ``train_on_batch`` on a batch taken from it. When the
pipeline alone delivers several times the images the step consumes, prefetching hides it during
``fit`` (it runs on other threads while the step computes).
"""

import argparse
import os
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-path",
        default=os.environ.get(
            "TFRCNN_BCCD", os.path.join(ROOT, "..", "shared", "datasets", "bccd")
        ),
    )
    parser.add_argument("--preset", default="small_fpn")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    if not os.path.isdir(args.data_path):
        raise SystemExit(f"BCCD not found at {args.data_path}: pass --data-path or set TFRCNN_BCCD")

    import keras

    from tfrcnn.data import make_dataset, read_voc
    from tfrcnn.models import FasterRCNN

    records, names, _ = read_voc(args.data_path, "trainval")
    model = FasterRCNN.from_preset(args.preset, num_classes=len(names))
    side = model.image_max_side
    pad = int(np.ceil(side / model.size_divisor) * model.size_divisor)
    ds = make_dataset(
        records,
        batch_size=args.batch_size,
        min_side=model.image_min_side,
        max_side=side,
        pad_to=(pad, pad),
        size_divisor=model.size_divisor,
        training=True,
        seed=0,
    ).repeat()
    iterator = iter(ds)
    batch = next(iterator)
    start = time.perf_counter()
    for _ in range(args.batches):
        batch = next(iterator)
    pipeline = args.batches * args.batch_size / (time.perf_counter() - start)

    model.compile(optimizer=keras.optimizers.SGD(0.001, momentum=0.9))
    model.train_on_batch(batch)
    start = time.perf_counter()
    for _ in range(args.steps):
        model.train_on_batch(batch)
    step = args.steps * args.batch_size / (time.perf_counter() - start)
    print(
        f"{len(records)} BCCD trainval records, {args.preset} settings "
        f"({model.image_min_side}/{side}, padded to {pad}x{pad}), batch {args.batch_size}"
    )
    print(f"input pipeline alone: {pipeline:7.1f} images/s ({args.batches} batches)")
    print(f"training step:        {step:7.1f} images/s ({args.steps} steps)")
    print(f"pipeline / step:      {pipeline / step:7.1f}x")


if __name__ == "__main__":
    main()
