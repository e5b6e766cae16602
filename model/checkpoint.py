"""The one checkpoint format, a numpy `.npz` archive (no pickle; `np.load` reads it anywhere).

Arrays are stored under `backbone/<name>`, `head/<name>` and
`optimizer/<part>/<name>/<buffer>` (SGD momentum, Adam moments: by parameter, see
train/optim.py), plus `meta`, a JSON string with the run's config, the training position
(epoch, batch within the epoch, global step, optimizer steps) and the best evaluation
results. A sharded head is stored whole (every class centre), so a checkpoint loads into
any number of processes, sharded or not (train/run_state.py saves and restores runs in it).

Files are written whole or not at all (util.files.write_atomically). Weights only:
`model.loading.load_model(path)` builds the model and loads it; or take the `backbone/`
keys of `np.load(path)` yourself.
"""
import json
import os
import zipfile
import zlib

import numpy as np

from util.errors import InputError
from util.files import make_outdir, write_atomically, write_npz

FORMAT = "sface-jittor-checkpoint-v1"
LAST, BEST = "last.npz", "best.npz"
# The official SFace-Jittor code saved bare state dicts (Backbone_*.pkl, Head_*.pkl) and fed
# its networks (x - 127.5) * 0.078125.
OFFICIAL_JITTOR_INPUT_NORM = [127.5, 0.078125]
# The config keys that describe a backbone (what building it needs).
MODEL_KEYS = ("net", "input_hw", "input_size", "embedding_size", "input_norm")


PARTS = ("backbone", "head", "optimizer")  # the array entries: <part>/<name>


# What np.load raises for a damaged .npz (an empty file: EOFError; a corrupt compressed entry: zlib.error).
DAMAGED_NPZ = (ValueError, EOFError, zipfile.BadZipFile, zlib.error)


class CheckpointError(InputError):
    """A checkpoint or weight file that cannot be used, with the file named in the message."""


def module_arrays(module):
    return {name: var.numpy() for name, var in module.state_dict().items()}


def save_checkpoint(path, meta, backbone, head, optimizer_state=None):
    """backbone, head: {name: array}; optimizer_state: {'<part>/<name>/<buffer>': array}."""
    arrays = {f"backbone/{k}": v for k, v in backbone.items()}
    arrays.update({f"head/{k}": v for k, v in head.items()})
    arrays.update({f"optimizer/{k}": v for k, v in (optimizer_state or {}).items()})
    arrays["meta"] = np.array(json.dumps(dict(meta, format=FORMAT)))
    make_outdir(os.path.dirname(os.path.abspath(path)))
    write_atomically(path, lambda f: write_npz(f, arrays), "checkpoint")


def load_checkpoint(path):
    """-> dict(meta, backbone, head, optimizer); CheckpointError naming the file if it is not ours."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (OSError, *DAMAGED_NPZ) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({e or type(e).__name__})") from None
    if "meta" not in arrays:
        raise CheckpointError(f"{path}: not an SFace-Jittor checkpoint (no 'meta' entry)")
    meta = read_meta(path, arrays.pop("meta"))
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format '{meta.get('format')}'")
    parts = {part: {} for part in PARTS}
    for key, value in arrays.items():
        part, _, name = key.partition("/")
        if part not in parts or not name:
            raise CheckpointError(f"{path}: unexpected entry '{key}' (a checkpoint holds 'meta' and arrays "
                                  f"under {', '.join(f'{p}/' for p in PARTS)})")
        parts[part][name] = value
    return {"meta": meta, **parts}


def read_meta(path, value):
    """The `meta` entry of checkpoint `path` -> its JSON object; CheckpointError naming the file otherwise."""
    try:
        meta = json.loads(str(value))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: the 'meta' entry is not JSON ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: the 'meta' entry is not a JSON object")
    return meta


def load_weights(module, arrays, source):
    """Copy `arrays` into `module`, insisting on the same names and shapes (Jittor's own loader only warns)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(arrays))
    unexpected = sorted(set(arrays) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{source}: weights do not fit {type(module).__name__}: "
                              f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                              f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    for name, var in own.items():
        value = np.asarray(arrays[name])
        if tuple(value.shape) != tuple(var.shape):
            raise CheckpointError(f"{source}: '{name}' has shape {tuple(value.shape)}, the model wants "
                                  f"{tuple(var.shape)}")
        if value.dtype.kind not in "biuf":
            raise CheckpointError(f"{source}: '{name}' holds {value.dtype} values, not numbers")
        if not np.isfinite(value).all():  # no trained model holds them: every output would be NaN
            raise CheckpointError(f"{source}: '{name}' holds values that are not finite (NaN or infinity)")
        var.assign(value.astype(np.float32))


def is_scf(config):
    """Whether a checkpoint's config is an SCF run's (a confidence head on a frozen model)."""
    return bool(config.get("scf"))


def not_scf(path):
    return CheckpointError(f"{path}: not an SCF checkpoint (train one with train_SCF_jittor.py)")


def run_checkpoint(path, names=(LAST,)):
    """`path`, or in a run's output folder the first of `names` it holds; a CheckpointError if it holds none."""
    if not os.path.isdir(path):
        return path
    for name in names:
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    raise CheckpointError(f"{path}: a folder holding no {' or '.join(names)}, so not a run's output folder")
