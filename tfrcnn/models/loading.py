"""Loading a saved ``.keras`` FasterRCNN, with Keras' ``safe_mode`` on and one clear line for a
file that is not one.

A FasterRCNN's config holds only registered tfrcnn layers and plain values (no ``Lambda`` layer,
no serialized Python code), so it loads with ``safe_mode=True``, Keras' default, which refuses to
deserialize code.
"""

import json
import os
import zipfile

import keras

MODEL_CLASS = "tfrcnn>FasterRCNN"


class ModelFileError(ValueError):
    """A file given as a tfrcnn model is not one. The message is one line naming the file."""


def check_model_file(path):
    """Raise :class:`ModelFileError` (one line naming ``path``) unless it is a ``.keras`` file
    holding a tfrcnn ``FasterRCNN``; returns its ``config.json`` dict.

    Only the zip's ``config.json`` is read: nothing is deserialized or run.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"model file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(
            f"{path} is not a .keras model file (not a zip archive); a tfrcnn "
            "model is saved with model.save('name.keras')"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            if "config.json" not in archive.namelist():
                raise ModelFileError(
                    f"{path} is a zip archive but not a .keras model file (no config.json); "
                    "give a .keras file written by tfrcnn train or FasterRCNN.save"
                )
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        if isinstance(e, ModelFileError):
            raise
        raise ModelFileError(f"{path} is not a readable .keras model file ({e})") from None
    name = config.get("registered_name") or config.get("class_name")
    if name != MODEL_CLASS:
        raise ModelFileError(
            f"{path} holds a Keras model of class {name!r}, not a tfrcnn FasterRCNN; "
            "give a .keras file written by tfrcnn train or FasterRCNN.save"
        )
    return config


def load_model(path, compile=True):
    """Load a FasterRCNN saved as ``.keras``, with Keras' ``safe_mode`` on.

    Raises:
        ModelFileError: ``path`` is missing, not a ``.keras`` file, or holds another model
            (one line naming the file).

    Example:
        >>> model = tfrcnn.models.load_model("runs/demo/model.keras")
    """
    check_model_file(path)
    import tfrcnn.layers  # noqa: F401  (registers every layer before deserializing)

    return keras.models.load_model(os.fspath(path), compile=compile, safe_mode=True)
