"""``tfrcnn import-weights``: convert a torchvision checkpoint into a ``.keras`` model.

    tfrcnn import-weights torchvision CHECKPOINT.pth --preset torchvision_resnet50_fpn \\
        --output coco_r50.keras
    tfrcnn import-weights torchvision fasterrcnn_resnet50_fpn_coco --output coco_r50.keras
    tfrcnn import-weights torchvision model_25.pth --preset torchvision_resnet50_fpn \\
        --class-names cat,dog --set image_min_side=480 --set image_max_side=640 --output pets.keras

:func:`add_parser` adds the sub-command to the ``tfrcnn`` parser; :func:`run` is its handler.
Errors (a missing or refused checkpoint, no network, a wrong hash, a missing or mis-shaped tensor,
a class-name count that does not match) are one line with exit status 2 (``UserError``), and the
output is written atomically: complete or absent.
"""

import os


def add_parser(subparsers, **kwargs):
    """Adds ``import-weights`` to an ``argparse`` sub-parser collection; returns the parser."""
    from tfrcnn.weights.registry import PRESET_ARCHITECTURES

    p = subparsers.add_parser(
        "import-weights",
        **kwargs,
        help="convert a torchvision Faster R-CNN checkpoint to a .keras model",
        description="Read a torchvision checkpoint without torch (its pickle never runs), map every "
        "tensor into the matching tfrcnn preset and save a .keras model with its class "
        "names. A published name (fasterrcnn_resnet50_fpn_coco) is downloaded into the "
        "Keras cache and hash-checked.",
    )
    p.add_argument("source", choices=("torchvision",), help="where the checkpoint comes from")
    p.add_argument("checkpoint", help="a .pth file or a published name")
    p.add_argument(
        "--preset",
        choices=sorted(PRESET_ARCHITECTURES),
        help="the tfrcnn preset of the checkpoint's architecture (implied by a published name)",
    )
    p.add_argument("--output", required=True, help="the .keras file to write")
    p.add_argument(
        "--class-names",
        help="comma-separated class names (background excluded); the "
        "count must match the checkpoint's",
    )
    p.add_argument(
        "--coco-unused",
        choices=("drop", "keep"),
        default="drop",
        help="a 91-row COCO checkpoint: drop the 10 unused ids (80 classes, default) or "
        "keep them as 'N/A' classes (torchvision's exact scores)",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="a model setting, as in tfrcnn train (e.g. --set image_min_side=480 "
        "--set detection_score_threshold=0.0)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func="cmd_import_weights")
    return p


def run(args):
    """The handler of ``tfrcnn import-weights``; returns the exit status (0)."""
    from tfrcnn.cli import UserError, parse_overrides
    from tfrcnn.export.atomic import atomic_file
    from tfrcnn.weights.download import DownloadError
    from tfrcnn.weights.pth import PthError
    from tfrcnn.weights.torchvision import from_torchvision

    output = os.path.abspath(args.output)
    if not output.endswith(".keras"):
        raise UserError(f"--output {args.output}: the model file must end with .keras")
    if os.path.exists(output) and not args.overwrite:
        raise UserError(f"--output {args.output} exists; pass --overwrite to replace it")
    overrides = parse_overrides(args.set)
    settings = dict(overrides.pop("model", {}))
    settings.update(overrides)  # import-weights has model settings only: accept both spellings
    names = None
    if args.class_names:
        names = [n.strip() for n in args.class_names.split(",") if n.strip()]
    try:
        model = from_torchvision(
            args.checkpoint,
            preset=args.preset,
            class_names=names,
            coco_unused=args.coco_unused,
            **settings,
        )
    except (PthError, DownloadError, ValueError, TypeError) as e:
        raise UserError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    with atomic_file(output, suffix=".keras") as tmp:  # Keras wants the extension
        model.save(tmp)
    print(f"{args.checkpoint} -> {args.output}: {model.num_classes} classes, preset {model.preset}")
    return 0
