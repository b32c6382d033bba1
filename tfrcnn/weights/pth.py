"""Read torch ``.pth`` checkpoints into numpy arrays without torch and without running their pickle.

A ``.pth`` file written by ``torch.save`` is one of two containers:

- the zip format (the default since torch 1.6): ``<name>/data.pkl`` holds the pickled object,
  ``<name>/data/<key>`` the raw bytes of each tensor storage and ``<name>/byteorder`` their byte
  order;
- the legacy stream (``_use_new_zipfile_serialization=False``, and checkpoints published before
  2020): four pickles (a magic number, a protocol version, system information, the object), a
  pickled list of storage keys, then each storage as an 8-byte element count and its bytes.

A pickle can call any importable function, so ``pickle.load`` of a downloaded checkpoint runs
whatever its author wrote. :class:`_RestrictedUnpickler` resolves only the globals a state dict
needs: the tensor and parameter rebuild functions, ``collections.OrderedDict`` and the storage
types. Each of them maps to a function of this module that records the tensor's storage, offset,
size and stride; nothing of torch is imported or called. Any other global (``os.system``,
``builtins.eval``, ``argparse.Namespace``, ...) stops the load with a :class:`PthError` naming it,
before anything is called. Tensors come back as contiguous numpy arrays (``bfloat16`` widened to
``float32``, which is exact), views of one storage share nothing with each other.

Example:
    >>> state = load_state_dict("fasterrcnn_resnet50_fpn_coco-258fb6c6.pth")
    >>> state["backbone.body.conv1.weight"].shape
    (64, 3, 7, 7)
"""

import collections
import io
import os
import pickle
import struct
import zipfile

import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# torch storage type name -> numpy dtype of one element (bfloat16 is read as uint16, then widened).
STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": np.uint16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "ComplexDoubleStorage": np.complex128,
    "ComplexFloatStorage": np.complex64,
    "UntypedStorage": np.uint8,
}

# torch dtype name (a global ``torch.float32`` ...) -> storage type name, for ``_rebuild_tensor_v3``.
TORCH_DTYPES = {
    "float64": "DoubleStorage",
    "double": "DoubleStorage",
    "float32": "FloatStorage",
    "float": "FloatStorage",
    "float16": "HalfStorage",
    "half": "HalfStorage",
    "bfloat16": "BFloat16Storage",
    "int64": "LongStorage",
    "long": "LongStorage",
    "int32": "IntStorage",
    "int": "IntStorage",
    "int16": "ShortStorage",
    "short": "ShortStorage",
    "int8": "CharStorage",
    "uint8": "ByteStorage",
    "bool": "BoolStorage",
    "complex128": "ComplexDoubleStorage",
    "complex64": "ComplexFloatStorage",
}


class PthError(ValueError):
    """A checkpoint that is not a readable torch state dict (one-line message naming the file)."""


class _StorageType:
    """What a global ``torch.FloatStorage`` resolves to: the element dtype, never a torch class."""

    def __init__(self, name):
        self.name = name
        self.dtype = np.dtype(STORAGE_DTYPES[name])


class _TorchDType:
    """What a global ``torch.float32`` resolves to (the dtype argument of ``_rebuild_tensor_v3``)."""

    def __init__(self, name):
        self.storage = _StorageType(TORCH_DTYPES[name])


class _Storage:
    """One storage of the checkpoint: its key, element dtype and element count; bytes come later."""

    def __init__(self, key, storage_type, numel):
        self.key = key
        self.storage_type = storage_type
        self.numel = numel
        self.array = None  # 1-D numpy array once the bytes are read
        self.base = None  # (root storage, element offset) for a legacy view storage


class _PendingTensor:
    """A tensor whose storage bytes are not read yet (legacy files store them after the pickle)."""

    def __init__(self, storage, offset, size, stride, dtype=None):
        self.storage = storage
        self.offset = int(offset)
        self.size = tuple(int(s) for s in size)
        self.stride = tuple(int(s) for s in stride)
        self.dtype = dtype  # a _StorageType for an untyped storage (rebuild v3)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    return _PendingTensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(
    storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None
):
    if not isinstance(dtype, _TorchDType):
        raise pickle.UnpicklingError(f"_rebuild_tensor_v3 with dtype {dtype!r}")
    return _PendingTensor(storage, storage_offset, size, stride, dtype.storage)


def _rebuild_parameter(data, requires_grad, backward_hooks, *state):
    return data


