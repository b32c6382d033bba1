"""torchvision's ResNet50-FPN backbone as plain Keras layers, computing what torchvision computes.

Shapes: ``B`` images, ``H x W`` padded input (a multiple of 32 for exact pyramid sizes), ``C``
FPN channels.

What differs from the keras.applications ResNet50 (:mod:`tfrcnn.backbones.resnet`):

- ResNet v1.5: the stride of a bottleneck's first block is on its 3x3 convolution, not its 1x1;
- symmetric zero padding (torch ``padding=k // 2``) before every strided convolution and the
  max pool, so a stride-2 layer maps ``H`` to ``floor((H - 1) / 2) + 1`` like torch;
- convolutions without bias, batch norm with epsilon ``1e-5``;
- the FPN: lateral 1x1 and output 3x3 convolutions (with bias; v2: without bias, each followed by
  batch norm), a nearest-neighbour top-down path resized to the lateral map's size, and the extra
  ``"pool"`` level as torchvision's ``max_pool2d(P5, kernel_size=1, stride=2)``.

Layers are named after torchvision's modules with ``.`` as ``_`` (``layer1_0_conv1``,
``fpn_inner_blocks_0_0``), so that :mod:`tfrcnn.weights` maps checkpoints by name.

Inputs are RGB pixels in [0, 255]; the model's first layer normalises them with the ImageNet mean
and std of torchvision (``ImageNormalization("torch")``). ``trainable_layers`` (0 .. 5) follows
torchvision's ``trainable_backbone_layers``: the last ``n`` of (``layer4``, ``layer3``,
``layer2``, ``layer1``, ``conv1``) train; batch norm is always frozen (inference mode), as
torchvision's ``FrozenBatchNorm2d``.
"""

import keras
from keras import layers

from tfrcnn.layers.preprocessing import ImageNormalization

NAME = "torchvision_resnet50_fpn"
STRIDES = (4, 8, 16, 32, 64)
BN_EPSILON = 1e-5
RESNET50_STAGES = ((3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2))  # blocks, width, stride
TRAINABLE_ORDER = ("layer4", "layer3", "layer2", "layer1", "conv1")


def _name(module):
    return module.replace(".", "_")


def _conv(x, filters, kernel, stride, module, use_bias=False):
    """A torch ``Conv2d(kernel, stride, padding=kernel // 2)``."""
    pad = kernel // 2
    if pad and stride > 1:
        x = layers.ZeroPadding2D(pad, name=_name(module) + "_pad")(x)
        padding = "valid"
    else:
        padding = "same" if pad else "valid"
    return layers.Conv2D(
        filters, kernel, stride, padding=padding, use_bias=use_bias, name=_name(module)
    )(x)


def _bn(x, module):
    return layers.BatchNormalization(epsilon=BN_EPSILON, name=_name(module))(x)


def _bottleneck(x, width, stride, prefix, downsample):
    shortcut = x
    y = layers.ReLU()(_bn(_conv(x, width, 1, 1, prefix + "conv1"), prefix + "bn1"))
    y = layers.ReLU()(_bn(_conv(y, width, 3, stride, prefix + "conv2"), prefix + "bn2"))
    y = _bn(_conv(y, 4 * width, 1, 1, prefix + "conv3"), prefix + "bn3")
    if downsample:
        shortcut = _bn(
            _conv(x, 4 * width, 1, stride, prefix + "downsample.0"), prefix + "downsample.1"
        )
    return layers.ReLU()(layers.Add()([y, shortcut]))


def resnet50_v15_stages(x):
    """torchvision's ResNet50 body; returns ``[C2, C3, C4, C5]`` (strides 4, 8, 16, 32)."""
    x = layers.ReLU()(_bn(_conv(x, 64, 7, 2, "conv1"), "bn1"))
    x = layers.ZeroPadding2D(1, name="maxpool_pad")(x)  # after a ReLU: zero padding == -inf padding
    x = layers.MaxPooling2D(3, 2, name="maxpool")(x)
    outputs = []
    for i, (blocks, width, stride) in enumerate(RESNET50_STAGES, start=1):
        for b in range(blocks):
            x = _bottleneck(x, width, stride if b == 0 else 1, f"layer{i}.{b}.", b == 0)
        outputs.append(x)
    return outputs


@keras.saving.register_keras_serializable(package="tfrcnn")
class NearestResize(keras.layers.Layer):
    """``x`` resized to the height and width of ``like`` by torch's ``interpolate(mode="nearest")``:
    output cell ``i`` reads input cell ``floor(i * in / out)``."""

    def call(self, x, like):
        ops = keras.ops
        for axis in (1, 2):
            size_in = ops.shape(x)[axis]
            size_out = ops.shape(like)[axis]
            scale = ops.cast(size_in, "float32") / ops.cast(size_out, "float32")
            index = ops.cast(ops.floor(ops.cast(ops.arange(size_out), "float32") * scale), "int32")
            x = ops.take(x, ops.minimum(index, size_in - 1), axis=axis)
        return x

    def compute_output_shape(self, x_shape, like_shape):
        return (x_shape[0], like_shape[1], like_shape[2], x_shape[3])


