"""ImageResizer: raw images of any size to the network's input (resize, pad) inside the model.

Shapes: ``B`` images of one size ``H x W``; output ``Hp x Wp``, a multiple of ``size_divisor``.
"""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="tfrcnn")
class ImageResizer(keras.layers.Layer):
    """Scale so the shorter side is ``min_side`` unless the longer would pass ``max_side`` (then the
    longer side is ``max_side``), bilinear, then zero-pad bottom/right to a multiple of
    ``size_divisor``. This is what lets a served model take raw pixels.

    Args:
        min_side: target shorter side (600 in the paper).
        max_side: cap on the longer side (1000).
        size_divisor: pad height and width up to a multiple of this (the backbone's stride).
        rounding: ``"round"`` the resized sides to the nearest integer, or ``"floor"`` them
            (torchvision: ``floor(side * scale)``, the scale computed in float64).
        pad_value: the value of the padded pixels: a number, or three (one a channel, e.g. the
            ImageNet mean times 255, which the model's normalisation maps to 0 as torchvision pads
            its normalised batch with zeros).

    Call:
        ``images, image_shape, image_scale, original_shape = layer(raw)``: raw uint8 or float
        ``[B, H, W, 3]`` -> float32 ``[B, Hp, Wp, 3]`` (pixel values 0..255), int32 ``[B, 2]``
        valid region, float32 ``[B]`` scale (resized = original * scale), int32 ``[B, 2]`` the
        raw ``(H, W)``.

    Example:
        >>> images, shape, scale, original = ImageResizer(600, 1000)(tf.zeros([1, 480, 640, 3], tf.uint8))
        >>> shape.numpy(), scale.numpy()
        (array([[600, 800]], dtype=int32), array([1.25], dtype=float32))
    """

    def __init__(
        self,
        min_side=600,
        max_side=1000,
        size_divisor=32,
        rounding="round",
        pad_value=0.0,
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float32")  # pixels and scale must not be autocast to 16 bits
        super().__init__(**kwargs)
        self.min_side = int(min_side)
        self.max_side = int(max_side)
        self.size_divisor = int(size_divisor)
        if rounding not in ("round", "floor"):
            raise ValueError(f"rounding must be 'round' or 'floor', got {rounding!r}")
        self.rounding = rounding
        self.pad_value = (
            tuple(float(v) for v in pad_value)
            if isinstance(pad_value, (list, tuple))
            else float(pad_value)
        )

    def call(self, images):
        images = tf.cast(images, tf.float32)
        shape = tf.shape(images)
        batch = shape[0]
        if self.rounding == "floor":
            height = tf.cast(shape[1], tf.float64)
            width = tf.cast(shape[2], tf.float64)
            scale = tf.minimum(
                self.min_side / tf.minimum(height, width), self.max_side / tf.maximum(height, width)
            )
            new_h = tf.cast(tf.floor(height * scale), tf.int32)
            new_w = tf.cast(tf.floor(width * scale), tf.int32)
            scale = tf.cast(scale, tf.float32)
        else:
            height = tf.cast(shape[1], tf.float32)
            width = tf.cast(shape[2], tf.float32)
            scale = tf.minimum(
                self.min_side / tf.minimum(height, width), self.max_side / tf.maximum(height, width)
            )
            new_h = tf.cast(tf.round(height * scale), tf.int32)
            new_w = tf.cast(tf.round(width * scale), tf.int32)
        resized = tf.image.resize(images, tf.stack([new_h, new_w]), method="bilinear")
        d = self.size_divisor
        pad_h = (new_h + d - 1) // d * d
        pad_w = (new_w + d - 1) // d * d
        pad_value = tf.constant(self.pad_value, tf.float32)
        padded = tf.image.pad_to_bounding_box(resized - pad_value, 0, 0, pad_h, pad_w) + pad_value
        image_shape = tf.tile(tf.stack([new_h, new_w])[None, :], [batch, 1])
        image_scale = tf.fill([batch], scale)
        original_shape = tf.tile(shape[1:3][None, :], [batch, 1])
        return padded, image_shape, image_scale, original_shape

    def compute_output_spec(self, images):
        b = images.shape[0]
        return (
            keras.KerasTensor((b, None, None, 3), dtype="float32"),
            keras.KerasTensor((b, 2), dtype="int32"),
            keras.KerasTensor((b,), dtype="float32"),
            keras.KerasTensor((b, 2), dtype="int32"),
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            min_side=self.min_side,
            max_side=self.max_side,
            size_divisor=self.size_divisor,
            rounding=self.rounding,
            pad_value=self.pad_value,
        )
        return config
