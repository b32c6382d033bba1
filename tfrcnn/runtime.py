"""TensorFlow runtime settings that tfrcnn chooses for speed, and what is in effect.

Host memory allocator. TensorFlow's default CPU allocator passes tensors to the C library, which
maps fresh pages for large blocks and returns them when they are freed, so each step of a
detector faults in again gigabytes of zeroed pages (590,000-670,000 page faults, about 2.5 GB, in
one ``mobilenet_v3_fpn`` training step at batch 2 on 800x800 images). TensorFlow's BFC allocator
keeps the memory it obtained and reuses it: about 9,000 faults in the same step, which took 2.4 s
instead of 3.7 s (README, "Speed, memory and mixed precision").

``import tfrcnn`` therefore sets ``TF_CPU_ALLOCATOR_USE_BFC=true`` (and raises the BFC pool's
64 GB cap, ``TF_CPU_BFC_MEM_LIMIT_IN_MB``, to the machine's memory where that is larger) unless
the variable is already set. TensorFlow reads it once, when it first allocates host memory: it
takes effect when ``tfrcnn`` is imported before any TensorFlow op has run. Set
``TF_CPU_ALLOCATOR_USE_BFC=false`` before the import to keep the C library's allocator (the BFC
pool does not give memory back to the system until the process ends).

Where oneDNN's custom operations are on (TensorFlow's default on CPUs with AVX512-VNNI,
AVX512-BF16 or AMX, e.g. session 6's AMD Zen 4; ``TF_ENABLE_ONEDNN_OPTS`` overrides), TensorFlow
allocates host memory from its own oneDNN pool, itself a BFC allocator, whatever the variable
says: :func:`cpu_allocator` reports ``"bfc"`` there in every case and the setting changes
nothing (the variable matters where oneDNN's ops are off: see below).

oneDNN's operations. TensorFlow turns its oneDNN (MKL) kernels on by default only on CPUs with
AVX512-VNNI, AVX512-BF16 or AMX; on other x86-64 CPUs, AVX2-only ones among them, it runs its
Eigen kernels. ``import tfrcnn`` sets ``TF_ENABLE_ONEDNN_OPTS=1`` on x86-64 unless the variable is
already set or TensorFlow is already imported (TensorFlow reads it once, at its import): on
session 7's AVX2 machine a ``mobilenet_v3_fpn`` training step at batch 1 took 1.29-1.53 s with
oneDNN against 1.89 s without, and a ``resnet50_fpn`` one 6.4-6.6 s against 7.1-8.0 s (README,
"Speed, memory and mixed precision"). Set ``TF_ENABLE_ONEDNN_OPTS=0`` before the import to keep
TensorFlow's choice; :func:`onednn_enabled` tells what is in effect.

Example:
    >>> import tfrcnn
    >>> tfrcnn.runtime.cpu_allocator()
    'bfc'
"""

import os
import platform
import sys

BFC_VARIABLE = "TF_CPU_ALLOCATOR_USE_BFC"
ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
LIMIT_VARIABLE = "TF_CPU_BFC_MEM_LIMIT_IN_MB"
TENSORFLOW_DEFAULT_LIMIT_MB = 1 << 16  # TensorFlow's own cap for the CPU BFC pool, 64 GB


def _physical_memory_mb():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)
    except (ValueError, OSError, AttributeError):  # not POSIX, or the value is unknown
        return 0


def choose_cpu_allocator(environ=None):
    """Set the BFC host allocator in ``environ`` (default ``os.environ``) unless the user chose.

    Returns True when tfrcnn set it, False when ``TF_CPU_ALLOCATOR_USE_BFC`` was already there.
    Has an effect only before TensorFlow's first host allocation."""
    environ = os.environ if environ is None else environ
    if BFC_VARIABLE in environ:
        return False
    environ[BFC_VARIABLE] = "true"
    memory_mb = _physical_memory_mb()
    if LIMIT_VARIABLE not in environ and memory_mb > TENSORFLOW_DEFAULT_LIMIT_MB:
        environ[LIMIT_VARIABLE] = str(memory_mb)
    return True


def choose_onednn(environ=None, machine=None, tensorflow_imported=None):
    """Turn TensorFlow's oneDNN operations on (``TF_ENABLE_ONEDNN_OPTS=1`` in ``environ``, default
    ``os.environ``) on an x86-64 machine, unless the user set the variable or TensorFlow is
    already imported (too late to matter, and the variable would then misstate what runs).

    ``machine`` (default ``platform.machine()``) and ``tensorflow_imported`` (default: whether
    ``tensorflow`` is in ``sys.modules``) are for tests. Returns True when tfrcnn set it."""
    environ = os.environ if environ is None else environ
    machine = (platform.machine() if machine is None else machine).lower()
    if tensorflow_imported is None:
        tensorflow_imported = "tensorflow" in sys.modules
    if ONEDNN_VARIABLE in environ or tensorflow_imported:
        return False
    if machine not in ("x86_64", "amd64"):
        return False
    environ[ONEDNN_VARIABLE] = "1"
    return True


def onednn_enabled():
    """True when TensorFlow runs its oneDNN operations in this process, False when its own
    kernels, None when it cannot tell (a TensorFlow build without the query)."""
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return None


def bfc_requested(environ=None):
    """True when ``TF_CPU_ALLOCATOR_USE_BFC`` asks for the BFC allocator (TensorFlow's reading:
    ``true`` / ``1``, any case)."""
    environ = os.environ if environ is None else environ
    return environ.get(BFC_VARIABLE, "").strip().lower() in ("1", "true")


def cpu_allocator():
    """``"bfc"`` or ``"system"``: the allocator TensorFlow's CPU device is using in this process
    (``"unknown"`` if the device cannot be asked).

    Only the BFC allocator keeps statistics, so a CPU device that reports memory statistics is
    the BFC one. Starts TensorFlow's runtime if it has not started yet."""
    import tensorflow as tf

    try:
        tf.config.experimental.get_memory_info("CPU:0")
    except ValueError:  # "Allocator stats not available": the system allocator
        return "system"
    except (RuntimeError, tf.errors.OpError):  # a diagnostic must never stop model building
        return "unknown"
    return "bfc"


_checked = False


def check_cpu_allocator(logger, once=False):
    """Log the host allocator; warn when BFC was asked for but TensorFlow started before
    ``tfrcnn`` was imported (so the environment variable came too late). Returns the allocator.

    ``once=True`` (what ``FasterRCNN()`` uses) checks only the first time in a process and
    returns None afterwards; ``tfrcnn train`` checks every run."""
    global _checked
    if once and _checked:
        return None
    _checked = True
    allocator = cpu_allocator()
    if allocator == "system" and bfc_requested():
        logger.warning(
            "TensorFlow's CPU allocator is the system one although %s=%s: TensorFlow allocated "
            "host memory before tfrcnn was imported. Import tfrcnn first (or set the variable "
            "before Python starts): without it every step faults its memory in again (README, "
            "'Speed, memory and mixed precision').", BFC_VARIABLE, os.environ.get(BFC_VARIABLE))
    else:
        logger.info("TensorFlow CPU allocator: %s, oneDNN operations: %s", allocator,
                    {True: "on", False: "off", None: "unknown"}[onednn_enabled()])
    return allocator