# The only globals a checkpoint may name. Each maps to a plain function or marker of this module.
_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in ``_ALLOWED`` and the torch storage/dtype names."""

    def __init__(self, file, source, storages):
        super().__init__(file, encoding="utf-8")
        self._source = source
        self._storages = storages  # key -> _Storage, shared by every tensor that views it

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        if module == "torch" and name in TORCH_DTYPES:
            return _TorchDType(name)
        raise PthError(
            f"{self._source}: the checkpoint's pickle asks for '{module}.{name}', which is not a "
            f"tensor or a dict; refused without running it (only state dicts of tensors load)"
        )

    def persistent_load(self, pid):
        if not (
            isinstance(pid, tuple)
            and len(pid) in (5, 6)
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
        ):
            raise PthError(
                f"{self._source}: unsupported persistent object {str(pid)[:80]!r} in the "
                f"checkpoint (only tensor storages are read)"
            )
        storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
        storage = self._storages.get(key)
        if storage is None:
            storage = self._storages[key] = _Storage(key, storage_type, numel)
        view = pid[5] if len(pid) == 6 else None
        if view is None:
            return storage
        view_key, view_offset, view_size = str(view[0]), int(view[1]), int(view[2])
        if view_key not in self._storages:
            view_storage = _Storage(view_key, storage_type, view_size)
            view_storage.base = (storage, view_offset)
            self._storages[view_key] = view_storage
        return self._storages[view_key]


def _materialise(tensor, source):
    """A contiguous numpy copy of ``tensor`` read through its offset, size and stride."""
    storage = tensor.storage
    if not isinstance(storage, _Storage):
        raise PthError(
            f"{source}: a tensor without a storage ({type(storage).__name__}) in the checkpoint"
        )
    flat = storage.array
    if tensor.dtype is not None:  # an untyped (byte) storage viewed with the tensor's dtype
        flat = flat.view(np.uint8).view(tensor.dtype.dtype)
        kind = tensor.dtype.name
    else:
        kind = storage.storage_type.name
    size, stride = tensor.size, tensor.stride
    if len(size) != len(stride) or tensor.offset < 0 or any(s < 0 for s in size + stride):
        raise PthError(
            f"{source}: a tensor with size {size}, stride {stride}, offset "
            f"{tensor.offset} is malformed"
        )
    if 0 in size:
        out = np.zeros(size, flat.dtype)
    else:
        last = tensor.offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= flat.size:
            raise PthError(
                f"{source}: a tensor with size {size}, stride {stride}, offset "
                f"{tensor.offset} reads past the end of storage '{storage.key}' "
                f"({flat.size} elements); the file is truncated or corrupt"
            )
        view = np.lib.stride_tricks.as_strided(
            flat[tensor.offset :],
            shape=size,
            strides=[s * flat.itemsize for s in stride],
            writeable=False,
        )
        out = np.array(view, copy=True, order="C")
    if kind == "BFloat16Storage":
        out = (out.astype(np.uint32) << 16).view(np.float32)
    return out


def _resolve(obj, source, seen=None):
    """Replace every pending tensor in a nest of dicts / lists / tuples by its numpy array."""
    if isinstance(obj, _PendingTensor):
        return _materialise(obj, source)
    if isinstance(obj, dict):
        for key in list(obj.keys()):
            obj[key] = _resolve(obj[key], source)
        metadata = getattr(obj, "__dict__", {}).get("_metadata")
        if metadata is not None:
            obj.__dict__.pop("_metadata")  # torch's per-module version numbers; not a tensor
        return obj
    if isinstance(obj, list):
        return [_resolve(v, source) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_resolve(v, source) for v in obj)
    if isinstance(obj, (_Storage, _StorageType, _TorchDType)):
        raise PthError(f"{source}: a bare storage or dtype in the checkpoint (only tensors load)")
    return obj


def _array_from_bytes(data, storage, source, big_endian):
    dtype = storage.storage_type.dtype
    if big_endian:
        dtype = dtype.newbyteorder(">")
    if len(data) < storage.numel * dtype.itemsize:
        raise PthError(
            f"{source}: storage '{storage.key}' holds {len(data)} bytes, "
            f"{storage.numel * dtype.itemsize} expected; the file is truncated"
        )
    array = np.frombuffer(data, dtype=dtype, count=storage.numel)
    return array.astype(dtype.newbyteorder("="), copy=False) if big_endian else array


def _load_zip(path, source):
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise PthError(
                f"{source}: a zip file without one '<name>/data.pkl'; not a torch checkpoint"
            )
        prefix = pickles[0][: -len("data.pkl")]
        big_endian = False
        if prefix + "byteorder" in names:
            big_endian = archive.read(prefix + "byteorder").strip() == b"big"
        storages = {}
        unpickler = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), source, storages)
        obj = unpickler.load()
        for storage in storages.values():
            member = f"{prefix}data/{storage.key}"
            if member not in names:
                raise PthError(
                    f"{source}: storage '{member}' is missing from the zip file; the "
                    f"checkpoint is incomplete"
                )
            storage.array = _array_from_bytes(archive.read(member), storage, source, big_endian)
    return _resolve(obj, source)


def _load_legacy(path, source):
    with open(path, "rb") as f:

        def small_pickle():
            return _RestrictedUnpickler(f, source, {}).load()

        try:
            magic = small_pickle()
        except (pickle.UnpicklingError, EOFError, ValueError) as e:
            if isinstance(e, PthError):
                raise
            raise PthError(
                f"{source}: not a torch checkpoint (neither a zip file nor a legacy "
                f"torch.save stream)"
            ) from None
        if magic != LEGACY_MAGIC_NUMBER:
            raise PthError(
                f"{source}: not a torch checkpoint (neither a zip file nor a legacy "
                f"torch.save stream)"
            )
        if small_pickle() != LEGACY_PROTOCOL_VERSION:
            raise PthError(f"{source}: unsupported legacy torch.save protocol version")
        sys_info = small_pickle()
        big_endian = not (isinstance(sys_info, dict) and sys_info.get("little_endian", True))
        storages = {}
        obj = _RestrictedUnpickler(f, source, storages).load()
        keys = small_pickle()
        if not isinstance(keys, list):
            raise PthError(f"{source}: the legacy storage key list is malformed")
        for key in keys:
            storage = storages.get(str(key))
            if storage is None:
                raise PthError(f"{source}: storage key {key!r} is not used by the checkpoint")
            header = f.read(8)
            if len(header) != 8:
                raise PthError(f"{source}: the file ends before storage '{key}'; truncated")
            numel = struct.unpack(">q" if big_endian else "<q", header)[0]
            if numel != storage.numel:
                raise PthError(
                    f"{source}: storage '{key}' has {numel} elements on disk, "
                    f"{storage.numel} in the pickle; the file is corrupt"
                )
            data = f.read(numel * storage.storage_type.dtype.itemsize)
            storage.array = _array_from_bytes(data, storage, source, big_endian)
    for storage in storages.values():
        if storage.base is not None:
            root, offset = storage.base
            storage.array = root.array[offset : offset + storage.numel]
        elif storage.array is None:
            raise PthError(f"{source}: storage '{storage.key}' has no data in the file")
    return _resolve(obj, source)


def load_pth(path):
    """The object saved in a torch checkpoint, with every tensor as a numpy array.

    Args:
        path: a ``.pth`` / ``.pt`` file written by ``torch.save`` (zip or legacy format).

    Returns:
        the saved nest of dicts (``OrderedDict`` kept), lists, tuples, numbers and strings, each
        tensor or parameter replaced by a contiguous ``np.ndarray`` of its dtype (``bfloat16`` as
        ``float32``).

    Raises:
        PthError: not a torch checkpoint, truncated, or its pickle names a global that is not a
            tensor, parameter, storage or ordered dict (nothing of it runs).
    """
    path = os.fspath(path)
    source = os.path.basename(path) or path
    if not os.path.isfile(path):
        raise PthError(f"{path}: no such checkpoint file")
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path, path)
        return _load_legacy(path, path)
    except PthError:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        zipfile.BadZipFile,
        struct.error,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        ValueError,
        RecursionError,
    ) as e:
        raise PthError(
            f"{path}: unreadable torch checkpoint ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else source})"
        ) from None


STATE_DICT_KEYS = ("model", "state_dict", "model_state_dict", "module")


def find_state_dict(obj, source="checkpoint"):
    """The ``{name: array}`` state dict inside a loaded checkpoint.

    A checkpoint is either the state dict itself or a dict holding it under one of
    ``STATE_DICT_KEYS`` (``{"model": ..., "optimizer": ..., "epoch": ...}`` as torchvision's
    training scripts write). A ``module.`` prefix left by ``DistributedDataParallel`` is removed.
    """
    if not isinstance(obj, dict):
        raise PthError(f"{source}: holds a {type(obj).__name__}, not a state dict")
    if obj and all(isinstance(v, np.ndarray) for v in obj.values()):
        state = obj
    else:
        for key in STATE_DICT_KEYS:
            if isinstance(obj.get(key), dict):
                return find_state_dict(obj[key], source)
        raise PthError(
            f"{source}: no state dict found (top-level keys {list(obj)[:8]}; expected "
            f"tensors, or a dict under one of {list(STATE_DICT_KEYS)})"
        )
    if all(k.startswith("module.") for k in state):
        state = collections.OrderedDict((k[len("module.") :], v) for k, v in state.items())
    return collections.OrderedDict(state)


def load_state_dict(path):
    """The state dict of a torch checkpoint file as an ``OrderedDict`` of numpy arrays."""
    return find_state_dict(load_pth(path), os.fspath(path))
