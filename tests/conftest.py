"""Shared test settings: quiet TensorFlow, small thread pools, deterministic seeds."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

if os.environ.get("TFRCNN_TEST_TORCH") == "1":
    # Optional cross-checks against torchvision.ops (tests/ops/test_roi.py). torch must be imported
    # before TensorFlow: the other order can crash the interpreter (seen with torch 2.14.1).
    import torch  # noqa: F401
    import torchvision  # noqa: F401

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    import keras

    keras.utils.set_random_seed(0)
    np.random.seed(0)
    yield


def bccd_path():
    """The shared BCCD dataset folder: $TFRCNN_BCCD or ../shared/datasets/bccd from the project root."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.environ.get("TFRCNN_BCCD", os.path.join(root, "..", "shared", "datasets", "bccd"))


@__import__("contextlib").contextmanager
def global_policy(name):
    """Run a block under the Keras mixed-precision policy ``name``, restoring the previous one."""
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)
