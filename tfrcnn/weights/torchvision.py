"""Convert torchvision Faster R-CNN checkpoints into tfrcnn models.

:func:`from_torchvision` reads a checkpoint without torch (:mod:`tfrcnn.weights.pth`), checks every
tensor against torchvision's architecture (:mod:`tfrcnn.weights.torchvision_spec`), builds the
matching tfrcnn preset (the same function as torchvision's model, see docs/pretrained.md) and puts
every tensor into its layer in Keras layout (:mod:`tfrcnn.weights.layout`).

Classes: the count is read from the checkpoint (``cls_score`` rows, background included). A
checkpoint with 91 rows and no ``class_names`` is taken as torchvision's COCO layout: 80 classes
in COCO order, the 10 unused ids dropped (``coco_unused="drop"``) or kept as ``"N/A"`` classes
(``"keep"``); see :mod:`tfrcnn.weights.registry`. Any other checkpoint (a model trained on your
own classes) keeps its rows ``1 .. classes - 1`` as user classes ``0 .. classes - 2``, named by
``class_names`` when given (their count must match).

Published names: the checkpoint is downloaded once into the Keras cache (hash-checked), and the
converted model is cached beside it as ``<checkpoint>.tfrcnn-<key>.keras``, the key a digest of
the preset, the class arguments, the settings and the tfrcnn version; later calls load that file
(``cache=False`` converts again and leaves the cache alone). A cached file that does not load is
converted again and replaced.

Example:
    >>> model = from_torchvision("fasterrcnn_resnet50_fpn_coco")    # downloads, checks the hash
    >>> model = from_torchvision("model_25.pth", preset="torchvision_resnet50_fpn",
    ...                          class_names=["cat", "dog"], image_min_side=480, image_max_side=640)
"""

import hashlib
import json
import logging
import os

from tfrcnn.weights import registry, torchvision_spec
from tfrcnn.weights.assign import assign_layer, assign_modules
from tfrcnn.weights.pth import load_state_dict

PRESET_ARCHITECTURES = registry.PRESET_ARCHITECTURES


def _head_layers(model, arch):
    """torchvision module name -> the tfrcnn layer that holds it (RPN and second stage)."""
    layers = {
        "rpn.head.conv.0.0": model.rpn_head.conv,
        "rpn.head.cls_logits": model.rpn_head.objectness,
        "rpn.head.bbox_pred": model.rpn_head.box_deltas,
        "roi_heads.box_predictor.cls_score": model.rcnn_head.classifier,
        "roi_heads.box_predictor.bbox_pred": model.rcnn_head.regressor,
    }
    head = model.rcnn_head
    if arch.endswith("_v2"):
        for i, conv in enumerate(model.rpn_head.extra_convs, start=1):
            layers[f"rpn.head.conv.{i}.0"] = conv
        for i, (conv, norm) in enumerate(zip(head.convs, head.norms)):
            layers[f"roi_heads.box_head.{i}.0"] = conv
            layers[f"roi_heads.box_head.{i}.1"] = norm
        layers["roi_heads.box_head.5"] = head.fcs[0]
    else:
        layers["roi_heads.box_head.fc6"] = head.fcs[0]
        layers["roi_heads.box_head.fc7"] = head.fcs[1]
    return layers


def resolve_checkpoint(checkpoint, preset=None, base_url=None, progress=True):
    """``(path, preset)``: a published name (:func:`registry.is_published_name`) is downloaded
    into the Keras cache and gives its preset; a path needs ``preset``."""
    name = os.fspath(checkpoint)
    if registry.is_published_name(name):
        entry = registry.published(name)
        if entry.kind != "detector":
            raise ValueError(
                f"{name} is an ImageNet backbone checkpoint; pass it as "
                f"backbone_weights=, not as a detector"
            )
        path = registry.fetch_torchvision(name, base_url=base_url, progress=progress)
        return path, preset or entry.preset
    if not os.path.isfile(name):
        raise ValueError(
            f"{name}: no such checkpoint file, and not a published name "
            f"({', '.join(n for n, e in registry.TORCHVISION.items() if e.kind == 'detector')})"
        )
    if preset is None:
        raise ValueError(
            f"{name}: say which torchvision architecture it is with preset= "
            f"(one of {', '.join(PRESET_ARCHITECTURES)})"
        )
    return name, preset


