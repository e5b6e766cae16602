"""Read PyTorch checkpoint files (`torch.save`) into numpy arrays, without PyTorch.

Both formats torch has written are understood: the zip archive of torch >= 1.6
(`<name>/data.pkl` plus one raw file per storage under `<name>/data/`) and the legacy
stream (magic number, protocol, system info, the pickled object, the storage keys, then
each storage as an 8-byte element count and its bytes). Tensors come back as numpy arrays
with their shapes and strides applied; everything else as the pickle holds it.
Only the handful of torch globals a checkpoint refers to are resolved: anything else
raises, so a file cannot run code on load.
"""
import collections
import pickle
import zipfile

import numpy as np

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
    """torch._utils._rebuild_tensor_v2: a strided view of a storage (legacy files fill it later)."""
    itemsize = storage.dtype.itemsize
    return np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                           strides=tuple(s * itemsize for s in stride))


def rebuild_parameter(data, *_):
    return data


SAFE_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch.nn.modules.container", "OrderedDict"): collections.OrderedDict,
}


class TorchUnpickler(pickle.Unpickler):
    def __init__(self, file, load_storage):
        super().__init__(file, encoding="latin1")
        self.load_storage = load_storage
        self.storages = {}

    def find_class(self, module, name):
        if module == "torch" and name in STORAGE_DTYPES:
            return StorageType(name)
        if (module, name) in SAFE_GLOBALS:
            return SAFE_GLOBALS[(module, name)]
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")

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
            raise ValueError(f"{path}: a zip file without data.pkl is not a PyTorch checkpoint")
        prefix = data_pkl[: -len("data.pkl")]

        def load_storage(key, dtype, numel):
            return np.frombuffer(archive.read(f"{prefix}data/{key}"), dtype=dtype, count=numel)
        with archive.open(data_pkl) as f:
            return TorchUnpickler(f, load_storage).load()


def load_legacy(path):
    with open(path, "rb") as f:
        if pickle.load(f) != LEGACY_MAGIC:
            raise ValueError(f"{path}: not a PyTorch checkpoint (wrong magic number)")
        pickle.load(f)  # protocol version
        pickle.load(f)  # system info
        pending = {}
        unpickler = TorchUnpickler(f, lambda key, dtype, numel: pending.setdefault(key, np.empty(numel, dtype)))
        result = unpickler.load()
        for key in pickle.load(f):
            count = int(np.frombuffer(f.read(8), np.int64)[0])
            storage = pending[key]
            data = f.read(count * storage.dtype.itemsize)
            if len(data) != count * storage.dtype.itemsize:
                raise ValueError(f"{path}: truncated PyTorch checkpoint (storage {key})")
            storage[:] = np.frombuffer(data, storage.dtype)
        return result


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
    except (pickle.UnpicklingError, EOFError, KeyError, IndexError, OSError) as e:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({e})") from None
