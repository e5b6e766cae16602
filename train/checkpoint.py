"""The one checkpoint format, a numpy `.npz` archive (no pickle; `np.load` reads it anywhere), and
saving / restoring a training run's state in it at any world size.

Arrays are stored under `backbone/<name>`, `head/<name>` and
`optimizer/<part>/<name>/<buffer>` (SGD momentum, Adam moments: by parameter, see
train/optim.py), plus `meta`, a JSON string with the run's config, the training position
(epoch, batch within the epoch, global step, optimizer steps) and the best evaluation
results. A sharded head is stored whole (every class centre), so a checkpoint loads into
any number of processes, sharded or not. RNG state needs no storage: every random draw is
seeded from (seed, epoch) or (seed, step), which the checkpoint holds.

Files are written to a temporary name (`<name>.tmp<PID>`), flushed to disk and renamed over
the old one, so a crash mid-write leaves the previous checkpoint intact; a write that fails
(a full disk) removes its temporary file and says so, and a run starting in the folder
removes those a killed process left. A new run refuses a folder holding another run's
checkpoints (`open_run_folder`).

Weights only: `train.model.load_model(path)` builds the model and loads it; or take the
`backbone/` keys of `np.load(path)` yourself.
"""
import glob
import json
import os
import zipfile

import numpy as np

from interop.jittor_pickle import load_jittor_file
from interop.torch_pickle import is_torch_file
from interop.weight_import import read_reference_pytorch, state_dict_arrays
from util import distributed

FORMAT = "sface-jittor-checkpoint-v1"
LAST, BEST = "last.npz", "best.npz"
# The official SFace-Jittor code saved bare state dicts (Backbone_*.pkl, Head_*.pkl) and fed
# its networks (x - 127.5) * 0.078125.
OFFICIAL_JITTOR_INPUT_NORM = [127.5, 0.078125]
# The config keys that describe a backbone (what building it needs).
MODEL_KEYS = ("net", "input_hw", "input_size", "embedding_size", "input_norm")


PARTS = ("backbone", "head", "optimizer")  # the array entries: <part>/<name>
TEMPORARY = ".tmp"  # a checkpoint being written: <name>.tmp<PID>, renamed to <name> once whole


class CheckpointError(ValueError):
    """A checkpoint or weight file that cannot be used, with the file named in the message."""


class OutputError(ValueError):
    """An output folder or file that cannot be written, or a run that would be overwritten; the path is named."""


def module_arrays(module):
    return {name: var.numpy() for name, var in module.state_dict().items()}


def save_checkpoint(path, meta, backbone, head, optimizer_state=None):
    """backbone, head: {name: array}; optimizer_state: {'<part>/<name>/<buffer>': array}."""
    arrays = {f"backbone/{k}": v for k, v in backbone.items()}
    arrays.update({f"head/{k}": v for k, v in head.items()})
    arrays.update({f"optimizer/{k}": v for k, v in (optimizer_state or {}).items()})
    arrays["meta"] = np.array(json.dumps(dict(meta, format=FORMAT)))
    make_outdir(os.path.dirname(os.path.abspath(path)))
    tmp = f"{path}{TEMPORARY}{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write_npz(f, arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)  # a partial file would keep a full disk full
        kept = f"the previous {path} is intact" if os.path.exists(path) else "no earlier checkpoint was there"
        raise OutputError(f"{path}: cannot write the checkpoint ({e.strerror or e}); {kept}") from None


def write_npz(file, arrays):
    """`arrays` into the open binary `file` as np.savez lays them out, the archive closed even when a write fails.

    (np.savez leaves its ZipFile open on an error; closed later, once `file` is, it prints a traceback.)
    """
    with zipfile.ZipFile(file, "w", zipfile.ZIP_STORED) as archive:
        for name, value in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as entry:
                np.lib.format.write_array(entry, np.asanyarray(value), allow_pickle=False)


def make_outdir(path):
    """Create the folder `path` (and its parents) or raise an OutputError saying why it cannot be used."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"{path}: exists and is not a folder; give another --outdir")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{path}: cannot create the output folder ({e.strerror}); give another --outdir") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: the output folder is not writable; give another --outdir")


def open_run_folder(outdir, resumed=None):
    """The output folder of a run, created; refused to a new run while it holds another run's checkpoints.

    `resumed`: the checkpoint file a resumed run continues (its own folder may hold checkpoints).
    -> the partial checkpoints a process killed mid-write left there, removed (by rank 0).
    """
    make_outdir(outdir)
    held = [name for name in (LAST, BEST) if os.path.exists(os.path.join(outdir, name))]
    own = resumed is not None and os.path.realpath(os.path.dirname(resumed)) == os.path.realpath(outdir)
    if held and not own:
        raise OutputError(f"{outdir}: holds the checkpoints of an earlier run ({', '.join(held)}), which a new run "
                          f"would replace; continue that run with --resume {outdir}, or give another --outdir "
                          "(or remove the folder to start over)")
    if not distributed.is_main():
        return []
    leftovers = sorted(glob.glob(os.path.join(glob.escape(outdir), f"*.npz{TEMPORARY}*")))
    for path in leftovers:
        os.remove(path)
    return leftovers


def load_checkpoint(path):
    """-> dict(meta, backbone, head, optimizer); CheckpointError naming the file if it is not ours."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({e})") from None
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
        var.assign(value.astype(np.float32))


