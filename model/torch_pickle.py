"""Read PyTorch checkpoint files (`torch.save`) into numpy arrays, without PyTorch.

Both formats torch has written are understood: the zip archive of torch >= 1.6
(`<name>/data.pkl` plus one raw file per storage under `<name>/data/`) and the legacy
stream (magic number, protocol, system info, the pickled object, the storage keys, then
each storage as an 8-byte element count and its bytes). Tensors come back as numpy arrays
with their shapes and strides applied; everything else as the pickle holds it.
Only the handful of torch globals a checkpoint refers to are resolved (the legacy header
parts none): anything else is refused (util.restricted_pickle), so a file cannot run code
on load.
"""
import collections
import io
import pickletools
import zipfile

import numpy as np

from util.restricted_pickle import LOAD_ERRORS, RestrictedUnpickler

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class StorageType:
    def __init__(self, name):
        self.dtype = np.dtype(STORAGE_DTYPES[name])


def rebuild_tensor(storage, offset, size, stride, *_):
    """torch._utils._rebuild_tensor_v2: a strided view of a storage (legacy files fill it later).

    The view must lie inside the storage: as_strided would read whatever memory follows it.
    """
    size, stride = tuple(int(n) for n in size), tuple(int(s) for s in stride)
    if any(n < 0 for n in size) or any(s < 0 for s in stride) or not 0 <= offset <= storage.size:
        raise ValueError(f"a tensor with offset {offset}, size {size}, stride {stride}")
    if 0 not in size and offset + sum((n - 1) * s for n, s in zip(size, stride)) >= storage.size:
        raise ValueError(f"a tensor of size {size}, stride {stride} at offset {offset} runs past its storage of "
                         f"{storage.size} elements")
    itemsize = storage.dtype.itemsize
    return np.lib.stride_tricks.as_strided(storage[offset:], shape=size, strides=tuple(s * itemsize for s in stride))


def rebuild_parameter(data, *_):
    return data


SAFE_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch.nn.modules.container", "OrderedDict"): collections.OrderedDict,
    **{("torch", name): StorageType(name) for name in STORAGE_DTYPES},
}
CHECKPOINT = "a PyTorch checkpoint"
HEADER = "a PyTorch checkpoint's header"


class TorchUnpickler(RestrictedUnpickler):
    def __init__(self, stream, load_storage):
        super().__init__(stream, SAFE_GLOBALS, CHECKPOINT, encoding="latin1")
        self.load_storage = load_storage
        self.storages = {}

    def persistent_load(self, saved_id):
        # ('storage', storage type, key, location, numel[, (view key, offset, view numel)])
        _, storage_type, key, _, numel = saved_id[:5]
        if key not in self.storages:
            self.storages[key] = self.load_storage(key, storage_type.dtype, numel)
        view = saved_id[5] if len(saved_id) > 5 else None
        if view is not None:
            _, offset, view_numel = view
            return self.storages[key][offset:offset + view_numel]
        return self.storages[key]


def load_zip(path):
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        data_pkl = next((n for n in names if n.endswith("data.pkl")), None)
        if data_pkl is None:
            raise ValueError("a zip file without data.pkl")
        prefix = data_pkl[: -len("data.pkl")]

        def load_storage(key, dtype, numel):
            return np.frombuffer(archive.read(f"{prefix}data/{key}"), dtype=dtype, count=numel)
        return TorchUnpickler(io.BytesIO(archive.read(data_pkl)), load_storage).load()


def read_header(stream):
    """One of the legacy format's plain pickles (magic number, protocol, system info, storage keys)."""
    return RestrictedUnpickler(stream, {}, HEADER).load()


def starts_legacy(stream):
    """Whether `stream` starts with the legacy magic number, judged from the pickle's opcodes alone."""
    try:
        for opcode, arg, _ in pickletools.genops(stream):
            if opcode.name not in ("PROTO", "FRAME"):
                return arg == LEGACY_MAGIC
    except ValueError:
        pass
    return False


def load_legacy(path):
    with open(path, "rb") as f:
        content = f.read()
    stream = io.BytesIO(content)
    if read_header(stream) != LEGACY_MAGIC:
        raise ValueError("wrong magic number")
    read_header(stream)  # protocol version
    read_header(stream)  # system info
    pending = {}

    def new_storage(key, dtype, numel):  # filled from the bytes after the pickle, so no larger than they are
        if numel * dtype.itemsize > len(content):
            raise ValueError(f"storage {key} claims {numel} elements, more than the file holds")
        pending[key] = np.empty(numel, dtype)
        return pending[key]
    result = TorchUnpickler(stream, new_storage).load()
    for key in read_header(stream):
        count = int(np.frombuffer(stream.read(8), np.int64)[0])
        storage = pending[key]
        data = stream.read(storage.nbytes)
        if count != storage.size or len(data) != storage.nbytes:
            raise ValueError(f"storage {key} is truncated or not the size its tensors say")
        storage[:] = np.frombuffer(data, storage.dtype)
    return result


def is_torch_file(path):
    """Whether `path` is in one of the formats `torch.save` writes (a zip archive or the legacy magic number)."""
    try:
        if zipfile.is_zipfile(path):
            return True
        with open(path, "rb") as f:
            return starts_legacy(io.BytesIO(f.read(64)))
    except OSError:
        return False


def materialize(obj):
    """Copy every array view out of its storage (writeable, storages freed)."""
    if isinstance(obj, np.ndarray):
        return np.array(obj)
    if isinstance(obj, dict):
        return type(obj)((k, materialize(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(materialize(v) for v in obj)
    return obj


def load_torch_file(path):
    """The object `torch.save` wrote, with tensors as numpy arrays."""
    try:
        return materialize(load_zip(path) if zipfile.is_zipfile(path) else load_legacy(path))
    except (*LOAD_ERRORS, OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({e})") from None
