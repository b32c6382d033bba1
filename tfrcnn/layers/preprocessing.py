"""Input normalisation inside the model, so a served model takes raw pixels.

Shapes: `B` images, `H`, `W` pixels. Input is RGB `[B, H, W, 3]`, `uint8` or float in `[0, 255]`.
"""

import keras
from keras import ops

CAFFE = "caffe"
TORCH = "torch"
TF = "tf"
MODES = (CAFFE, TORCH, TF)

# ImageNet statistics. Caffe means are in BGR order and in pixel units (what the
# keras.applications VGG16 / ResNet50 weights expect); torch statistics are RGB in [0, 1].
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
TORCH_RGB_MEAN = (0.485, 0.456, 0.406)
TORCH_RGB_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="tfrcnn")
class ImageNormalization(keras.layers.Layer):
    """Normalises RGB pixels in `[0, 255]` the way a backbone's weights expect.

    Modes:
      - `"caffe"`: RGB -> BGR, then subtract the ImageNet BGR means `(103.939, 116.779, 123.68)`;
        no scaling (keras.applications VGG16 / ResNet50, the original Caffe models).
      - `"torch"`: `(x / 255 - mean) / std` with the ImageNet RGB mean `(0.485, 0.456, 0.406)` and
        std `(0.229, 0.224, 0.225)` (torchvision models).
      - `"tf"`: `x / 127.5 - 1`, i.e. `[-1, 1]` (keras.applications MobileNetV3, Inception).

    The arithmetic is always done in float32 (the layer's dtype policy defaults to `"float32"`, so
    under a mixed-precision policy the next layer casts the result down, not this one).

    Args:
        mode: one of `"caffe"`, `"torch"`, `"tf"`.

    Shapes:
        input: `[B, H, W, 3]` RGB, `uint8` or float, values in `[0, 255]`.
        output: `[B, H, W, 3]` float32 (channel order BGR for `"caffe"`, RGB otherwise).

    Example:
        >>> layer = ImageNormalization("tf")
        >>> layer(np.full((1, 2, 2, 3), 255.0, "float32"))[0, 0, 0]  # -> [1., 1., 1.]
    """

    def __init__(self, mode=CAFFE, **kwargs):
        if mode not in MODES:
            raise ValueError(
                f"ImageNormalization: mode={mode!r} is not supported; use one of {MODES}."
            )
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.mode = mode

    def call(self, images):
        x = ops.cast(images, "float32")
        if self.mode == CAFFE:
            x = ops.flip(x, axis=-1)
            x = x - ops.convert_to_tensor(CAFFE_BGR_MEAN, "float32")
        elif self.mode == TORCH:
            mean = ops.convert_to_tensor(TORCH_RGB_MEAN, "float32")
            std = ops.convert_to_tensor(TORCH_RGB_STD, "float32")
            x = (x / 255.0 - mean) / std
        else:
            x = x / 127.5 - 1.0
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode})
        return config
