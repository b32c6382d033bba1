"""The torchvision reference outputs, computed once a test session (in a subprocess, torch only)."""

import os
import subprocess
import sys

import numpy as np
import pytest

HARNESS = os.path.join(os.path.dirname(__file__), "torchvision_reference.py")


@pytest.fixture(scope="session")
def torchvision_reference(tmp_path_factory):
    """``get(arch) -> (npz, pth path)``: tests/weights/torchvision_reference.py's outputs for
    ``arch``, run once a session (``$TFRCNN_PARITY_REFERENCE``: a folder of ready outputs)."""
    cache = {}
    folder = os.environ.get("TFRCNN_PARITY_REFERENCE")

    def get(arch):
        if arch not in cache:
            where = folder
            if not where or not os.path.isfile(os.path.join(where, arch + ".npz")):
                where = str(tmp_path_factory.mktemp(arch))
                subprocess.run([sys.executable, HARNESS, arch, where], check=True, timeout=3600)
            cache[arch] = (
                np.load(os.path.join(where, arch + ".npz")),
                os.path.join(where, arch + ".pth"),
            )
        return cache[arch]

    return get
