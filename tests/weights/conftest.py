"""The torchvision reference outputs, computed once a test run (in a subprocess, torch only)."""

import fcntl
import os
import subprocess
import sys

import numpy as np
import pytest

HARNESS = os.path.join(os.path.dirname(__file__), "torchvision_reference.py")

# torchvision's min_size / max_size for each reference: the 800-pixel models run at 480 x 640, as a
# user who trained with torchvision at that size imports them (``image_min_side`` /
# ``image_max_side``); the 320 model keeps its own sizes, so the preset defaults are covered too.
REFERENCE_SIZES = {
    "fasterrcnn_resnet50_fpn": (480, 640),
    "fasterrcnn_resnet50_fpn_v2": (480, 640),
    "fasterrcnn_mobilenet_v3_large_fpn": (480, 640),
    "fasterrcnn_mobilenet_v3_large_320_fpn": None,
}


def _shared_folder(tmp_path_factory):
    """A folder every pytest-xdist worker of this run sees (the base temp folder without)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def torchvision_reference(tmp_path_factory):
    """``get(arch) -> (npz, pth path)``: tests/weights/torchvision_reference.py's outputs for
    ``arch`` at :data:`REFERENCE_SIZES`, computed once a run and shared by the xdist workers under a
    file lock (``$TFRCNN_PARITY_REFERENCE``: a folder of ready outputs)."""
    cache = {}
    ready = os.environ.get("TFRCNN_PARITY_REFERENCE")

    def get(arch):
        if arch not in cache:
            where = ready
            if not where or not os.path.isfile(os.path.join(where, arch + ".npz")):
                where = str(_shared_folder(tmp_path_factory) / "torchvision_reference")
                os.makedirs(where, exist_ok=True)
                with open(os.path.join(where, arch + ".lock"), "w") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)
                    if not os.path.isfile(os.path.join(where, arch + ".npz")):
                        command = [sys.executable, HARNESS, arch, where]
                        if REFERENCE_SIZES[arch]:
                            low, high = REFERENCE_SIZES[arch]
                            command += ["--min-size", str(low), "--max-size", str(high)]
                        subprocess.run(command, check=True, timeout=3600)
            cache[arch] = (
                np.load(os.path.join(where, arch + ".npz")),
                os.path.join(where, arch + ".pth"),
            )
        return cache[arch]

    return get
