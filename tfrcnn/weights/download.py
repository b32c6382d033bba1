"""Download a weights file on demand into the Keras cache, hash-checked, atomically, with progress.

:func:`fetch` returns the local path of a published file: the cached copy when one of the Keras cache
folders (``$KERAS_HOME/models``, default ``~/.keras/models``) holds it with the right hash, else a
fresh download into the first of them. The file is streamed into a hidden temporary sibling while its
hash is computed, and renamed into place only when the hash matches (:mod:`tfrcnn.export.atomic`), so
an interrupted or corrupt download leaves nothing behind.

Hashes follow the publishers' conventions: a 64-digit hex string is a SHA-256, a 32-digit one an MD5
(keras.applications), a shorter one a prefix of the SHA-256 (torchvision, which puts the first 8
digits in the file name: ``resnet50-0676ba61.pth``); with no hash given, that file-name prefix is
checked.

The address of every file is ``base + file name``; the base is the publisher's (``url``'s folder)
unless ``base_url=`` or the ``TFRCNN_WEIGHTS_BASE_URL`` environment variable replaces it (a mirror,
or a server on 127.0.0.1 in the tests).

Example:
    >>> path = fetch("https://download.pytorch.org/models/resnet50-0676ba61.pth")
"""

import hashlib
import os
import re
import sys
import time
import urllib.error
import urllib.request

from tfrcnn.export.atomic import atomic_file

BASE_URL_ENV = "TFRCNN_WEIGHTS_BASE_URL"
CHUNK_BYTES = 1 << 20
TIMEOUT_SECONDS = 30
_TORCH_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")


class DownloadError(OSError):
    """No network, an HTTP error or a wrong hash; the message is one line and names the file."""


def cache_dirs():
    """The folders where Keras caches downloaded model files, in the order Keras uses them."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    dirs = [os.path.join(home, "models"), os.path.join("/tmp", ".keras", "models")]
    return list(dict.fromkeys(dirs))


def hash_from_file_name(file_name):
    """The SHA-256 prefix torchvision puts in a file name (``resnet50-0676ba61.pth``), or None."""
    match = _TORCH_HASH_IN_NAME.search(file_name)
    return match.group(1) if match else None


def _algorithm(file_hash):
    return "md5" if len(file_hash) == 32 else "sha256"


def file_digest(path, algorithm):
    """The hex digest of a file's bytes."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_matches(path, file_hash):
    """Whether the file's SHA-256 (or MD5 for a 32-digit hash) starts with ``file_hash``."""
    file_hash = file_hash.lower()
    return file_digest(path, _algorithm(file_hash)).startswith(file_hash)


def source_url(url, base_url=None):
    """``url`` with its folder replaced by ``base_url`` / ``$TFRCNN_WEIGHTS_BASE_URL`` when given."""
    base = base_url or os.environ.get(BASE_URL_ENV)
    if not base:
        return url
    return base.rstrip("/") + "/" + url.rsplit("/", 1)[-1]


def find_cached(file_name, file_hash=None):
    """The path of ``file_name`` in a Keras cache folder whose hash matches, or None."""
    for folder in cache_dirs():
        path = os.path.join(folder, file_name)
        if os.path.isfile(path) and (file_hash is None or hash_matches(path, file_hash)):
            return path
    return None


class _Progress:
    """A one-line progress bar on stderr: file name, bytes so far / total, percent."""

    WIDTH = 30

    def __init__(self, name, total, stream):
        self.name, self.total, self.stream = name, total, stream
        self.done = 0
        self._last = 0.0

    def update(self, n, final=False):
        self.done += n
        now = time.monotonic()
        if self.stream is None or (not final and now - self._last < 0.2):
            return
        self._last = now
        mb = self.done / 1e6
        if self.total:
            filled = int(self.WIDTH * self.done / self.total)
            bar = "=" * filled + "." * (self.WIDTH - filled)
            line = f"{self.name} [{bar}] {mb:.1f}/{self.total / 1e6:.1f} MB"
        else:
            line = f"{self.name} {mb:.1f} MB"
        self.stream.write("\r" + line + ("\n" if final else ""))
        self.stream.flush()


def fetch(
    url,
    file_name=None,
    *,
    file_hash=None,
    base_url=None,
    progress=True,
    alternative="its local path",
):
    """The local path of a published file: from the Keras cache, else downloaded into it.

    Args:
        url: the publisher's address of the file.
        file_name: the name in the cache (default: the last part of ``url``).
        file_hash: SHA-256, MD5 (32 digits) or a SHA-256 prefix; default: the prefix in the file
            name (torchvision's convention), else no check.
        base_url: replaces ``url``'s folder (also ``$TFRCNN_WEIGHTS_BASE_URL``).
        progress: show a progress bar on stderr while downloading.
        alternative: what the user can pass instead, for the offline message (for example
            ``"backbone_weights=PATH"``).

    Returns:
        the path of the verified file in a Keras cache folder.

    Raises:
        DownloadError: no network, an HTTP error, or a hash mismatch (nothing is kept); one line.
    """
    file_name = file_name or url.rsplit("/", 1)[-1]
    file_hash = (file_hash or hash_from_file_name(file_name) or "").lower() or None
    cached = find_cached(file_name, file_hash)
    if cached is not None:
        return cached
    target = os.path.join(cache_dirs()[0], file_name)
    address = source_url(url, base_url)
    try:
        response = urllib.request.urlopen(address, timeout=TIMEOUT_SECONDS)
    except urllib.error.HTTPError as e:
        raise DownloadError(
            f"could not download {file_name} from {address}: HTTP {e.code} "
            f"{e.reason}; download it on a machine with internet and copy it to "
            f"{target}, or pass {alternative}"
        ) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(
            f"no network: download {address} on a machine with internet and copy "
            f"it to {target}, or pass {alternative} ({reason})"
        ) from None
    total = int(response.headers.get("Content-Length") or 0)
    bar = _Progress(file_name, total, sys.stderr if progress else None)
    digest = hashlib.new(_algorithm(file_hash) if file_hash else "sha256")
    try:
        with response, atomic_file(target) as tmp:
            with open(tmp, "wb") as f:
                for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                    f.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
                bar.update(0, final=True)
                if total and bar.done != total:
                    raise DownloadError(
                        f"download of {file_name} from {address} stopped after "
                        f"{bar.done} of {total} bytes; nothing was kept"
                    )
                if file_hash and not digest.hexdigest().startswith(file_hash):
                    raise DownloadError(
                        f"{file_name} from {address} has {digest.name} {digest.hexdigest()}, "
                        f"expected {file_hash}; the download is corrupt or not the published "
                        f"file, nothing was kept"
                    )
                f.flush()
                os.fsync(f.fileno())
    except DownloadError:
        raise
    except OSError as e:
        raise DownloadError(
            f"download of {file_name} from {address} failed ({e}); nothing was kept"
        ) from None
    return target
