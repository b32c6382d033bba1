"""Process settings for CPU speed and memory: TensorFlow's BFC host allocator, its oneDNN operations
and the C library's malloc arenas.

TensorFlow reads both from environment variables, the oneDNN one when it is imported and the
allocator one at its first host allocation, so :func:`configure_process` must run before
``import tensorflow`` (this module imports nothing of TensorFlow). Nothing here runs on
``import tfrcnn``: the ``tfrcnn`` command and the benchmarks call it; a Python user opts in:

    >>> import tfrcnn.accel
    >>> tfrcnn.accel.configure_process()  # before TensorFlow is imported
    >>> import tensorflow as tf

- ``TF_CPU_ALLOCATOR_USE_BFC=true`` (and ``TF_CPU_BFC_MEM_LIMIT_IN_MB`` raised to the machine's
  memory where that exceeds TensorFlow's 64 GB cap): the BFC allocator keeps and reuses host
  memory instead of mapping fresh zeroed pages for every large tensor of every step.
- ``TF_ENABLE_ONEDNN_OPTS=1`` on x86-64: oneDNN's kernels also on CPUs where TensorFlow would pick
  its Eigen ones (those without AVX512-VNNI, AVX512-BF16 or AMX).
- with glibc, at most two malloc arenas (``mallopt(M_ARENA_MAX, 2)``, what ``MALLOC_ARENA_MAX=2``
  sets when the process starts): less memory kept by the C library for TensorFlow's threads.

A variable the user already set is left alone. docs/performance.md gives what each buys.
"""

import os
import platform
import sys

BFC_VARIABLE = "TF_CPU_ALLOCATOR_USE_BFC"
ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
LIMIT_VARIABLE = "TF_CPU_BFC_MEM_LIMIT_IN_MB"
TENSORFLOW_DEFAULT_LIMIT_MB = 1 << 16  # TensorFlow's own cap for the CPU BFC pool, 64 GB
ARENA_VARIABLE = "MALLOC_ARENA_MAX"  # glibc's own variable, read when the process starts
M_ARENA_MAX = -8  # glibc's mallopt parameter number
MALLOC_ARENAS = 2


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


def limit_malloc_arenas(environ=None):
    """Limit the C library's malloc to :data:`MALLOC_ARENAS` arenas (glibc's ``mallopt(M_ARENA_MAX)``)
    unless the user set ``MALLOC_ARENA_MAX`` in ``environ`` (default ``os.environ``).

    glibc gives threads that allocate at the same time arenas of their own (up to 8 a core),
    each keeping the memory freed in it; TensorFlow's threads leave a few hundred MB of such
    memory resident (docs/performance.md, "Process configuration"). Has an effect on arenas not
    yet created (call it before TensorFlow starts its threads). Returns True when it was set,
    False elsewhere (another C library, another system, the user's choice)."""
    environ = os.environ if environ is None else environ
    if ARENA_VARIABLE in environ or not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    return bool(mallopt(M_ARENA_MAX, MALLOC_ARENAS))


def configure_process(environ=None):
    """Choose the BFC host allocator and oneDNN's operations for this process, and limit the C
    library's malloc arenas (module docstring).

    Call it before TensorFlow is imported; variables already in ``environ`` (default
    ``os.environ``) are kept. Returns ``{"bfc": bool, "onednn": bool, "malloc_arenas": bool}``:
    which of them it set."""
    return {
        "bfc": choose_cpu_allocator(environ),
        "onednn": choose_onednn(environ),
        "malloc_arenas": limit_malloc_arenas(environ),
    }


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
    """Log the host allocator; warn when BFC was asked for but TensorFlow started before the
    variable was set (so it came too late). Returns the allocator.

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
            "host memory before the variable was set. Call tfrcnn.accel.configure_process() "
            "before importing TensorFlow (or set the variable before Python starts): without it "
            "every step faults its memory in again.",
            BFC_VARIABLE,
            os.environ.get(BFC_VARIABLE),
        )
    else:
        logger.info(
            "TensorFlow CPU allocator: %s, oneDNN operations: %s",
            allocator,
            {True: "on", False: "off", None: "unknown"}[onednn_enabled()],
        )
    return allocator
