"""Fixtures of the command-line tests: a small Pascal VOC folder of the synthetic shapes (so a
model trained on the built-in data can be evaluated on it) and one short training run."""

import pytest
from cli_helpers import QUICK, write_voc


@pytest.fixture(scope="session")
def shapes_voc(tmp_path_factory):
    """A VOC folder of 10 trainval and 4 test synthetic images; ``(root, expected boxes)``."""
    from tfrcnn.data import synthetic_splits

    train, val = synthetic_splits(num_train=10, num_val=4, seed=3)
    root = str(tmp_path_factory.mktemp("shapes_voc"))
    return root, write_voc(root, {"trainval": train, "test": val})


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A run folder of the quickest real training run (see ``QUICK``)."""
    from tfrcnn.cli import main

    run = str(tmp_path_factory.mktemp("run") / "demo")
    # a low score threshold: even this briefly trained model returns detections to score
    assert (
        main(["train", "--run-dir", run, "--set", "model.detection_score_threshold=0.001"] + QUICK)
        == 0
    )
    return run
