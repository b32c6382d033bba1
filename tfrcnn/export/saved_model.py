"""Export a FasterRCNN as a self-contained SavedModel that plain TensorFlow can load and serve.

Shapes: ``B`` images, ``D = max_detections``, ``C`` classes.

The SavedModel needs nothing of tfrcnn to load: ``tf.saved_model.load(path)`` in any TensorFlow
2.x process, TF Serving, or ``saved_model_cli``. Its signatures:

- ``serving_default``: ``images`` uint8 ``[B, H, W, 3]`` (RGB, any ``H x W``; every image of one
  batch has the same size; resized and padded inside the graph) ->
- ``serve_encoded``: ``encoded_images`` string ``[B]`` (JPEG / PNG / BMP / GIF / WebP bytes; images
  of one batch may differ in size: each is decoded to RGB and run on its own, one after the other,
  with ``tf.map_fn`` and fixed output shapes). Each image's size is read from its header first: an
  image above the model's ``max_image_pixels`` (default 40 megapixels) or of an unknown format
  fails the call with ``InvalidArgumentError`` (``encoded_images[i]: image of H x W pixels ... is
  above the decoded-size limit ...``) before anything is decoded; the loaded model keeps serving ->

  both returning ``detection_boxes`` float32 ``[B, D, 4]`` (``[y1, x1, y2, x2]``, original image
  pixels), ``detection_boxes_normalized`` float32 ``[B, D, 4]`` (the same divided by the image
  height / width, in ``[0, 1]``), ``detection_scores`` float32 ``[B, D]``, ``detection_classes``
  int32 ``[B, D]`` (``0 .. C-1``, ``-1`` padding), ``num_detections`` int32 ``[B]``.
  Both take 8-bit pixels, so a non-finite image cannot reach the model (a float tensor is refused
  by the signature); an ``images`` tensor that is not ``[B, H, W, 3]`` fails with
  ``InvalidArgumentError`` naming its shape;
- ``metadata``: no inputs -> ``class_names`` string ``[C]``, ``config_json`` string ``[]`` (the
  model's ``get_config()`` as JSON: ``FasterRCNN.from_config(json.loads(...))`` rebuilds it),
  ``num_classes`` int32 ``[]``, ``max_detections`` int32 ``[]``.

The same metadata is on the loaded object (``loaded.class_names``, ``loaded.config_json``: string
variables) and in ``assets/class_names.txt`` (one name a line) and ``assets/config.json``.

The write is atomic (:mod:`tfrcnn.export.atomic`): the folder is complete or absent. With
``version=N`` it goes to ``path/N/``, the layout TF Serving loads (``--model_base_path=path``);
:func:`find_saved_model` finds the folder to load in either layout.
``FasterRCNN(accelerate="auto")`` models export their accelerated computation
(docs/performance.md, "Exports").
"""

import json
import os
import tempfile

import tensorflow as tf

from tfrcnn.export.atomic import atomic_directory
from tfrcnn.ops.checks import check_image_layout
from tfrcnn.ops.image_header import MAX_IMAGE_PIXELS, check_encoded_image

SIGNATURE_IMAGES = "serving_default"
SIGNATURE_ENCODED = "serve_encoded"
SIGNATURE_METADATA = "metadata"
CLASS_NAMES_FILE = "class_names.txt"
CONFIG_FILE = "config.json"
OUTPUT_KEYS = (
    "detection_boxes",
    "detection_boxes_normalized",
    "detection_scores",
    "detection_classes",
    "num_detections",
)


def model_class_names(model, class_names=None):
    """The class names to export: ``class_names`` if given, else the model's, else ``"class_<i>"``."""
    if class_names is None:
        class_names = getattr(model, "class_names", None)
    if class_names is None:
        class_names = [f"class_{i}" for i in range(model.num_classes)]
    class_names = [str(c) for c in class_names]
    if len(class_names) != model.num_classes:
        raise ValueError(
            f"{len(class_names)} class names given for a model with num_classes={model.num_classes}"
        )
    for name in class_names:
        if "\n" in name or "\r" in name:
            raise ValueError(
                f"class name {name!r} holds a line break; class_names.txt has one name a line"
            )
    return class_names


def model_config_json(model):
    """The model's ``get_config()`` as sorted, indented JSON."""
    return json.dumps(model.get_config(), sort_keys=True, indent=1, default=str)


