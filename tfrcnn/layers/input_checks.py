"""InputChecks: the model's first layer, checking every tensor a user hands it.

Shapes: ``B`` images, ``H x W`` image size, ``M`` ground-truth slots, ``K`` external proposals.
"""

import keras

from tfrcnn.ops import checks


@keras.saving.register_keras_serializable(package="tfrcnn")
class InputChecks(keras.layers.Layer):
    """Checks the model inputs in graph mode (``fit``, ``predict``, ``train_on_batch``, a user's
    ``tf.data`` pipeline, the SavedModel) and returns them unchanged.

    Checked (see :mod:`tfrcnn.ops.checks`):

    - ``images``: ``[B, H, W, 3]`` of an integer or float dtype; float pixels finite. A non-finite
      pixel is an error naming the image, never a silent result (a NaN image used to give 100
      confident detections);
    - ``image_shape``: an integer ``[B, 2]`` within ``1..H``, ``1..W``; ``image_scale``: finite,
      ``> 0``;
    - ``gt_classes``: an integer ``[B, M]`` tensor (a float tensor is a ``TypeError``, never a
      cast), each id in ``0 .. num_classes - 1`` or exactly ``-1`` (padding);
    - ``gt_boxes``: ``[B, M, 4]``; non-padding boxes finite with ``y1 <= y2`` and ``x1 <= x2``;
    - ``proposals`` (Fast R-CNN models): ``[B, K, 4]``, finite.

    Dtype, rank and channel errors are raised at trace time (``TypeError`` / ``ValueError``); value
    errors when the batch runs (``tf.errors.InvalidArgumentError``), e.g.
    ``gt_classes[1, 3] = 3 is not a class id: expected 0..2, or -1 for padding``.

    Args:
        num_classes: user classes (valid ids ``0 .. num_classes - 1``).
        enabled: ``False`` skips the value checks (the static dtype / rank checks always run).

    Call:
        ``layer(inputs)``: a dict as :class:`tfrcnn.models.FasterRCNN` takes it (``images`` plus
        any of ``image_shape``, ``image_scale``, ``original_shape``, ``proposals``, ``gt_boxes``,
        ``gt_classes``), or a plain image tensor; returns the same structure.

    Example:
        >>> InputChecks(3)({"images": images, "gt_boxes": boxes, "gt_classes": classes})
    """

    def __init__(self, num_classes, enabled=True, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.enabled = bool(enabled)
        self.autocast = False  # the checks see the dtypes the user passed

    def call(self, inputs):
        if not isinstance(inputs, dict):
            return self._images(inputs)
        out = dict(inputs)
        if out.get("images") is None:
            return out
        if self.enabled:
            out["images"], ok = checks.check_images(out["images"], with_ok=True)
        else:
            out["images"] = self._images(out["images"])
            ok = True
        batch = out["images"].shape[0]
        if out.get("image_shape") is not None:
            if self.enabled:
                out["image_shape"] = checks.check_image_shape(
                    out["image_shape"], out["images"], after=ok
                )
            else:
                out["image_shape"] = checks.check_shape("image_shape", out["image_shape"], 2, 2)
        if out.get("image_scale") is not None and self.enabled:
            out["image_scale"] = checks.check_image_scale(out["image_scale"], after=ok)
        if out.get("proposals") is not None:
            if self.enabled:
                out["proposals"] = checks.check_proposals(out["proposals"], after=ok)
            else:
                out["proposals"] = checks.check_shape("proposals", out["proposals"], 3, 4)
        if out.get("gt_boxes") is not None and out.get("gt_classes") is not None:
            if self.enabled:
                out["gt_boxes"], out["gt_classes"] = checks.check_ground_truth(
                    out["gt_boxes"], out["gt_classes"], self.num_classes, batch_size=batch, after=ok
                )
            else:
                checks.static_dtype("gt_classes", out["gt_classes"], ("integer",))
        return out

    def _images(self, images):
        if self.enabled:
            return checks.check_images(images)
        checks.static_dtype("images", images, ("integer", "floating"))
        return checks.check_shape("images", images, 4, 3)

    def compute_output_spec(self, inputs):
        return inputs

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, enabled=self.enabled)
        return config
