"""The data formats tfrcnn reads, and :func:`detect_format`, which names the format of a path from
the path and a peek at the file, without importing TensorFlow (the command line checks a path
before anything starts).

Example::

    detect_format("datasets/bccd")                     # "voc"
    detect_format("annotations/instances_val.json")    # "coco"
    detect_format("data/bccd-train-*.tfrecord")        # "tfrecord"
"""

import glob
import os

FORMATS = ("voc", "coco", "tfrecord")


class SourceError(ValueError):
    """A data path that is missing or in no format tfrcnn reads; the message says what to pass."""


def is_glob(path):
    """True when ``path`` is a glob pattern (it holds ``*``, ``?`` or ``[``)."""
    return any(c in path for c in "*?[")


def detect_format(path):
    """``"voc"``, ``"coco"`` or ``"tfrecord"`` for a data path, judged from the path and a peek.

    - a folder holding ``Annotations/`` -> ``"voc"``;
    - a ``.json`` file (or any file starting with ``{``) -> ``"coco"``;
    - a glob pattern or file matching ``*.tfrecord*`` / ``*.record*``, or a file that starts like a
      TFRecord (an 8-byte length and a 4-byte CRC) -> ``"tfrecord"``.

    Raises:
      SourceError: the path does not exist, or is none of these (the message says what is accepted).
    """
    path = os.fspath(path)
    if is_glob(path):
        matches = sorted(glob.glob(path))
        if not matches:
            raise SourceError(
                f"no files match {path}: give an existing TFRecord pattern, e.g. "
                "'data/train-*.tfrecord'"
            )
        if all(os.path.isfile(m) and _looks_like_tfrecord(m) for m in matches):
            return "tfrecord"
        raise SourceError(f"{path} matches files that are not TFRecords (e.g. {matches[0]})")
    if not os.path.exists(path):
        raise SourceError(f"data path not found: {path}")
    if os.path.isdir(path):
        if os.path.isdir(os.path.join(path, "Annotations")):
            return "voc"
        raise SourceError(
            f"{path} is a folder without Annotations/: a Pascal VOC folder holds "
            "Annotations/, ImageSets/Main/ and JPEGImages/ (for COCO pass the JSON "
            "file, for TFRecords a file pattern)"
        )
    if path.lower().endswith(".json") or _first_byte(path) == b"{":
        return "coco"
    if _looks_like_tfrecord(path):
        return "tfrecord"
    raise SourceError(
        f"{path} is neither a COCO JSON file nor a TFRecord file; pass a VOC folder, "
        "a COCO instances JSON or a TFRecord pattern"
    )


def _first_byte(path):
    with open(path, "rb") as f:
        head = f.read(64).lstrip()
    return head[:1]


def _looks_like_tfrecord(path):
    """True when the file starts with a TFRecord frame: a uint64 length whose masked CRC32C
    follows (checked with TensorFlow's algorithm written out here: no TensorFlow import)."""
    with open(path, "rb") as f:
        head = f.read(12)
    if len(head) < 12:
        return False
    return int.from_bytes(head[8:12], "little") == _masked_crc32c(head[:8])


def _crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def _masked_crc32c(data):
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