def read_weights(path, part):
    """`part` ('backbone' or 'head') weights from one of our checkpoints, an official SFace-Jittor .pkl
    (`jt.save` of a state dict) or a PyTorch state dict (`torch.save`, zip or legacy format).

    No file runs code: a pickle naming anything a state dict does not hold is refused.
    -> (arrays, the run config of our checkpoint or None for a state dict).
    """
    if path.endswith(".npz"):
        checkpoint = load_checkpoint(path)
        return checkpoint[part], checkpoint["meta"].get("config")
    try:
        if is_torch_file(path):
            return read_reference_pytorch(path), None
        return state_dict_arrays(load_jittor_file(path), path), None
    except ValueError as e:  # the message names the file
        raise CheckpointError(str(e)) from None


def is_scf(config):
    """Whether a checkpoint's config is an SCF run's (a confidence head on a frozen model)."""
    return bool(config.get("scf"))


def model_config(path, config=None):
    """The backbone-describing keys of a checkpoint's config (read from `path` unless given)."""
    config = load_checkpoint(path)["meta"].get("config", {}) if config is None else config
    if "net" not in config:
        raise CheckpointError(f"{path}: holds no model config (net, input size, embedding size)")
    return {k: config[k] for k in MODEL_KEYS if k in config}


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


def training_checkpoint(path, scf):
    """A checkpoint to resume (a file, or an outdir holding last.npz) of an SFace-style or an SCF run.

    -> (its file path, the checkpoint); CheckpointError naming the file when it is of the other kind or
    holds weights only.
    """
    path = run_checkpoint(path)
    checkpoint = load_checkpoint(path)
    config = checkpoint["meta"].get("config", {})
    if scf and not is_scf(config):
        raise not_scf(path)
    if not scf and is_scf(config):
        raise CheckpointError(f"{path}: an SCF checkpoint; resume it with train_SCF_jittor.py")
    if "progress" not in checkpoint["meta"]:
        raise CheckpointError(f"{path}: holds weights only (no training state); start from it with "
                              f"{'--checkpoint' if scf else '--resume_backbone'}")
    return path, checkpoint


# ---- a training run's state, at any world size ----

def is_sharded(module):
    return getattr(module, "sharded", False)


def save_state(path, meta, modules, optimizer):
    """Every rank takes part (replica check, sharded head gather); rank 0 writes the whole model.

    modules: {'backbone': module, 'head': module}; meta: config, progress and the like.
    """
    distributed.check_replicas_identical({n: p.numpy() for n, p in optimizer.replicated().items()},
                                         f"before writing {path}")
    arrays, state = {part: module_arrays(m) for part, m in modules.items()}, optimizer.state_arrays()
    for part, module in modules.items():
        if is_sharded(module):
            arrays[part] = {n: module.gather_block(a) for n, a in arrays[part].items()}
            state = {k: module.gather_block(a) if k.startswith(f"{part}/") else a for k, a in state.items()}
    if optimizer.loss_scale:
        meta = dict(meta, loss_scale=optimizer.loss_scale.state())
    if distributed.is_main():  # it alone holds whole arrays (a sharded head is gathered to it); its error ends the job
        not_finite = [f"{part}/{n}" for part in arrays for n, a in arrays[part].items() if not np.isfinite(a).all()]
        if not_finite:
            raise CheckpointError(f"{path}: not written, the weights {', '.join(not_finite[:3])} are not finite; "
                                  "the checkpoint already there (if any) is unchanged")
        save_checkpoint(path, dict(meta, optimizer_steps=optimizer.steps), arrays["backbone"], arrays["head"], state)


def own_block(module, arrays, current, source):
    """Whole-module arrays from a checkpoint -> what this rank holds (its block of classes, if sharded).

    `current`: this rank's arrays of the names to convert (weights or optimizer state); others pass through.
    """
    if not is_sharded(module):
        return arrays
    for name, array in arrays.items():
        if name in current and np.shape(array)[0] != module.num_classes:
            raise CheckpointError(f"{source}: head '{name}' has {np.shape(array)[0]} classes, the training set "
                                  f"{module.num_classes}")
    return {name: module.take_block(array, current[name]) if name in current else array
            for name, array in arrays.items()}


def load_part(module, arrays, source):
    """Weights (whole, as stored) into a module, or into this rank's block of a sharded one."""
    load_weights(module, own_block(module, arrays, module_arrays(module), source), source)


def restore_state(checkpoint, source, modules, optimizer):
    """Weights and optimizer state of a --resume checkpoint into this rank's model (any world size)."""
    state = checkpoint["optimizer"]
    for part, module in modules.items():
        load_part(module, checkpoint[part], source)
        current = {k: v for k, v in optimizer.state_arrays().items() if k.startswith(f"{part}/")}
        state = own_block(module, state, current, source)
    optimizer.load_state_arrays(state, checkpoint["meta"]["optimizer_steps"], source)
    if optimizer.loss_scale:
        optimizer.loss_scale.load_state(checkpoint["meta"]["loss_scale"])
