"""The one checkpoint format: a numpy `.npz` archive (no pickle; `np.load` reads it anywhere).

Arrays are stored under `backbone/<name>`, `head/<name>` and
`optimizer/<part>/<name>/<buffer>` (SGD momentum, Adam moments: by parameter, see
util/optim.py), plus `meta`, a JSON string with the run's config, the training position
(epoch, batch within the epoch, global step, optimizer steps) and the best evaluation
results. A sharded head is stored whole (every class centre), so a checkpoint loads into
any number of processes, sharded or not. RNG state needs no storage: every random draw is seeded from
(seed, epoch) or (seed, step), which the checkpoint holds.

Files are written to a temporary name, flushed to disk and renamed over the old one,
so a crash mid-write leaves the previous checkpoint intact.

Weights only: `load_backbone(path)` builds the backbone and loads it; or take the
`backbone/` keys of `np.load(path)` yourself.
"""
import json
import os
import zipfile

import numpy as np

FORMAT = "sface-jittor-checkpoint-v1"
# The official SFace-Jittor code saved bare state dicts (Backbone_*.pkl, Head_*.pkl) and fed
# its networks (x - 127.5) * 0.078125.
OFFICIAL_JITTOR_INPUT_NORM = [127.5, 0.078125]


class CheckpointError(ValueError):
    """A checkpoint or weight file that cannot be used, with the file named in the message."""


def module_arrays(module):
    return {name: var.numpy() for name, var in module.state_dict().items()}


def save_checkpoint(path, meta, backbone, head, optimizer_state=None):
    """backbone, head: {name: array}; optimizer_state: {'<part>/<name>/<buffer>': array}."""
    arrays = {f"backbone/{k}": v for k, v in backbone.items()}
    arrays.update({f"head/{k}": v for k, v in head.items()})
    arrays.update({f"optimizer/{k}": v for k, v in (optimizer_state or {}).items()})
    arrays["meta"] = np.array(json.dumps(dict(meta, format=FORMAT)))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path):
    """-> dict(meta, backbone, head, optimizer); CheckpointError naming the file if it is not ours."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({e})") from None
    if "meta" not in arrays:
        raise CheckpointError(f"{path}: not an SFace-Jittor checkpoint (no 'meta' entry)")
    meta = json.loads(str(arrays.pop("meta")))
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format '{meta.get('format')}'")
    parts = {"backbone": {}, "head": {}, "optimizer": {}}
    for key, value in arrays.items():
        part, name = key.split("/", 1)
        parts[part][name] = value
    return {"meta": meta, **parts}


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
            raise CheckpointError(f"{source}: '{name}' has shape {tuple(value.shape)}, the model wants {tuple(var.shape)}")
        var.assign(value.astype(np.float32))


def load_backbone(path):
    """-> (backbone in eval mode with the checkpoint's weights, the run config it was trained with)."""
    from backbone import build_backbone_from_config
    checkpoint = load_checkpoint(path)
    cfg = checkpoint["meta"]["config"]
    backbone = build_backbone_from_config(cfg)
    load_weights(backbone, checkpoint["backbone"], path)
    backbone.eval()
    return backbone, cfg


def read_weights(path, part):
    """`part` ('backbone' or 'head') weights from one of our checkpoints or an official SFace-Jittor .pkl.

    -> (arrays, the run config of our checkpoint or None for a .pkl).
    """
    if path.endswith(".npz"):
        checkpoint = load_checkpoint(path)
        return checkpoint[part], checkpoint["meta"].get("config")
    import jittor as jt
    try:
        return {k: np.asarray(v) for k, v in jt.load(path).items()}, None
    except Exception as e:  # jt.load raises whatever unpickling raised
        raise CheckpointError(f"{path}: neither a .npz checkpoint nor a Jittor .pkl state dict ({e})") from None
