"""Every notebook in notebooks/ runs top to bottom without an error, at small settings.

The notebooks are found by glob, so a new notebook is tested as soon as it is added. Each runs in a
fresh Jupyter kernel of the Python running the tests (the ``python3`` kernel spec is written to a
temporary folder that comes first on ``JUPYTER_PATH``, so a ``python3`` kernel registered elsewhere
for another interpreter is never picked up), with the notebook folder as working directory and
``TFRCNN_NOTEBOOK_SMALL=1``.
"""

import glob
import os

import pytest

NOTEBOOK_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks"
)
NOTEBOOKS = sorted(glob.glob(os.path.join(NOTEBOOK_DIR, "*.ipynb")))
CELL_TIMEOUT = 300  # seconds a cell


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebooks found in {NOTEBOOK_DIR}"


@pytest.fixture
def kernel_of_this_python(tmp_path, monkeypatch):
    """A ``python3`` kernel spec that starts ``sys.executable``, first on the Jupyter path."""
    from ipykernel.kernelspec import install

    install(kernel_name="python3", display_name="Python 3 (tests)", prefix=str(tmp_path))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))
    monkeypatch.setenv("TFRCNN_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    return "python3"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_notebook_runs(path, kernel_of_this_python):
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        kernel_name=kernel_of_this_python,
        timeout=CELL_TIMEOUT,
        startup_timeout=120,
        resources={"metadata": {"path": NOTEBOOK_DIR}},
    )
    try:
        client.execute()
    except CellExecutionError as error:
        pytest.fail(f"{os.path.basename(path)}: a cell raised:\n{error}")