def tf_variables(model):
    """The ``tf.Variable`` behind each Keras variable of ``model``.

    Tracking these (rather than the Keras variable wrappers) is what makes the SavedModel restorable
    by TF1-style loaders too (``saved_model_cli run``, TF Serving): with the wrappers tracked, they
    fail with "Could not find variable conv6_bn/beta".
    """
    variables = []
    for variable in model.variables:
        value = getattr(variable, "value", variable)
        if not isinstance(value, tf.Variable):
            raise TypeError(
                f"the model variable {variable.path} is not backed by a tf.Variable "
                f"({type(value).__name__}); export needs the TensorFlow backend"
            )
        variables.append(value)
    return variables


class DetectionModule(tf.Module):
    """The tf.Module that is saved: the model's variables, the signatures and the metadata.

    Only the variables of the model are tracked (not the Keras objects), so loading needs no Keras
    and no tfrcnn; the traced functions call the Keras model and capture its variables.

    Args:
        model: a built ``FasterRCNN`` (anything callable on a raw ``[B, H, W, 3]`` image tensor that
            returns the four detection outputs and has ``max_detections``).
        class_names: list of ``C`` strings.
        config_json: the model config as a JSON string.
        assets_dir: a folder holding ``class_names.txt`` and ``config.json`` (copied into the
            SavedModel's ``assets/``).
    """

    def __init__(self, model, class_names, config_json, assets_dir=None):
        super().__init__(name="tfrcnn_detection_module")
        object.__setattr__(self, "_model", model)  # not tracked: only its variables are saved
        self.model_variables = tf_variables(model)
        self.max_detections = int(model.max_detections)
        self.max_image_pixels = int(getattr(model, "max_image_pixels", None) or MAX_IMAGE_PIXELS)
        self.class_names = tf.Variable(
            class_names, dtype=tf.string, trainable=False, name="class_names"
        )
        self.config_json = tf.Variable(
            config_json, dtype=tf.string, trainable=False, name="config_json"
        )
        self.num_classes = tf.Variable(
            len(class_names), dtype=tf.int32, trainable=False, name="num_classes"
        )
        if assets_dir is not None:
            self.class_names_file = tf.saved_model.Asset(os.path.join(assets_dir, CLASS_NAMES_FILE))
            self.config_file = tf.saved_model.Asset(os.path.join(assets_dir, CONFIG_FILE))

    def _detect(self, images):
        """uint8 [B, H, W, 3] -> the output dict (boxes also normalised by the image size)."""
        images = tf.ensure_shape(check_image_layout(images), [None, None, None, 3])
        outputs = self._model(images, training=False)
        shape = tf.cast(tf.shape(images)[1:3], tf.float32)
        size = tf.concat([shape, shape], axis=0)  # (h, w, h, w)
        boxes = tf.cast(outputs["detection_boxes"], tf.float32)
        return {
            "detection_boxes": boxes,
            "detection_boxes_normalized": boxes / tf.maximum(size, 1.0),
            "detection_scores": tf.cast(outputs["detection_scores"], tf.float32),
            "detection_classes": tf.cast(outputs["detection_classes"], tf.int32),
            "num_detections": tf.cast(outputs["num_detections"], tf.int32),
        }

    # The shape is left open in the signature: a signature does not enforce it when called, so the
    # graph checks it (check_image_layout) instead of assuming [B, H, W, 3].
    @tf.function(input_signature=[tf.TensorSpec(None, tf.uint8, name="images")])
    def serve_images(self, images):
        return self._detect(images)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="encoded_images")])
    def serve_encoded(self, encoded_images):
        d = self.max_detections

        def one_image(args):
            data, index = args
            # refuse an image above the pixel limit from its header, before decoding it
            data = check_encoded_image(data, self.max_image_pixels, index=index)
            image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
            image.set_shape([None, None, 3])
            outputs = self._detect(image[None])
            return {key: value[0] for key, value in outputs.items()}

        signature = {
            "detection_boxes": tf.TensorSpec([d, 4], tf.float32),
            "detection_boxes_normalized": tf.TensorSpec([d, 4], tf.float32),
            "detection_scores": tf.TensorSpec([d], tf.float32),
            "detection_classes": tf.TensorSpec([d], tf.int32),
            "num_detections": tf.TensorSpec([], tf.int32),
        }
        indices = tf.range(tf.shape(encoded_images, out_type=tf.int64)[0])
        return tf.map_fn(one_image, (encoded_images, indices), fn_output_signature=signature)

    @tf.function(input_signature=[])
    def metadata(self):
        return {
            "class_names": tf.identity(self.class_names),
            "config_json": tf.identity(self.config_json),
            "num_classes": tf.identity(self.num_classes),
            "max_detections": tf.constant(self.max_detections, tf.int32),
        }


