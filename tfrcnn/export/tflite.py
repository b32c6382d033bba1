"""Export a FasterRCNN to TensorFlow Lite with builtin ops only (no Flex / Select TF ops).

Shapes: ``H x W`` the fixed input size, ``D = max_detections``.

The .tflite takes one uint8 RGB image of a FIXED size, ``images`` ``[1, H, W, 3]`` (the app resizes
the camera frame to ``H x W``; inside the graph the model resizes and pads it to its own network
size, which is fixed too since ``H x W`` is), and returns, by name (signature ``serving_default``):
``detection_boxes`` float32 ``[1, D, 4]`` (``[y1, x1, y2, x2]`` pixels of the ``H x W`` input),
``detection_boxes_normalized`` (divided by ``H`` / ``W``), ``detection_scores`` ``[1, D]``,
``detection_classes`` int32 ``[1, D]`` (``-1`` padding), ``num_detections`` int32 ``[1]``.

A model built with ``roi_method="crop_and_resize"`` (``CropAndResize`` is not a TFLite builtin) is
rebuilt from its config with ``roi_method="gather"`` and given the same weights; both paths compute
the same bilinear ROI Align. The graph is traced in :func:`tflite_tracing`: the plain Keras layers,
and NMS that orders equal scores by index in the graph (TFLite's ``NON_MAX_SUPPRESSION_V4`` kernel
takes them in a heap's order; exact ties occur, e.g. with ``roi_aligned=False`` small proposals
clipped to the same corner pool the same feature cell), so the .tflite selects the detections the
Keras model selects, on images it resizes as on images it only pads. TFLite's ``RESIZE_BILINEAR``
computes TensorFlow's bilinear resize, border clamping included (tests/export/test_tflite_resize.py).

Quantization:

- ``"float32"``: no quantization;
- ``"float16"``: weights stored as float16 (about half the size), computed in float32;
- ``"dynamic_int8"``: weights int8, activations quantized on the fly where a kernel supports it;
- ``"int8"``: weights and activations int8 for the op types in ``INT8_OPS`` (convolutions and
  fully connected layers, where nearly all the compute is), calibrated on ``representative_images``
  (required); the rest (box decoding, top-k, NMS, thresholds: pixel coordinates and sentinel
  values) stays float. Builtins only, no Flex. Accuracy depends on the calibration data: check it
  on your validation set.

Full-integer calibration needs a graph without WHILE loops (TF 2.21's calibrator crashes on them):
with the fixed batch of 1 the model's batched NMS runs without ``tf.map_fn``.
"""

import contextlib
import io
import os
import re
import statistics
import time
import warnings

import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from tfrcnn import accel
from tfrcnn.export.atomic import write_bytes_atomic
from tfrcnn.export.saved_model import tf_variables
from tfrcnn.ops.nms import index_ordered_ties

QUANTIZATIONS = ("float32", "float16", "dynamic_int8", "int8")
SIGNATURE_KEY = "serving_default"
OUTPUT_KEYS = (
    "detection_boxes",
    "detection_boxes_normalized",
    "detection_scores",
    "detection_classes",
    "num_detections",
)
TFLITE_SAFE_ROI_METHOD = "gather"
# Op types given int8 kernels by quantization="int8"; every other op stays float. Not RELU,
# MAXIMUM, PAD...: the box arithmetic after the network uses them too, on pixel coordinates, and
# quantizing those loses every detection (measured: 0 of 37 matched on a trained tiny model).
INT8_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"})
_OP_PATTERN = re.compile(r"^\s*Op#\d+ ([A-Za-z0-9_]+)\(", re.MULTILINE)


@contextlib.contextmanager
def tflite_tracing():
    """The block the export traces its graph in: every accelerated layer computes its plain Keras
    layer (builtin TFLite ops only, no XLA computation), and NMS orders equal scores by index in
    the graph (:func:`tfrcnn.ops.nms.index_ordered_ties`) as TensorFlow's kernel does."""
    with accel.disabled(), index_ordered_ties():
        yield


