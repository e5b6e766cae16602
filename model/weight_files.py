"""Weights from any file a user brings: this project's checkpoint, an official SFace-Jittor state dict
(`jt.save`, Backbone_*.pkl / Head_*.pkl) or a PyTorch one (`torch.save`, zip or legacy format; the
official SFace and face.evoLVe code use this project's layer names).

No file runs code: the pickles are read by restricted unpicklers (model/jittor_pickle.py,
model/torch_pickle.py) and anything but a state dict of numeric arrays is refused, naming the file.
"""
import numpy as np

from .checkpoint import CheckpointError, load_checkpoint
from .jittor_pickle import load_jittor_file
from .torch_pickle import is_torch_file, load_torch_file

NUMERIC_KINDS = "biufc"  # numpy dtype kinds: bool, signed and unsigned integers, floats, complex


def read_weights(path, part):
    """`part` ('backbone' or 'head') weights from one of our checkpoints, an official SFace-Jittor .pkl
    (`jt.save` of a state dict) or a PyTorch state dict (`torch.save`, zip or legacy format).

    No file runs code: a pickle naming anything a state dict does not hold is refused.
    -> (arrays, the run config of our checkpoint ({} if it stores none) or None for a state dict).
    """
    if path.endswith(".npz"):
        checkpoint = load_checkpoint(path)
        return checkpoint[part], checkpoint["meta"].get("config", {})
    try:
        if is_torch_file(path):
            return read_reference_pytorch(path), None
        return state_dict_arrays(load_jittor_file(path), path), None
    except ValueError as e:  # the message names the file
        raise CheckpointError(str(e)) from None


def state_dict_arrays(obj, path):
    """A loaded state dict checked to be {name: numeric array}; ValueError naming the file otherwise."""
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: holds an object of type {type(obj).__name__}, not a state dict (names -> arrays)")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, np.ndarray) or value.dtype.kind not in NUMERIC_KINDS:
            what = f"an array of {value.dtype}" if isinstance(value, np.ndarray) else f"a {type(value).__name__} value"
            raise ValueError(f"{path}: not a state dict of numeric arrays ({key!r} holds {what})")
    return dict(obj)


def read_reference_pytorch(path):
    """A PyTorch state-dict file (torch.save, read without running code) -> this project's arrays."""
    return from_reference_pytorch(state_dict_arrays(load_torch_file(path), path))


def from_reference_pytorch(state_dict):
    """Strip DataParallel's 'module.' prefix and BatchNorm's num_batches_tracked; names already match."""
    arrays = {}
    for key, value in state_dict.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if not key.endswith("num_batches_tracked"):
            arrays[key] = np.asarray(value, np.float32)
    return arrays
