"""Settings shared by the notebooks in this folder.

``TFRCNN_NOTEBOOK_SMALL=1`` (set by ``tests/test_notebooks.py`` in CI) asks every notebook to shrink
its heavy steps; the notebooks saved in the repository were run without it.
"""
import os

SMALL = os.environ.get("TFRCNN_NOTEBOOK_SMALL", "0") not in ("", "0", "false", "False")

# The project root is this folder's parent; the shared BCCD dataset sits next to it by default.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BCCD = os.environ.get("TFRCNN_BCCD", os.path.join(ROOT, "..", "shared", "datasets", "bccd"))


def bccd_file(*parts):
    """Path of a file in the BCCD folder, or None when it is not there."""
    path = os.path.join(BCCD, *parts)
    return path if os.path.exists(path) else None