def tflite_ready_model(model):
    """``model`` itself if its ROI op is TFLite-safe, else a copy rebuilt with ``roi_method="gather"``
    (same config otherwise, same weights)."""
    if getattr(model, "roi_method", TFLITE_SAFE_ROI_METHOD) == TFLITE_SAFE_ROI_METHOD:
        return model
    config = dict(model.get_config())
    config["roi_method"] = TFLITE_SAFE_ROI_METHOD
    config["backbone_weights"] = None  # the weights are copied below; never read a file again
    rebuilt = type(model).from_config(config)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def _input_size(model, input_size):
    if input_size is None:
        return int(model.image_min_side), int(model.image_max_side)
    if len(input_size) != 2 or min(int(s) for s in input_size) < 1:
        raise ValueError(
            f"input_size must be (height, width) with positive sizes, got {input_size!r}"
        )
    return int(input_size[0]), int(input_size[1])


class _FixedSizeModule(tf.Module):
    def __init__(self, model, height, width):
        super().__init__(name="tfrcnn_tflite_module")
        object.__setattr__(self, "_model", model)
        self.model_variables = tf_variables(model)
        self.height, self.width = height, width
        spec = tf.TensorSpec([1, height, width, 3], tf.uint8, name="images")
        self.serve = tf.function(self._serve, input_signature=[spec])

    def _serve(self, images):
        outputs = self._model(images, training=False)
        boxes = tf.cast(outputs["detection_boxes"], tf.float32)
        size = tf.constant([self.height, self.width, self.height, self.width], tf.float32)
        return {
            "detection_boxes": boxes,
            "detection_boxes_normalized": boxes / size,
            "detection_scores": tf.cast(outputs["detection_scores"], tf.float32),
            "detection_classes": tf.cast(outputs["detection_classes"], tf.int32),
            "num_detections": tf.cast(outputs["num_detections"], tf.int32),
        }


def _representative_dataset(images, height, width):
    def generate():
        for image in images:
            image = np.asarray(image)
            if image.ndim == 4:
                image = image[0]
            if image.ndim != 3 or image.shape[-1] != 3:
                raise ValueError(
                    f"representative images must be [H, W, 3] RGB, got shape {image.shape}"
                )
            resized = tf.image.resize(tf.cast(image, tf.float32), (height, width))
            yield [tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)[None]]

    return generate


def _selective_int8(converter, model, height, width):
    """Full-integer kernels for the heavy ops (convolutions and fully connected layers, with their
    fused activations), float for everything else: box decoding, clipping, top-k, NMS and score thresholds work on pixel
    coordinates and sentinel values that int8 cannot hold. Uses TFLite's QuantizationDebugger to
    leave the other op types unquantized."""
    float_ops = operator_names(convert(model, quantization="float32", input_size=(height, width)))
    denylisted = [op for op in float_ops if op not in INT8_OPS]
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=denylisted)
    with warnings.catch_warnings():
        # TensorFlow's debugger builds a tf.lite.Interpreter of its own, which warns that it is
        # deprecated; the exported model itself is run with LiteRT (_runner)
        warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter,
            debug_dataset=converter.representative_dataset,
            debug_options=options,
        )
        return debugger.get_nondebug_quantized_model()


def convert(model, *, quantization="float32", input_size=None, representative_images=None):
    """The .tflite flatbuffer (bytes) of ``model`` at a fixed input size; builtin ops only.

    Args: as :func:`tflite`. Raises ``ValueError`` for an unknown quantization, ``int8`` without
    representative images, or a graph that needs a non-builtin op.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    if quantization == "int8" and not representative_images:
        raise ValueError(
            "quantization='int8' calibrates activations: pass representative_images "
            "(a list of uint8 [H, W, 3] images like the ones the model will see)"
        )
    height, width = _input_size(model, input_size)
    module = _FixedSizeModule(tflite_ready_model(model), height, width)
    with tflite_tracing():
        concrete = module.serve.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.allow_custom_ops = False
    if quantization != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        converter.representative_dataset = _representative_dataset(
            list(representative_images), height, width
        )
    try:
        if quantization == "int8":
            flatbuffer = _selective_int8(converter, model, height, width)
        else:
            flatbuffer = converter.convert()
    except Exception as error:  # ConverterError and friends: say what was attempted
        raise ValueError(
            f"TFLite conversion ({quantization}, input {height}x{width}, builtin ops "
            f"only) failed: {error}"
        ) from error
    bad = [op for op in operator_names(flatbuffer) if op.startswith("Flex") or op == "CUSTOM"]
    if bad:
        raise ValueError(f"the converted model uses non-builtin ops {bad}; TFLite builtins only")
    return flatbuffer


def operator_names(model_content):
    """Sorted unique operator names of a .tflite flatbuffer (bytes), over EVERY subgraph (the
    bodies of WHILE loops included, where e.g. NON_MAX_SUPPRESSION_V4 lives), read from
    ``tf.lite.experimental.Analyzer``'s listing."""
    listing = io.StringIO()
    with contextlib.redirect_stdout(listing):
        tf.lite.experimental.Analyzer.analyze(model_content=bytes(model_content))
    names = set(_OP_PATTERN.findall(listing.getvalue()))
    if not names:
        raise RuntimeError("could not read the operator list of the .tflite model")
    return sorted(names)


