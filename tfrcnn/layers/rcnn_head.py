"""RCNNHead: the Fast R-CNN detection head (Girshick, 2015): class scores and class-specific boxes.

Shapes: ``K`` ROIs (all images), ``oh x ow x C`` pooled features, ``num_classes`` user classes.
"""

import keras
import tensorflow as tf
from keras.layers import Conv2D


@keras.saving.register_keras_serializable(package="tfrcnn")
class RCNNHead(keras.layers.Layer):
    """Per-ROI classifier (``num_classes + 1`` logits, index 0 = background) and box regressor
    (``num_classes x 4`` deltas, one box per user class).

    Args:
        num_classes: user classes (background is added internally).
        head_type: ``"fc"``: flatten, then ``units`` fully connected layers with ReLU (fc6/fc7);
            ``"conv"``: ``conv_channels`` 3x3 convs with ReLU, then the fc layers (Detectron's
            "4conv1fc" when ``conv_channels=(256,) * 4, units=(1024,)``). With ``units=()`` and a
            rank-2 input (a pooled vector from a ResNet conv5 trunk) only the predictors remain.
        units: widths of the fully connected layers.
        conv_channels: widths of the conv layers (``head_type="conv"``).
        dropout: dropout rate after each fc layer (0.5 in the VGG16 model).
        conv_batch_norm: each conv layer without bias, followed by batch norm (epsilon 1e-5) and
            ReLU (torchvision's ``fasterrcnn_resnet50_fpn_v2`` head).

    Call:
        ``logits, deltas = head(features)``: features ``[K, oh, ow, C]`` (or ``[K, D]``) ->
        logits ``[K, num_classes + 1]``, deltas ``[K, num_classes, 4]``, both float32.
        Predictor weights start at N(0, 0.01) (classifier) and N(0, 0.001) (regressor), as in
        the paper.

    Example:
        >>> logits, deltas = RCNNHead(3, units=(256, 256))(tf.zeros([128, 7, 7, 64]))
        >>> logits.shape, deltas.shape
        (TensorShape([128, 4]), TensorShape([128, 3, 4]))
    """

    def __init__(
        self,
        num_classes,
        head_type="fc",
        units=(1024, 1024),
        conv_channels=(),
        dropout=0.0,
        conv_batch_norm=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if head_type not in ("fc", "conv"):
            raise ValueError(f"head_type must be 'fc' or 'conv', got {head_type!r}")
        self.num_classes = int(num_classes)
        self.head_type = head_type
        self.units = tuple(int(u) for u in units)
        self.conv_channels = tuple(int(c) for c in conv_channels) if head_type == "conv" else ()
        self.dropout = float(dropout)
        self.conv_batch_norm = bool(conv_batch_norm)
        # conv_batch_norm (torchvision's v2 head): conv without bias, batch norm, then ReLU
        self.convs = [
            Conv2D(
                c,
                3,
                padding="same",
                use_bias=not self.conv_batch_norm,
                activation=None if self.conv_batch_norm else "relu",
                name=f"conv{i + 1}",
            )
            for i, c in enumerate(self.conv_channels)
        ]
        self.norms = (
            [
                keras.layers.BatchNormalization(epsilon=1e-5, name=f"conv{i + 1}_bn")
                for i in range(len(self.convs))
            ]
            if self.conv_batch_norm
            else []
        )
        self.flatten = keras.layers.Flatten(name="flatten")
        self.fcs = [
            keras.layers.Dense(u, activation="relu", name=f"fc{i + 6}")
            for i, u in enumerate(self.units)
        ]
        self.drops = (
            [
                keras.layers.Dropout(self.dropout, name=f"drop{i + 6}")
                for i in range(len(self.units))
            ]
            if self.dropout > 0
            else []
        )
        self.classifier = keras.layers.Dense(
            self.num_classes + 1,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
            dtype="float32",
            name="cls_score",
        )
        self.regressor = keras.layers.Dense(
            self.num_classes * 4,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
            dtype="float32",
            name="bbox_pred",
        )

    def build(self, input_shape):
        shape = tuple(input_shape)
        for i, conv in enumerate(self.convs):
            conv.build(shape)
            shape = shape[:-1] + (conv.filters,)
            if self.norms:
                self.norms[i].build(shape)
        if len(shape) > 2:
            flat = 1
            for d in shape[1:]:
                flat = None if (d is None or flat is None) else flat * d
            shape = (shape[0], flat)
        for fc in self.fcs:
            fc.build(shape)
            shape = (shape[0], fc.units)
        self.classifier.build(shape)
        self.regressor.build(shape)

    def call(self, features, training=None):
        x = features
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if self.norms:
                x = keras.ops.relu(self.norms[i](x, training=training))
        if len(x.shape) > 2:
            x = self.flatten(x)
        for i, fc in enumerate(self.fcs):
            x = fc(x)
            if self.drops:
                x = self.drops[i](x, training=training)
        logits = self.classifier(x)
        deltas = tf.reshape(self.regressor(x), [-1, self.num_classes, 4])
        return logits, deltas

    def compute_output_shape(self, input_shape):
        k = input_shape[0]
        return (k, self.num_classes + 1), (k, self.num_classes, 4)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            head_type=self.head_type,
            units=self.units,
            conv_channels=self.conv_channels,
            dropout=self.dropout,
            conv_batch_norm=self.conv_batch_norm,
        )
        return config
