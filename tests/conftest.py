"""Shared test settings: quiet TensorFlow, small thread pools, deterministic seeds."""

import os
from contextlib import contextmanager

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


@contextmanager
def global_policy(name):
    """Run a block under the Keras mixed-precision policy ``name``, restoring the previous one."""
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


# Fixtures of the command-line tests (tests/cli): a small Pascal VOC folder of the synthetic shapes
# (so a model trained on the built-in data can be evaluated on it) and one short training run.
# They live here, not in tests/cli/conftest.py: two files named conftest.py would make
# ``from conftest import ...`` resolve to whichever pytest imported first.


@pytest.fixture(scope="session")
def shapes_voc(tmp_path_factory):
    """A VOC folder of 10 trainval and 4 test synthetic images; ``(root, expected boxes)``."""
    from cli_helpers import write_voc

    from tfrcnn.data import synthetic_splits

    train, val = synthetic_splits(num_train=10, num_val=4, seed=3)
    root = str(tmp_path_factory.mktemp("shapes_voc"))
    return root, write_voc(root, {"trainval": train, "test": val})


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A run folder of the quickest real training run (``cli_helpers.QUICK``)."""
    from cli_helpers import QUICK

    from tfrcnn.cli import main

    run = str(tmp_path_factory.mktemp("run") / "demo")
    # a low score threshold: even this briefly trained model returns detections to score
    assert (
        main(["train", "--run-dir", run, "--set", "model.detection_score_threshold=0.001"] + QUICK)
        == 0
    )
    return run