def saved_model(model, path, *, overwrite=True, class_names=None, version=None):
    """Write ``model`` as a SavedModel folder at ``path`` (atomically) and return its path.

    Args:
        model: a ``FasterRCNN`` (any ``roi_method``). The SavedModel computes what ``predict``
            computes, with the model's acceleration where it has it (its XLA-compiled functions
            are compiled by the TensorFlow that loads the SavedModel, on the first call of each
            input size).
        path: the output folder (e.g. ``"savedmodels/tiny"``); parents are created.
        overwrite: replace an existing folder (the old one stays in place until the new one is
            complete); ``False`` raises ``FileExistsError`` if it exists.
        class_names: optional names overriding ``model.class_names`` (default ``class_<i>``).
        version: a positive integer: write the SavedModel into ``path/<version>/``, the layout
            TF Serving expects (``tensorflow_model_server --model_base_path=path`` serves the
            highest version); other versions already in ``path`` stay. ``None``: into ``path``.

    Returns:
        the absolute path of the written SavedModel folder (``path/<version>`` with a version).

    Signatures (see the module docstring): ``serving_default`` (uint8 images), ``serve_encoded``
    (JPEG/PNG bytes), ``metadata``.

    Example:
        >>> tfrcnn.export.saved_model(model, "savedmodels/tiny")
        >>> loaded = tf.saved_model.load("savedmodels/tiny")
        >>> out = loaded.signatures["serving_default"](images=tf.zeros([1, 240, 320, 3], tf.uint8))
        >>> out["detection_boxes"].shape, [n.decode() for n in loaded.class_names.numpy()]
    """
    names = model_class_names(model, class_names)
    config_json = model_config_json(model)
    path = os.path.abspath(os.fspath(path))
    if version is not None:
        if isinstance(version, bool) or not str(version).isdigit() or int(version) < 1:
            raise ValueError(
                f"version must be a positive integer (TF Serving's version folder), got {version!r}"
            )
        path = os.path.join(path, str(int(version)))
    with tempfile.TemporaryDirectory(prefix="tfrcnn_assets_") as assets_dir:
        with open(os.path.join(assets_dir, CLASS_NAMES_FILE), "w", encoding="utf-8") as f:
            f.write("".join(name + "\n" for name in names))
        with open(os.path.join(assets_dir, CONFIG_FILE), "w", encoding="utf-8") as f:
            f.write(config_json + "\n")
        module = DetectionModule(model, names, config_json, assets_dir)
        # Traced as predict runs: the model's accelerated computation, where it has one (its
        # XLA-compiled functions are saved with the graph and compiled when the SavedModel runs).
        signatures = {
            SIGNATURE_IMAGES: module.serve_images.get_concrete_function(),
            SIGNATURE_ENCODED: module.serve_encoded.get_concrete_function(),
            SIGNATURE_METADATA: module.metadata.get_concrete_function(),
        }
        with atomic_directory(path, overwrite=overwrite) as tmp:
            tf.saved_model.save(module, tmp, signatures=signatures)
    return path


def find_saved_model(path):
    """The SavedModel folder to load for ``path``: ``path`` itself when it holds
    ``saved_model.pb``, else its highest numbered version folder (TF Serving's layout,
    ``path/<version>/saved_model.pb``).

    Raises FileNotFoundError when neither exists.
    """
    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    versions = []
    if os.path.isdir(path):
        versions = sorted(
            (int(name), name)
            for name in os.listdir(path)
            if name.isdigit() and os.path.isfile(os.path.join(path, name, "saved_model.pb"))
        )
    if not versions:
        raise FileNotFoundError(
            f"{path} holds no SavedModel: neither saved_model.pb nor a "
            "version folder <n>/saved_model.pb"
        )
    return os.path.join(path, versions[-1][1])