def run_tflite(model, images, num_threads=None):
    """Run a .tflite (path or bytes) from :func:`tflite` on ``images`` uint8 ``[1, H, W, 3]``;
    returns the output dict as numpy arrays."""
    runner = _runner(model, num_threads)
    return {k: np.asarray(v) for k, v in runner(images=np.asarray(images, np.uint8)).items()}


def _runner(model, num_threads=None):
    """The ``serving_default`` signature runner of a .tflite (path or bytes), on LiteRT's
    interpreter (``ai-edge-litert``; ``tf.lite.Interpreter`` is deprecated)."""
    if isinstance(model, (bytes, bytearray)):
        interpreter = Interpreter(model_content=bytes(model), num_threads=num_threads)
    else:
        interpreter = Interpreter(model_path=os.fspath(model), num_threads=num_threads)
    return interpreter.get_signature_runner(SIGNATURE_KEY)


def measure_latency(model, input_size, runs=10, num_threads=None):
    """Median wall time (ms) of ``runs`` invocations of a .tflite (path or bytes) on a random
    uint8 image, after one warm-up run."""
    runner = _runner(model, num_threads)
    image = np.random.RandomState(0).randint(0, 256, (1, *input_size, 3)).astype(np.uint8)
    runner(images=image)
    times = []
    for _ in range(max(1, int(runs))):
        start = time.perf_counter()
        runner(images=image)
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def tflite(
    model,
    path,
    *,
    quantization="float32",
    input_size=None,
    representative_images=None,
    overwrite=True,
    latency_runs=10,
    num_threads=None,
):
    """Write ``model`` as a .tflite at ``path`` (atomically) and report on it.

    Args:
        model: a ``FasterRCNN`` (rebuilt with ``roi_method="gather"`` if needed).
        path: the output file (e.g. ``"savedmodels/tiny.tflite"``).
        quantization: ``"float32"``, ``"float16"``, ``"dynamic_int8"`` or ``"int8"``.
        input_size: the fixed ``(H, W)`` of the uint8 input (default ``(image_min_side,
            image_max_side)`` of the model).
        representative_images: uint8 ``[H, W, 3]`` images (any size; resized to ``input_size``)
            to calibrate ``"int8"``; a few dozen are typical.
        overwrite: replace an existing file (``False``: ``FileExistsError``).
        latency_runs: invocations timed for ``latency_ms`` (0 skips timing: ``None``).
        num_threads: interpreter threads for the timing (default: TFLite's).

    Returns:
        ``{"path", "bytes", "operators" (sorted op names), "latency_ms" (median), "quantization",
        "input_size"}``.

    Example:
        >>> report = tfrcnn.export.tflite(model, "savedmodels/tiny.tflite", input_size=(160, 192))
        >>> report["bytes"], report["latency_ms"]
    """
    size = _input_size(model, input_size)
    flatbuffer = convert(
        model,
        quantization=quantization,
        input_size=size,
        representative_images=representative_images,
    )
    path = os.path.abspath(os.fspath(path))
    write_bytes_atomic(path, flatbuffer, overwrite=overwrite)
    latency = None
    if latency_runs:
        latency = measure_latency(flatbuffer, size, latency_runs, num_threads)
    return {
        "path": path,
        "bytes": len(flatbuffer),
        "operators": operator_names(flatbuffer),
        "latency_ms": latency,
        "quantization": quantization,
        "input_size": size,
    }
