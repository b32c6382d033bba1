"""Proposal recall of a trained model's RPN against selective search (Faster R-CNN paper, Fig. 2).

Prints, for each method and N in --top-n, the recall of ground-truth boxes at IoU 0.5 and 0.7, the
average recall over IoU 0.5:0.05:0.95 (Hosang et al.) and the seconds an image, with every setting.

    python benchmarks/proposal_recall.py --data ../shared/datasets/bccd --split test \
        --model model.keras --max-images 20 --plot recall.png

Without --model only selective search runs. Timing: image decoding is not timed; the RPN runs one
warm-up image first (graph tracing). Selective search is single-image, on --num-threads OpenCV
threads. --save-proposals writes the selective-search boxes (a .npz keyed by image id) for
Fast R-CNN training with tfrcnn.data.proposals.load_proposals.
"""

import argparse
import os
import platform
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a Pascal VOC folder (e.g. BCCD)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--model", help="a trained FasterRCNN .keras file (its RPN is measured)")
    parser.add_argument("--max-images", type=int, help="only the first N images of the split")
    parser.add_argument("--max-proposals", type=int, default=2000)
    parser.add_argument("--top-n", type=int, nargs="+", default=[300, 1000, 2000])
    parser.add_argument(
        "--mode", default="fast", choices=["fast", "quality"], help="selective search preset"
    )
    parser.add_argument(
        "--min-size",
        type=float,
        default=None,
        help="selective search: smallest box side kept, pixels",
    )
    parser.add_argument(
        "--max-side",
        type=int,
        default=None,
        help="selective search on the image downscaled to this longer side",
    )
    parser.add_argument("--num-threads", type=int, default=1, help="OpenCV threads")
    parser.add_argument("--no-selective-search", action="store_true")
    parser.add_argument(
        "--exclude-difficult",
        action="store_true",
        help="leave ground truth marked difficult out of the recall",
    )
    parser.add_argument("--plot", help="write recall-vs-IoU curves to this PNG")
    parser.add_argument("--save-proposals", help="write selective-search proposals to this .npz")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from tfrcnn.data.proposals import DEFAULT_MIN_SIZE, save_proposals
    from tfrcnn.data.voc import read_voc
    from tfrcnn.evaluation.proposals import (
        DEFAULT_IOU_THRESHOLDS,
        format_recall_table,
        plot_recall_curves,
        proposal_recall,
        rpn_proposals,
        selective_search_proposals,
    )

    if args.no_selective_search and not args.model:
        sys.exit("nothing to measure: give --model and/or leave out --no-selective-search")
    records, _, _ = read_voc(args.data, args.split)
    if args.max_images:
        records = records[: args.max_images]
    gt = [r["boxes"][~r["difficult"]] if args.exclude_difficult else r["boxes"] for r in records]
    min_size = DEFAULT_MIN_SIZE if args.min_size is None else args.min_size

    import tensorflow as tf

    settings = {
        "data": f"{os.path.abspath(args.data)} split={args.split}",
        "images": len(records),
        "ground-truth boxes": int(sum(len(g) for g in gt)),
        "difficult": "excluded" if args.exclude_difficult else "included",
        "max proposals": args.max_proposals,
        "N": " ".join(map(str, args.top_n)),
        "IoU thresholds": " ".join(f"{t:.2f}" for t in DEFAULT_IOU_THRESHOLDS),
        "timing": "wall seconds an image, image decoding excluded, RPN after 1 warm-up image",
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, python {platform.python_version()}, "
        f"tensorflow {tf.__version__}",
    }
    results = {}
    if args.model:
        import keras

        import tfrcnn  # noqa: F401  (registers the serialisable classes)

        model = keras.saving.load_model(args.model)
        settings["RPN"] = (
            f"{args.model} (preset {getattr(model, 'preset', '?')}, test pre-NMS "
            f"{max(model.test_pre_nms_top_n, args.max_proposals)}, NMS "
            f"{model.rpn_nms_iou}, min size {model.rpn_min_size}), "
            f"TF intra-op threads {tf.config.threading.get_intra_op_parallelism_threads() or 'default'}"
        )
        boxes, seconds = rpn_proposals(model, records, max_proposals=args.max_proposals)
        results["RPN"] = {**proposal_recall(boxes, gt, top_n=args.top_n), "seconds": seconds}
    if not args.no_selective_search:
        import cv2

        settings["selective search"] = (
            f"OpenCV {cv2.__version__} ximgproc, mode={args.mode}, "
            f"min size {min_size} px, max side {args.max_side}, "
            f"{args.num_threads} thread(s), seed 0"
        )
        boxes, seconds = selective_search_proposals(
            records,
            max_proposals=args.max_proposals,
            mode=args.mode,
            min_size=min_size,
            max_side=args.max_side,
            num_threads=args.num_threads,
        )
        name = f"SS {args.mode}"
        results[name] = {**proposal_recall(boxes, gt, top_n=args.top_n), "seconds": seconds}
        if args.save_proposals:
            save_proposals(args.save_proposals, {r["image_id"]: b for r, b in zip(records, boxes)})
            settings["saved proposals"] = args.save_proposals

    for key, value in settings.items():
        print(f"{key:>20}: {value}")
    for name, result in results.items():
        mean = ", ".join(f"N={n}: {v:.0f}" for n, v in result["mean_proposals"].items())
        print(f"{name:>20}: proposals an image {mean}")
    print()
    print(format_recall_table(results))
    if args.plot:
        plot_recall_curves(results, args.plot)
        print(f"\nplot written to {args.plot}")


if __name__ == "__main__":
    main()
