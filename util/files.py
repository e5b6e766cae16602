"""The one way the project writes files and makes output folders, and where the repository lies.

Every file is written whole or not at all: under a temporary name beside it (`<name>.tmp<PID>`),
flushed to disk, then renamed over the old one, so a crash or a full disk mid-write leaves the
previous file intact. A write that fails removes its temporary file and raises an OutputError
naming the file; a run starting in a folder removes the temporaries a killed process left there
(`remove_leftovers`).
"""
import glob
import json
import os
import zipfile

import numpy as np

from .errors import InputError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPORARY = ".tmp"  # a file being written: <name>.tmp<PID>, renamed to <name> once whole


class OutputError(InputError):
    """An output folder or file that cannot be written, or a run that would be overwritten; the path is named."""


def make_outdir(path, option="--outdir"):
    """Create the folder `path` (and its parents) or raise an OutputError saying why it cannot be used.

    `option`: the command-line option that named it, for the advice to give another."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"{path}: exists and is not a folder; give another {option}")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{path}: cannot create the output folder ({e.strerror}); give another {option}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: the output folder is not writable; give another {option}")


def write_atomically(path, content, what="file"):
    """Write `content` (bytes, str as UTF-8, or a function writing to a binary file object) to `path`, whole or
    not at all. `what` says what the file is, in the error (e.g. "checkpoint")."""
    tmp = f"{path}{TEMPORARY}{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)  # a partial file would keep a full disk full
        kept = f"the previous {path} is intact" if os.path.exists(path) else f"no earlier {what} was there"
        raise OutputError(f"{path}: cannot write the {what} ({e.strerror or e}); {kept}") from None


def appending_failed(path, what, error):
    """The OutputError for a file a run appends to (its log, metrics, events) that cannot take more (a full disk)."""
    return OutputError(f"{path}: cannot write the {what} ({error.strerror or error}); what it held is kept")


def write_npz(file, arrays):
    """`arrays` into the open binary `file` as np.savez lays them out, the archive closed even when a write fails.

    (np.savez leaves its ZipFile open on an error; closed later, once `file` is, it prints a traceback.)
    """
    with zipfile.ZipFile(file, "w", zipfile.ZIP_STORED) as archive:
        for name, value in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as entry:
                np.lib.format.write_array(entry, np.asanyarray(value), allow_pickle=False)


def write_json(path, value, what="file"):
    write_atomically(path, json.dumps(value, indent=2) + "\n", what)


def remove_leftovers(folder, pattern="*"):
    """Remove the temporaries that processes killed mid-write left for the files `pattern` (a glob relative to
    `folder`, e.g. "*.npz" or "*/*"); -> their paths."""
    leftovers = sorted(glob.glob(os.path.join(glob.escape(folder), f"{pattern}{TEMPORARY}*")))
    for path in leftovers:
        os.remove(path)
    return leftovers
