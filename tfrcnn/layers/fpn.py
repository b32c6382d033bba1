"""Feature Pyramid Network top-down pathway (Lin et al., 2017).

Shapes: `B` images; level `i` of the input has `H_i x W_i` cells and `C_i` channels, and each level
is the previous one downsampled by 2 with "ceil" rounding (`H_{i+1} = ceil(H_i / 2)`), which is what
every backbone in `tfrcnn.backbones` produces for any input size, odd sizes included.
"""

import keras
from keras import ops
from keras.layers import Conv2D


@keras.saving.register_keras_serializable(package="tfrcnn")
class FeaturePyramid(keras.layers.Layer):
    """Builds the pyramid `P` from backbone maps `C`, both ordered fine to coarse.

    For each input level a 1x1 "lateral" conv maps `C_i` to `channels`. Going from the coarsest
    level down, the running top-down map is upsampled 2x by nearest neighbour, cropped to the
    lateral's `H_i x W_i` (so odd sizes work), and added to the lateral. A 3x3 "output" conv per
    level gives `P_i`. `extra_pool_levels` further levels are made by max-pooling the coarsest
    output with a 1x1 kernel and stride 2 (P6 in the FPN paper and torchvision's
    `LastLevelMaxPool`); each has `ceil(H / 2)` cells.
    Convolutions have biases and no activation, as in the paper.

    Args:
        channels: channels of every output level (256 in the paper).
        num_inputs: number of input levels (4 for ResNet C2..C5).
        extra_pool_levels: number of extra max-pooled levels after the coarsest output (1 for P6).

    Shapes:
        input: list of `num_inputs` tensors `[B, H_i, W_i, C_i]`, fine to coarse.
        output: list of `num_inputs + extra_pool_levels` tensors `[B, H_i, W_i, channels]`, fine to
        coarse.

    Example:
        >>> c = [keras.Input((None, None, 512)), keras.Input((None, None, 1024))]
        >>> p = FeaturePyramid(channels=256, num_inputs=2, extra_pool_levels=1)(c)
        >>> [t.shape[-1] for t in p]  # -> [256, 256, 256]
    """

    def __init__(self, channels=256, num_inputs=4, extra_pool_levels=1, **kwargs):
        super().__init__(**kwargs)
        if int(channels) < 1:
            raise ValueError(f"FeaturePyramid: channels must be >= 1, got {channels}.")
        if int(num_inputs) < 1:
            raise ValueError(f"FeaturePyramid: num_inputs must be >= 1, got {num_inputs}.")
        if int(extra_pool_levels) < 0:
            raise ValueError(
                f"FeaturePyramid: extra_pool_levels must be >= 0, got {extra_pool_levels}."
            )
        self.channels = int(channels)
        self.num_inputs = int(num_inputs)
        self.extra_pool_levels = int(extra_pool_levels)
        # Created here, in a fixed order, so weights restore by structure after a .keras round trip.
        self.lateral_convs = [
            Conv2D(self.channels, 1, padding="valid", name=f"lateral_{i}", dtype=self.dtype_policy)
            for i in range(self.num_inputs)
        ]
        self.output_convs = [
            Conv2D(self.channels, 3, padding="same", name=f"output_{i}", dtype=self.dtype_policy)
            for i in range(self.num_inputs)
        ]

    def _check_shapes(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) != self.num_inputs:
            raise ValueError(
                f"FeaturePyramid '{self.name}': expected a list of {self.num_inputs} feature maps "
                f"(fine to coarse), got {input_shape!r}."
            )
        for shape in input_shape:
            if len(shape) != 4 or shape[-1] is None:
                raise ValueError(
                    f"FeaturePyramid '{self.name}': every input must be [B, H, W, C] with a known "
                    f"C, got {tuple(shape)}."
                )

    def build(self, input_shape):
        self._check_shapes(input_shape)
        for i, shape in enumerate(input_shape):
            self.lateral_convs[i].build(tuple(shape))
            self.output_convs[i].build(tuple(shape[:-1]) + (self.channels,))
        self.built = True

    def call(self, inputs):
        if len(inputs) != self.num_inputs:
            raise ValueError(
                f"FeaturePyramid '{self.name}': expected {self.num_inputs} feature maps, "
                f"got {len(inputs)}."
            )
        top_down = self.lateral_convs[-1](inputs[-1])
        merged = [top_down]
        for i in range(self.num_inputs - 2, -1, -1):
            lateral = self.lateral_convs[i](inputs[i])
            upsampled = ops.repeat(ops.repeat(top_down, 2, axis=1), 2, axis=2)
            size = ops.shape(lateral)
            upsampled = upsampled[:, : size[1], : size[2], :]
            top_down = lateral + upsampled
            merged.append(top_down)
        merged.reverse()
        outputs = [conv(x) for conv, x in zip(self.output_convs, merged)]
        for _ in range(self.extra_pool_levels):
            # Max pool with a 1x1 kernel and stride 2 is a strided subsample: ceil(H / 2) cells.
            outputs.append(outputs[-1][:, ::2, ::2, :])
        return outputs

    def compute_output_shape(self, input_shape):
        self._check_shapes(input_shape)
        shapes = [tuple(s[:-1]) + (self.channels,) for s in input_shape]
        for _ in range(self.extra_pool_levels):
            b, h, w, c = shapes[-1]
            shapes.append(
                (b, None if h is None else (h + 1) // 2, None if w is None else (w + 1) // 2, c)
            )
        return shapes

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "channels": self.channels,
                "num_inputs": self.num_inputs,
                "extra_pool_levels": self.extra_pool_levels,
            }
        )
        return config
