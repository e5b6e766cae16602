"""Read a state dict that `jt.save` wrote (the official SFace-Jittor Backbone_*.pkl, Head_*.pkl) safely.

Jittor 1.3.11 writes `pickle.dumps(obj, protocol=4)`, then the SHA-1 of those bytes and the
trailer b"HCAJSLHD" (earlier versions: the pickle alone). A Var pickles as a call of
`jittor.jittor_core.Var` on its data, a numpy array (`Var.__module__`, `Var.__reduce__`).
Only the globals such a state dict names are resolved (util.restricted_pickle): a Var
becomes its array, and numpy's array reconstruction builds nothing but plain arrays.
"""
import collections
import hashlib
import io

import numpy as np

from util.restricted_pickle import LOAD_ERRORS, RestrictedUnpickler

TRAILER = b"HCAJSLHD"
CHECKSUM_BYTES = 20  # SHA-1
HOLDER = "a Jittor state dict"


class PlainArray:
    """What `numpy.ndarray` resolves to: the one subtype `_reconstruct` accepts (numpy's own class, called by
    the pickle, would allocate an array of whatever shape it claims)."""


def reconstruct(subtype, *_):
    """numpy's `_reconstruct(ndarray, (0,), b'b')`: an empty array that the pickle's BUILD then fills."""
    if subtype is not PlainArray:
        raise ValueError(f"it rebuilds an array of type {subtype!r}, not a plain numpy array")
    return np.empty(0, np.uint8)


def fresh_dtype(spec, align=False, copy=True):
    """numpy.dtype as a pickle calls it, always a copy: the pickle's BUILD must not change a shared dtype."""
    return np.dtype(spec, bool(align), True)


def var_data(data):
    """jittor.Var(data): its numpy array."""
    if not isinstance(data, np.ndarray):
        raise ValueError(f"it holds a jittor.Var of {type(data).__name__}, not of a numpy array")
    return data


JITTOR_GLOBALS = {
    ("jittor", "jittor_core.Var"): var_data,  # its qualified name, as protocol 4 writes it
    ("numpy.core.multiarray", "_reconstruct"): reconstruct,  # numpy 1
    ("numpy._core.multiarray", "_reconstruct"): reconstruct,  # numpy 2
    ("numpy", "ndarray"): PlainArray,
    ("numpy", "dtype"): fresh_dtype,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


def pickle_bytes(content, path):
    """The pickle inside a jt.save file: its checksum checked when it has one."""
    if not content.endswith(TRAILER) or len(content) < len(TRAILER) + CHECKSUM_BYTES:
        return content
    body, checksum = content[:-len(TRAILER) - CHECKSUM_BYTES], content[-len(TRAILER) - CHECKSUM_BYTES:-len(TRAILER)]
    if hashlib.sha1(body).digest() != checksum:
        raise ValueError(f"{path}: a corrupt Jittor .pkl (its SHA-1 checksum does not match its content)")
    return body


def load_jittor_file(path):
    """The object `jt.save` wrote to `path`, its Vars as numpy arrays; ValueError naming the file otherwise."""
    try:
        with open(path, "rb") as f:
            content = f.read()
    except OSError as e:
        raise ValueError(f"{path}: cannot read it ({e.strerror})") from None
    stream = io.BytesIO(pickle_bytes(content, path))
    try:
        return RestrictedUnpickler(stream, JITTOR_GLOBALS, HOLDER).load()
    except LOAD_ERRORS as e:
        raise ValueError(f"{path}: not a readable Jittor .pkl state dict ({e})") from None
