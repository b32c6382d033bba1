"""Atomic writes of export folders and files: a written model is complete or absent.

Everything is first written to a temporary sibling of the target (same folder, hence the same file
system, so the final move is a rename), then moved into place:

- a new target: one ``os.replace`` of the temporary folder / file;
- an existing folder: the old one is renamed aside, the new one renamed in, the old one deleted.
  If the second rename fails, the old folder is renamed back.

An interrupted export (an exception, Ctrl-C, a killed process) therefore leaves the previous complete
model or nothing at the target path. A killed process can leave a hidden ``.NAME.tmp-*`` sibling
behind; :func:`atomic_directory` removes its own temporary folder on any exception.
"""

import contextlib
import os
import shutil
import uuid

TMP_TAG = ".tmp-"
OLD_TAG = ".old-"


def _sibling(path, tag):
    parent, name = os.path.split(os.path.abspath(path))
    return os.path.join(parent, f".{name}{tag}{uuid.uuid4().hex[:12]}")


def _check_target(path, overwrite, want_dir):
    if os.path.lexists(path):
        if not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        if want_dir and not os.path.isdir(path):
            raise FileExistsError(
                f"{path} exists and is not a folder; not replacing it with an exported model folder"
            )
        if not want_dir and os.path.isdir(path):
            raise IsADirectoryError(f"{path} is a folder; an exported file cannot replace it")


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


@contextlib.contextmanager
def atomic_directory(path, overwrite=True):
    """Yield a temporary sibling folder of ``path``; on success move it into place atomically.

    Args:
        path: the final folder (its parent is created if missing).
        overwrite: replace an existing folder (else ``FileExistsError`` before anything is written).

    Example:
        >>> with atomic_directory("savedmodels/tiny") as tmp:
        ...     tf.saved_model.save(module, tmp)
    """
    path = os.path.abspath(os.fspath(path))
    _check_target(path, overwrite, want_dir=True)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = _sibling(path, TMP_TAG)
    os.makedirs(tmp)
    try:
        yield tmp
        _check_target(path, overwrite, want_dir=True)
        replace_directory(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def replace_directory(src, dst):
    """Move folder ``src`` to ``dst``, replacing an existing ``dst`` (old aside, new in, old deleted)."""
    if not os.path.lexists(dst):
        os.replace(src, dst)
        return
    old = _sibling(dst, OLD_TAG)
    os.replace(dst, old)
    try:
        os.replace(src, dst)
    except BaseException:
        os.replace(old, dst)  # put the previous model back
        raise
    _remove(old)


@contextlib.contextmanager
def atomic_file(path, overwrite=True, suffix=""):
    """Yield a temporary sibling file path of ``path``; on success ``os.replace`` it into place.

    ``suffix`` ends the temporary name (e.g. ``".keras"``, which ``keras.Model.save`` requires).

    Example:
        >>> with atomic_file("model.tflite") as tmp:
        ...     open(tmp, "wb").write(flatbuffer)
    """
    path = os.path.abspath(os.fspath(path))
    _check_target(path, overwrite, want_dir=False)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = _sibling(path, TMP_TAG) + suffix
    try:
        yield tmp
        if not os.path.exists(tmp):
            raise FileNotFoundError(f"nothing was written to the temporary file {tmp}")
        _check_target(path, overwrite, want_dir=False)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def write_bytes_atomic(path, data, overwrite=True):
    """Write ``data`` to ``path`` atomically (complete file or the previous one)."""
    with atomic_file(path, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
