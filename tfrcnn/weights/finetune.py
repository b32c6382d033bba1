"""Start a model for new classes from a trained one: every weight kept but the class outputs.

:func:`from_pretrained` (also ``FasterRCNN.from_pretrained``) builds the source model's
architecture with ``num_classes`` classes and copies every weight (backbone, FPN, RPN, the
detection head's trunk, batch-norm statistics) except the two class-specific outputs, the class
logits and the box deltas, which keep their fresh initialisation.
"""

import os


def _source_model(source, base_url=None, progress=True):
    from tfrcnn.models import FasterRCNN

    if isinstance(source, FasterRCNN):
        return source
    name = os.fspath(source)
    from tfrcnn.weights.registry import is_published_name

    if name.startswith("torchvision:") or is_published_name(name):
        from tfrcnn.weights.torchvision import from_torchvision

        return from_torchvision(name, base_url=base_url, progress=progress)
    if not os.path.isfile(name):
        raise ValueError(
            f"{name}: no such model file (a .keras model, a FasterRCNN, or "
            f"'torchvision:<published name>')"
        )
    if name.endswith(".pth"):
        raise ValueError(
            f"{name}: convert a torchvision checkpoint first with "
            f"tfrcnn.weights.from_torchvision(path, preset=...)"
        )
    from tfrcnn.models.loading import load_model

    return load_model(name, compile=False)  # one line for a file that is not a tfrcnn model


def from_pretrained(
    source, num_classes, class_names=None, base_url=None, progress=True, **settings
):
    """A ``FasterRCNN`` for ``num_classes`` classes with every weight of ``source`` but the class
    logits and box deltas.

    Args:
        source: a ``FasterRCNN``, a ``.keras`` file, or ``"torchvision:<published name>"``
            (downloaded and converted).
        num_classes: the new class count; class_names: their names (optional).
        **settings: settings to change (e.g. ``trainable_backbone=0``); those that change a
            weight's shape are refused by the copy with a one-line error.

    Raises:
        ValueError: a weight whose shape differs between the two architectures (one line).
    """
    from tfrcnn.models import FasterRCNN

    pretrained = _source_model(source, base_url, progress)
    config = pretrained.get_config()
    config.update(num_classes=int(num_classes), class_names=class_names, **settings)
    config["backbone_weights"] = None  # every backbone weight is copied below
    model = FasterRCNN.from_config(config)
    fresh = {
        id(w)
        for layer in (model.rcnn_head.classifier, model.rcnn_head.regressor)
        for w in layer.weights
    }
    targets, sources = model.weights, pretrained.weights
    if len(targets) != len(sources):
        raise ValueError(
            f"the new model has {len(targets)} weights, the pretrained one "
            f"{len(sources)}: a setting changed the architecture"
        )
    for target, weight in zip(targets, sources):
        if id(target) in fresh:
            continue
        if tuple(target.shape) != tuple(weight.shape):
            raise ValueError(
                f"weight '{weight.path}' has shape {list(weight.shape)} in the "
                f"pretrained model and {list(target.shape)} in the new one"
            )
        target.assign(weight)
    return model