def torchvision_fpn(c_maps, channels, normed=False, prefix="fpn."):
    """torchvision's ``FeaturePyramidNetwork`` with ``LastLevelMaxPool``: ``[P..., pool]``."""

    def block(x, kind, i, kernel):
        module = f"{prefix}{kind}.{i}.0"
        x = _conv(x, channels, kernel, 1, module, use_bias=not normed)
        if normed:
            x = _bn(x, f"{prefix}{kind}.{i}.1")
        return x

    last = len(c_maps) - 1
    inner = block(c_maps[last], "inner_blocks", last, 1)
    results = [block(inner, "layer_blocks", last, 3)]
    for i in range(last - 1, -1, -1):
        lateral = block(c_maps[i], "inner_blocks", i, 1)
        top_down = NearestResize(name=_name(f"{prefix}top_down.{i}"))(inner, lateral)
        inner = layers.Add(name=_name(f"{prefix}merge.{i}"))([lateral, top_down])
        results.insert(0, block(inner, "layer_blocks", i, 3))
    results.append(layers.MaxPooling2D(1, 2, name=_name(f"{prefix}pool"))(results[-1]))
    return results


def freeze_torchvision_style(model, trainable_layers, order=TRAINABLE_ORDER):
    """Trains only the last ``trainable_layers`` of ``order`` (layer-name prefixes) and the FPN;
    batch norm always runs in inference mode with frozen statistics and affine terms."""
    if not 0 <= trainable_layers <= len(order):
        raise ValueError(
            f"trainable_backbone_layers must be in 0..{len(order)}, got {trainable_layers}"
        )
    train = order[:trainable_layers]
    body_prefixes = tuple(p + "_" for p in order) + ("conv1", "bn1")
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False
        elif not layer.weights:
            continue
        elif layer.name.startswith(body_prefixes):
            stage = "conv1" if layer.name in ("conv1", "bn1") else layer.name.split("_")[0]
            layer.trainable = stage in train


def _trainable_layers(trainable):
    """``trainable_backbone``: True -> torchvision's default 3 stages, False -> 0, or an int."""
    if trainable is True:
        return 3
    if trainable is False:
        return 0
    return int(trainable)


def load_torchvision_imagenet(model, weights, arch="resnet50", strip=""):
    """Loads torchvision's ImageNet classifier weights (a ``.pth`` path, or ``"imagenet"``: the
    published file, downloaded into the Keras cache when absent) into the body layers of
    ``model``; the FPN keeps its initialisation."""
    from tfrcnn.weights import registry, torchvision_spec
    from tfrcnn.weights.assign import assign_modules
    from tfrcnn.weights.pth import load_state_dict

    path = registry.fetch_torchvision(arch) if weights == "imagenet" else weights
    state = load_state_dict(path)
    modules = torchvision_spec.convert_modules(state, arch, source=str(path))
    body = {k: v for k, v in modules.items() if not k.startswith(("fc", "classifier"))}
    assign_modules(model, body, strip=strip, source=str(path))


def build_torchvision_resnet50_fpn(
    weights=None, trainable=True, fpn_channels=256, v2=False, name_prefix=None
):
    """torchvision's ``fasterrcnn_resnet50_fpn`` (``v2=True``: ``_v2``) backbone.

    Args:
        weights: None (random), ``"imagenet"`` (torchvision's ResNet50 IMAGENET1K_V1, downloaded
            on demand) or the path of a torchvision ResNet50 ``.pth``; the FPN stays random.
        trainable: torchvision's ``trainable_backbone_layers``: an int 0..5, True (3) or False (0).
        fpn_channels: channels of every pyramid level.
        name_prefix: optional prefix of the model name.

    Returns:
        ``(model, (4, 8, 16, 32, 64))``: ``model`` maps ``[B, H, W, 3]`` RGB in [0, 255] to
        ``[P2, P3, P4, P5, pool]``, each ``[B, h, w, fpn_channels]``.

    Example:
        >>> model, strides = build_torchvision_resnet50_fpn(fpn_channels=64)
        >>> [f.shape[1:3] for f in model(np.zeros((1, 64, 96, 3), "float32"))]
        [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
    """
    inputs = keras.Input((None, None, 3), name="image")
    x = ImageNormalization("torch", name="normalization")(inputs)
    p_maps = torchvision_fpn(resnet50_v15_stages(x), fpn_channels, normed=v2)
    name = NAME + ("_v2" if v2 else "")
    model = keras.Model(inputs, p_maps, name=f"{name_prefix}_{name}" if name_prefix else name)
    if weights is not None:
        load_torchvision_imagenet(model, weights)
    freeze_torchvision_style(model, _trainable_layers(trainable))
    return model, STRIDES


def build_torchvision_resnet50_fpn_v2(
    weights=None, trainable=True, fpn_channels=256, name_prefix=None
):
    """:func:`build_torchvision_resnet50_fpn` with ``v2=True`` (batch norm in the FPN)."""
    return build_torchvision_resnet50_fpn(weights, trainable, fpn_channels, True, name_prefix)
