"""Export: a self-contained SavedModel (serving, any image size, JPEG/PNG bytes) and TFLite
(fixed input size, builtin ops only). Every write is atomic: complete or absent.

Example:
    >>> import tfrcnn.export
    >>> tfrcnn.export.saved_model(model, "savedmodels/tiny")
    >>> report = tfrcnn.export.tflite(model, "savedmodels/tiny.tflite", input_size=(160, 192))
"""

from tfrcnn.export.atomic import atomic_directory, atomic_file, write_bytes_atomic
from tfrcnn.export.saved_model import saved_model
from tfrcnn.export.tflite import QUANTIZATIONS, operator_names, run_tflite, tflite

__all__ = [
    "saved_model",
    "tflite",
    "run_tflite",
    "operator_names",
    "QUANTIZATIONS",
    "atomic_directory",
    "atomic_file",
    "write_bytes_atomic",
]