def from_torchvision(
    checkpoint,
    preset=None,
    class_names=None,
    coco_unused="drop",
    base_url=None,
    progress=True,
    cache=True,
    **settings,
):
    """A tfrcnn model computing what a torchvision Faster R-CNN checkpoint computes.

    Args:
        checkpoint: a ``.pth`` path, or a published name (:data:`registry.TORCHVISION`).
        preset: the tfrcnn preset of the checkpoint's architecture (:data:`PRESET_ARCHITECTURES`;
            implied by a published name).
        class_names: names of the checkpoint's classes (background excluded); the count must
            match the checkpoint's.
        coco_unused: for a 91-row COCO checkpoint without ``class_names``: ``"drop"`` the 10
            unused ids (80 classes) or ``"keep"`` them (90 classes, named ``"N/A"``).
        base_url, progress: for a published name (see :func:`tfrcnn.weights.download.fetch`).
        cache: for a published name, load the converted model cached beside the checkpoint, or
            convert and cache it (``False``: convert, no cache).
        **settings: any ``FasterRCNN`` setting (e.g. ``image_min_side=480``,
            ``detection_score_threshold=0.0``), as ``tfrcnn train --set``.

    Returns:
        a ``FasterRCNN`` with every weight from the checkpoint and its class names.

    Raises:
        ValueError: an unknown preset, a missing / unexpected / mis-shaped tensor, or a class-name
            count that does not match (one line each).
    """
    published = registry.is_published_name(checkpoint)
    path, preset = resolve_checkpoint(checkpoint, preset, base_url, progress)
    if preset not in PRESET_ARCHITECTURES:
        raise ValueError(
            f"preset {preset!r} has no torchvision importer; available: "
            f"{', '.join(PRESET_ARCHITECTURES)}"
        )
    cached = None
    if published and cache:
        cached = converted_cache_path(path, preset, class_names, coco_unused, settings)
    if cached is not None and os.path.isfile(cached):
        from tfrcnn.models.loading import load_model

        try:
            return load_model(cached, compile=False)
        except Exception:  # an unreadable cached file is converted again and replaced
            os.remove(cached)
    model = _convert(path, preset, class_names, coco_unused, settings)
    if cached is not None:
        from tfrcnn.export.atomic import atomic_file

        try:
            with atomic_file(cached, suffix=".keras") as tmp:
                model.save(tmp)
        except OSError as e:  # a read-only cache: the converted model is still returned
            logging.getLogger(__name__).warning("converted model not cached at %s: %s", cached, e)
    return model


def converted_cache_path(path, preset, class_names, coco_unused, settings):
    """Where the model converted from the cached checkpoint ``path`` with these arguments is kept
    (beside it), or ``None`` when a setting has no JSON form (such a conversion is not cached)."""
    from tfrcnn import __version__

    arguments = {
        "preset": preset,
        "class_names": None if class_names is None else [str(c) for c in class_names],
        "coco_unused": coco_unused,
        "settings": settings,
        "tfrcnn": __version__,
    }
    try:
        key = json.dumps(arguments, sort_keys=True)
    except TypeError:
        return None
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return f"{os.path.splitext(path)[0]}.tfrcnn-{digest}.keras"


def _convert(path, preset, class_names, coco_unused, settings):
    """The model of :func:`from_torchvision` built from the checkpoint file ``path``."""
    arch = PRESET_ARCHITECTURES[preset]
    source = str(path)
    state = load_state_dict(path)
    classes = torchvision_spec.check_state_dict(state, arch, source)
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if len(class_names) != classes - 1:
            raise ValueError(
                f"{source}: {len(class_names)} class names given, but the checkpoint "
                f"has {classes - 1} classes (cls_score has {classes} rows, background "
                f"included)"
            )
        rows = tuple(range(1, classes))
    elif classes == len(registry.COCO_TORCHVISION_CATEGORIES):
        rows, class_names = registry.coco_class_rows(coco_unused)
    else:
        rows = tuple(range(1, classes))
    modules = torchvision_spec.convert_modules(state, arch, rows, source)

    from tfrcnn.models import FasterRCNN

    settings.setdefault("backbone_weights", None)
    model = FasterRCNN.from_preset(
        preset, num_classes=len(rows), class_names=class_names, **settings
    )
    assigned = assign_modules(model.backbone_model, modules, strip="backbone.body.", source=source)
    assigned += assign_modules(
        model.backbone_model, modules, strip="backbone.fpn.", add="fpn_", source=source
    )
    for module, layer in _head_layers(model, arch).items():
        assign_layer(layer, module, modules[module], source)
        assigned.append(module)
    missing = [m for m in modules if m not in set(assigned)]
    if missing:
        raise ValueError(f"{source}: tensor '{missing[0]}' has no place in preset {preset!r}")
    return model
