"""The training schemes of Ren et al. (2015), section 3.2.

- approximate joint training (the default) and non-approximate joint training are properties of
  the graph (``FasterRCNN(training_scheme=...)``) and train with a single ``model.fit``;
- the paper's 4-step alternating training is :func:`train_alternating`, four ``fit`` calls with
  different parts frozen and different loss terms switched on.
"""

import keras

ALTERNATING_STAGES = (
    # name, trainable (backbone, rpn, head), loss terms switched on
    ("1_rpn", (True, True, False), ("rpn_cls_loss", "rpn_box_loss")),
    ("2_fast_rcnn", (True, False, True), ("rcnn_cls_loss", "rcnn_box_loss")),
    ("3_rpn_finetune", (False, True, False), ("rpn_cls_loss", "rpn_box_loss")),
    ("4_fast_rcnn_finetune", (False, False, True), ("rcnn_cls_loss", "rcnn_box_loss")),
)


def model_parts(model):
    """The layers of each trainable part: ``{"backbone": [...], "rpn": [...], "head": [...]}``."""
    head = [model.rcnn_head] + ([model.head_trunk] if model.head_trunk is not None else [])
    return {"backbone": [model.backbone_model], "rpn": [model.rpn_head], "head": head}


def set_trainable_parts(model, backbone, rpn, head):
    """Freeze or unfreeze the three parts (recompile afterwards for it to take effect in ``fit``)."""
    parts = model_parts(model)
    for flag, name in ((backbone, "backbone"), (rpn, "rpn"), (head, "head")):
        for layer in parts[name]:
            layer.trainable = bool(flag)


def set_loss_terms(model, active):
    """Switch the four loss terms on (weight 1) or off (weight 0)."""
    for name in model.loss_term_weights:
        model.loss_term_weights[name] = 1.0 if name in active else 0.0


def train_alternating(
    model,
    dataset,
    *,
    epochs_per_stage=(1, 1, 1, 1),
    steps_per_epoch=None,
    optimizer_factory=None,
    callbacks=None,
    validation_data=None,
    verbose=1,
):
    """The paper's 4-step alternating training on one shared backbone.

    1. train the RPN (backbone + RPN, RPN losses);
    2. train the detector on the step-1 proposals (backbone + head, detector losses; the RPN is
       frozen so the proposals come from the step-1 RPN);
    3. fix the shared convolutional layers and fine-tune the RPN-only layers;
    4. keep them fixed and fine-tune the detector-only layers.

    The paper initialises a second ImageNet backbone in step 2; with one shared backbone
    (random initialisation here) step 2 continues from step 1's, which the paper's step 3 then makes
    shared anyway.

    Args:
        model: a :class:`tfrcnn.FasterRCNN`.
        dataset: training data (dicts with ground truth); repeated by the caller if
            ``steps_per_epoch`` is given.
        epochs_per_stage: four epoch counts.
        steps_per_epoch: passed to ``fit``.
        optimizer_factory: a function returning a fresh optimizer for each stage (default Adam 1e-3).
        callbacks, validation_data, verbose: passed to ``fit``.

    Returns:
        a list of ``(stage_name, keras.callbacks.History)``.

    Example:
        >>> histories = train_alternating(model, train_ds.repeat(), steps_per_epoch=100)
    """
    if optimizer_factory is None:
        optimizer_factory = lambda: keras.optimizers.Adam(1e-3)  # noqa: E731
    if len(epochs_per_stage) != 4:
        raise ValueError(f"epochs_per_stage needs 4 entries, got {epochs_per_stage}")
    original_backbone = model.backbone_model.trainable
    histories = []
    try:
        for (name, (backbone, rpn, head), active), epochs in zip(
            ALTERNATING_STAGES, epochs_per_stage
        ):
            set_trainable_parts(model, backbone and original_backbone, rpn, head)
            set_loss_terms(model, active)
            model.compile(optimizer=optimizer_factory())
            history = model.fit(
                dataset,
                epochs=int(epochs),
                steps_per_epoch=steps_per_epoch,
                callbacks=callbacks,
                validation_data=validation_data,
                verbose=verbose,
            )
            histories.append((name, history))
    finally:
        set_trainable_parts(model, original_backbone, True, True)
        set_loss_terms(model, model.loss_term_weights.keys())
    return histories
