"""A training run's state in the checkpoint format (model/checkpoint.py), at any world size: its output
folder, saving every rank's part of the model and optimizer, and restoring them for --resume.

RNG state needs no storage: every random draw is seeded from (seed, epoch) or (seed, step), which
the checkpoint holds. A new run refuses a folder holding another run's checkpoints (`open_run_folder`).
"""
import os

import numpy as np

from head import head_params
from model.checkpoint import (BEST, LAST, CheckpointError, is_scf, load_checkpoint, load_weights, module_arrays,
                              not_scf, run_checkpoint, save_checkpoint)
from model.loading import model_config
from util import distributed
from util.files import OutputError, make_outdir, remove_leftovers


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
    return remove_leftovers(outdir, "*.npz") if distributed.is_main() else []


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
    check_training_state(path, checkpoint["meta"])
    return path, checkpoint


def check_training_state(path, meta):
    """The run a damaged or hand-edited `meta` entry would resume, checked before anything is built from it."""
    model_config(path, meta.get("config") or {})
    progress = meta["progress"]
    if not (isinstance(progress, dict) and all(is_count(progress.get(k)) for k in ("epoch", "batch", "step"))):
        raise CheckpointError(f"{path}: its training position (meta 'progress') is not counts of epochs, batches "
                              "and steps")
    if not is_count(meta.get("optimizer_steps")):
        raise CheckpointError(f"{path}: its optimizer step count (meta 'optimizer_steps') is not a count")
    for key in ("best", "window"):
        if not isinstance(meta.get(key, {}), (dict, type(None))):
            raise CheckpointError(f"{path}: its meta '{key}' is not a JSON object")
    config = meta["config"]
    if not is_scf(config):
        try:
            head_params(config.get("head"), config.get("head_params", {}), config.get("shard_head", False))
        except ValueError as e:
            raise CheckpointError(f"{path}: its config names no head this project trains: {e}") from None


def is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


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
