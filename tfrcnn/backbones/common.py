"""Shared helpers for the backbones: resolving `weights=`, loading a weights file, freezing.

`weights` is one of:
  - `None`: random initialisation (the default);
  - a path to a local file: a legacy Keras `.h5` / `.hdf5` file (such as the keras.applications
    ImageNet files) is loaded **by layer name**, so a network built with the keras.applications
    layer names takes the official files; a Keras 3 `.weights.h5` (or `.keras`) file is loaded **by
    structure** and must come from the same backbone (e.g. `backbone.save_weights(path)`);
  - `"imagenet"`: the keras.applications file from the Keras cache (`$KERAS_HOME/models`, default
    `~/.keras/models`); when absent it is downloaded there from Keras' address, MD5-checked as Keras
    does, with a progress bar (:mod:`tfrcnn.weights.download`); offline, one line says where to
    put the file or to pass its path.
"""

import os

import keras

from tfrcnn.ops.gradients import recompute, tape_is_recording

IMAGENET = "imagenet"
LEGACY_H5_SUFFIXES = (".h5", ".hdf5")
KERAS3_SUFFIXES = (".weights.h5", ".weights.json", ".keras")


def keras_cache_dirs():
    """The folders where Keras caches downloaded model files, in the order Keras uses them."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    dirs = [os.path.join(home, "models"), os.path.join("/tmp", ".keras", "models")]
    return list(dict.fromkeys(dirs))


def find_cached_imagenet_file(file_names):
    """Returns the first of `file_names` found in a Keras cache folder, or None."""
    for folder in keras_cache_dirs():
        for file_name in file_names:
            path = os.path.join(folder, file_name)
            if os.path.isfile(path):
                return path
    return None


def resolve_weights(weights, backbone, imagenet_files=()):
    """Turns the `weights` argument into a local file path (or None for random init).

    Args:
        weights: `None`, `"imagenet"` or a path (str / os.PathLike).
        backbone: the backbone name, for messages.
        imagenet_files: keras.applications cache file names that hold this network's ImageNet
            weights (no-top first); empty when no ImageNet file exists for it.

    Raises:
        ValueError: unknown value, missing file, or `"imagenet"` not in the cache.
    """
    if weights is None:
        return None
    if isinstance(weights, str) and weights == IMAGENET:
        if not imagenet_files:
            raise ValueError(
                f"Backbone '{backbone}' has no keras.applications ImageNet weights; use "
                f"weights=None (random initialisation) or weights='/path/to/weights.h5'."
            )
        path = find_cached_imagenet_file(imagenet_files)
        if path is None:
            from tfrcnn.weights.registry import fetch_keras_imagenet

            path = fetch_keras_imagenet(tuple(imagenet_files))
        return path
    if isinstance(weights, os.PathLike):
        weights = os.fspath(weights)
    if not isinstance(weights, str):
        raise ValueError(
            f"Backbone '{backbone}': weights must be None, 'imagenet' or a path to a weights file, "
            f"got {weights!r}."
        )
    if not os.path.isfile(weights):
        raise ValueError(
            f"Backbone '{backbone}': weights file {weights!r} does not exist. Pass None for random "
            f"initialisation, 'imagenet', or the path of a .h5 / .weights.h5 file."
        )
    if not weights.lower().endswith(LEGACY_H5_SUFFIXES + KERAS3_SUFFIXES):
        raise ValueError(
            f"Backbone '{backbone}': weights file {weights!r} has an unsupported extension; "
            f"accepted: legacy Keras '.h5' / '.hdf5' (loaded by layer name) or Keras 3 "
            f"'.weights.h5' / '.keras' (loaded by structure)."
        )
    return weights


def _legacy_h5_layer_names(path):
    import h5py

    with h5py.File(path, "r") as f:
        group = f
        if "layer_names" not in f.attrs and "model_weights" in f:
            group = f["model_weights"]
        if "layer_names" not in group.attrs:
            raise ValueError(
                f"Weights file {path!r} is not a Keras '.h5' weights file (no 'layer_names'); "
                f"Keras 3 weight files must be named '*.weights.h5'."
            )
        names = []
        for name in group.attrs["layer_names"]:
            names.append(name.decode("utf8") if hasattr(name, "decode") else str(name))
        return names


def load_weights_file(model, path, *, backbone, required_layers=None):
    """Loads `path` into `model` (see the module docstring for the two file kinds).

    Args:
        model: the keras.Model to fill.
        path: a file path returned by `resolve_weights`.
        backbone: the backbone name, for messages.
        required_layers: for legacy `.h5` files, the names of the layers with weights that the file
            must provide (default: every layer of `model` that has weights). Layers left out (e.g. a
            freshly added FPN) keep their random initialisation.

    Raises:
        ValueError: the file does not fit the network; says which layers are missing.
    """
    lower = path.lower()
    if lower.endswith(LEGACY_H5_SUFFIXES) and not lower.endswith(".weights.h5"):
        if required_layers is None:
            required_layers = [layer.name for layer in model.layers if layer.weights]
        in_file = set(_legacy_h5_layer_names(path))
        missing = [name for name in required_layers if name not in in_file]
        if missing:
            raise ValueError(
                f"Backbone '{backbone}': weights file {path!r} lacks {len(missing)} of the "
                f"{len(required_layers)} layers it must provide (by name), e.g. {missing[:5]}. "
                f"Is it a file for this network?"
            )
        try:
            model.load_weights(path, by_name=True)
        except ValueError as error:
            raise ValueError(
                f"Backbone '{backbone}': weights file {path!r} does not fit the network: {error}"
            ) from error
        return
    try:
        model.load_weights(path)
    except Exception as error:  # Keras raises several types on a structure mismatch.
        raise ValueError(
            f"Backbone '{backbone}': could not load {path!r} by structure ({error}). Keras 3 "
            f"'.weights.h5' files must come from the same backbone (backbone.save_weights(path)); "
            f"for ImageNet files use the keras.applications '.h5' file, which loads by layer name."
        ) from error


def finish_backbone(
    model, *, weights_path, backbone, trainable, by_name_model=None, required_layers=None
):
    """Loads weights (if any) and applies `trainable` (False freezes every layer, BatchNorm too).

    Legacy `.h5` files load by name into `by_name_model` (default `model`, e.g. a nested
    keras.applications network whose layers carry the official names); Keras 3 files load by
    structure into `model`.
    """
    if weights_path is not None:
        lower = weights_path.lower()
        legacy = lower.endswith(LEGACY_H5_SUFFIXES) and not lower.endswith(".weights.h5")
        target = by_name_model if (legacy and by_name_model is not None) else model
        load_weights_file(
            target,
            weights_path,
            backbone=backbone,
            required_layers=required_layers if legacy else None,
        )
    if not trainable:
        # A non-trainable BatchNormalization runs in inference mode in Keras 3 (frozen statistics).
        model.trainable = False
    return model


@keras.saving.register_keras_serializable(package="tfrcnn")
class BackboneModel(keras.Model):
    """A functional keras.Model that always returns a LIST of outputs, even when there is one.

    (A plain functional model returns a bare tensor when called eagerly on a single output but a
    list when called symbolically; backbones promise a list of feature maps either way.)

    Build it like a functional model: `BackboneModel(inputs, [feature_map], name=...)`.

    Shapes: input `[B, H, W, 3]`; output a list of `[B, H_i, W_i, C_i]`, fine to coarse.

    Example:
        >>> inputs = keras.Input((None, None, 3))
        >>> model = BackboneModel(inputs, [keras.layers.Conv2D(8, 3, strides=2)(inputs)])
        >>> len(model(np.zeros((1, 32, 32, 3), "float32")))  # 1
    """

    def recompute_until(self, *layer_names):
        """In training, keep only the outputs of ``layer_names`` (in network order) for the
        backward pass of the layers from the input to the last of them, and compute the tensors
        between them again in the backward pass, one segment at a time
        (:func:`tfrcnn.ops.gradients.recompute`): the activations of the first, largest feature
        maps are then not all alive at the step's peak. Each layer's output must be the only
        path from the layers before it to the rest of the network. Outputs, gradients and moving
        statistics are those of the plain model; no names turn it off."""
        segments = None
        if layer_names:
            cuts = [self.get_layer(name).output for name in layer_names]
            starts = [self.inputs[0], *cuts[:-1]]
            segments = [
                keras.Model(start, cut, name=f"{self.name}_segment{i}")
                for i, (start, cut) in enumerate(zip(starts, cuts))
            ]
            segments.append(keras.Model(cuts, self.outputs, name=f"{self.name}_rest"))
        # not tracked: the segments share this model's layers and weights
        object.__setattr__(self, "_recompute_segments", segments)

    def call(self, inputs, training=None, mask=None):
        segments = getattr(self, "_recompute_segments", None)
        if segments is not None and training and mask is None and tape_is_recording():
            x, cuts = inputs, []
            for segment in segments[:-1]:
                state = [
                    v
                    for layer in segment.layers
                    if layer.trainable
                    for v in layer.non_trainable_variables
                ]
                x = recompute(lambda value, s=segment: s(value, training=True), x, state)
                cuts.append(x)
            outputs = segments[-1](cuts, training=True)
        else:
            outputs = super().call(inputs, training=training, mask=mask)
        if isinstance(outputs, (list, tuple)):
            return list(outputs)
        return [outputs]


def weighted_layer_names(model, exclude=()):
    """Names of the top-level layers of `model` that hold weights, minus instances of `exclude`."""
    return [
        layer.name
        for layer in model.layers
        if layer.weights and not isinstance(layer, tuple(exclude))
    ]


def model_name(name, name_prefix):
    """The returned model's name: `name`, or `f"{name_prefix}_{name}"` when a prefix is given."""
    return f"{name_prefix}_{name}" if name_prefix else name


def image_input(name="image"):
    """`[B, H, W, 3]` float32 RGB pixels in [0, 255], any H and W."""
    return keras.Input(shape=(None, None, 3), dtype="float32", name=name)
