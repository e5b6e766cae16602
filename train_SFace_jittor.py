#!/usr/bin/env python3
"""Train a face-recognition backbone with the SFace loss; `mpirun -np N` for N data-parallel ranks.

    python3 train_SFace_jittor.py --data_mode demo                     # the embedded demo
    python3 train_SFace_jittor.py --net IR_50 --param_a 0.87 --param_b 1.2 --data_root DIR
"""
import util.runtime  # noqa: F401  (must precede jittor: picks the CPU build on GPU-less machines)

import json
import os
import time

import jittor as jt
import numpy as np
from tqdm import tqdm

from backbone import build_backbone_from_config
from backbone.common import DEFAULT_INPUT_MEAN, DEFAULT_INPUT_SCALE
from data.image_list import DataError
from data.loader import BatchLoader
from data.training_sets import open_training_set
from data.verification_sets import load_target
from head import build_head
from util import distributed
from util.checkpoint import (OFFICIAL_JITTOR_INPUT_NORM, CheckpointError, load_checkpoint, load_weights, module_arrays,
                              read_weights, save_checkpoint)
from util.config import lr_at, parse_config
from util.evaluation import EvalTarget, evaluate_target
from util.logger import MetricsLog, TrainWindow, describe_record, setup_logging
from util.optim import SGD

LAST, BEST = "last.npz", "best.npz"
# What a resumed run may change; everything else comes from the checkpoint's config.
RESUME_OVERRIDABLE = ("workers_id", "gpu_ids", "num_workers", "max_steps", "epochs", "eval_freq", "save_freq",
                      "log_freq", "target", "targets", "eval_root", "strict_data", "outdir", "resume", "shard_head")


def resume_config(cfg):
    """The checkpoint's config, with the options a resumed run may change taken from this command line."""
    path = os.path.join(cfg["resume"], LAST) if os.path.isdir(cfg["resume"]) else cfg["resume"]
    checkpoint = load_checkpoint(path)
    if "progress" not in checkpoint["meta"]:
        raise CheckpointError(f"{path}: holds weights only (no training state); start from it with --resume_backbone")
    resumed = dict(checkpoint["meta"]["config"])
    for key in RESUME_OVERRIDABLE:
        if key in cfg["given"] or key in ("resume", "gpu_ids"):
            resumed[key] = cfg[key]
    resumed["resume"] = path
    if "outdir" not in cfg["given"]:
        resumed["outdir"] = os.path.dirname(os.path.abspath(path))
    return resumed, checkpoint


def load_eval_targets(cfg, log):
    targets = []
    for name in cfg["targets"]:
        try:
            pair_set = load_target(name, cfg["eval_root"])
        except DataError as e:
            if "target" in cfg["given"]:
                raise
            log.warning("skipping default verification target: %s", e)
            continue
        targets.append(EvalTarget(pair_set, cfg["input_hw"], cfg["num_workers"]))
        log.info("verification target %s: %d pairs, %d distinct images", pair_set.name,
                 len(pair_set.issame), len(pair_set.encoded))
    return targets


def train_step(backbone, head, optimizer, images, labels, seed, step):
    """One SGD step on this rank's part of the global batch; -> the global batch's figures (alike on every rank)."""
    rank = distributed.rank()
    jt.set_seed((seed * 1_000_003 + step) * 1_009 + rank)  # dropout masks from (seed, step, rank): resumable
    out = head(backbone(jt.array(images)), jt.array(labels), step)
    # Each rank minimises (and reports) its part of the global batch's loss: a sharded head's output
    # already is one; the others' are means over this rank's images, weighted by its share of the batch.
    share = 1.0 if head.sharded else distributed.batch_share(len(labels))
    optimizer.step(out.loss * share)
    figures = {"loss": out.loss, "cos_target": out.cos_target, "cos_other": out.cos_other, **out.parts}
    stats = distributed.global_figures({k: v.item() for k, v in figures.items()}, share,
                                       {"correct": out.correct.item(), "samples": len(labels)})
    stats["steps"] = 1
    return stats


def run_evaluation(backbone, targets, cfg, progress, best, metrics, log):
    """Evaluate every target, tracking the best and the step-0 figures; True on a new best mean."""
    reports = [evaluate_target(backbone, t, cfg["batch_size"]) for t in targets]
    backbone.train()
    for r in reports:
        log.info("[%s][step %d] accuracy %.4f +- %.4f  threshold %.2f  XNorm %.2f  AUC %.4f  EER %.4f  TAR@FAR "
                 "1e-3 %.4f 1e-4 %.4f", r["target"], progress["step"], r["accuracy"], r["accuracy_std"],
                 r["threshold"], r["xnorm"], r["auc"], r["eer"], r["tar_at_far"]["0.001"], r["tar_at_far"]["0.0001"])
        record = {k: v for k, v in r.items() if k != "roc"}
        if distributed.is_main():
            metrics.write(dict(record, kind="eval", step=progress["step"], epoch=progress["epoch"] + 1))
        best["per_target"][r["target"]] = max(best["per_target"].get(r["target"], 0.0), r["accuracy"])
        if progress["step"] == 0:
            best["baseline"][r["target"]] = r["accuracy"]
        best["latest"][r["target"]] = r["accuracy"]
    mean_accuracy = float(np.mean([r["accuracy"] for r in reports]))
    improved = mean_accuracy > best["mean_accuracy"]
    if improved:
        best.update(mean_accuracy=mean_accuracy, step=progress["step"])
    return improved


def save_state(path, cfg, progress, best, window, backbone, head, optimizer):
    """Every rank takes part (replica check, sharded head gather); rank 0 writes the whole model."""
    distributed.check_replicas_identical({n: p.numpy() for n, p in optimizer.replicated().items()},
                                         f"before writing {path}")
    head_arrays, state = module_arrays(head), optimizer.state_arrays()
    if head.sharded:
        head_arrays = {n: head.gather_block(a) for n, a in head_arrays.items()}
        state = {k: head.gather_block(a) if k.startswith("head/") else a for k, a in state.items()}
    if distributed.is_main():
        meta = {"config": cfg, "progress": progress, "best": best, "window": window.sums,
                "optimizer_steps": optimizer.steps}
        save_checkpoint(path, meta, module_arrays(backbone), head_arrays, state)


def head_block(head, arrays, current, source):
    """Whole-head arrays from a checkpoint -> what this rank holds (its block of classes, if sharded).

    `current`: this rank's arrays of the names to convert (weights or optimizer state); others pass through.
    """
    if not head.sharded:
        return arrays
    for name, array in arrays.items():
        if name in current and np.shape(array)[0] != head.num_classes:
            raise CheckpointError(f"{source}: head '{name}' has {np.shape(array)[0]} classes, the training set "
                                  f"{head.num_classes}")
    return {name: head.take_block(array, current[name]) if name in current else array
            for name, array in arrays.items()}


def load_head_weights(head, arrays, source):
    load_weights(head, head_block(head, arrays, module_arrays(head), source), source)


def restore_training_state(checkpoint, source, backbone, head, optimizer):
    """Weights and optimizer state of a --resume checkpoint into this rank's model (any world size)."""
    load_weights(backbone, checkpoint["backbone"], source)
    load_head_weights(head, checkpoint["head"], source)
    head_state = {k: v for k, v in optimizer.state_arrays().items() if k.startswith("head/")}
    optimizer.load_state_arrays(head_block(head, checkpoint["optimizer"], head_state, source),
                                checkpoint["meta"]["optimizer_steps"], source)


def build_model(cfg, num_classes):
    jt.set_seed(cfg["seed"])
    backbone = build_backbone_from_config(cfg)
    if cfg["local_bn"]:
        for module in backbone.modules():
            if isinstance(module, jt.nn.BatchNorm):
                module.sync = False
    head = build_head(cfg["head"], cfg["embedding_size"], num_classes, seed=cfg["seed"],
                      shard=cfg["shard_head"], **cfg["head_params"])
    optimizer = SGD({"backbone": backbone, "head": head}, cfg["lr"], cfg["momentum"], cfg["weight_decay"],
                    local=[f"head/{n}" for n in head.state_dict()] if head.sharded else ())
    return backbone, head, optimizer


def main(argv=None):
    cfg = parse_config(argv)
    checkpoint = None
    if cfg["resume"]:
        cfg, checkpoint = resume_config(cfg)
    device = distributed.select_device(cfg["gpu_ids"], cfg["workers_id"])
    rank, world = distributed.rank(), distributed.world_size()
    log = setup_logging(cfg["outdir"], rank)
    metrics = MetricsLog(os.path.join(cfg["outdir"], "metrics.jsonl"))

    # ---- data ----
    dataset = open_training_set(cfg["data_root"], cfg["input_hw"])
    loader = BatchLoader(dataset, cfg["batch_size"], cfg["seed"], rank=rank, world_size=world,
                         num_workers=cfg["num_workers"], strict=cfg["strict_data"])
    log.info("training set %s: %d images, %d classes (%d with images), %d batches of %d per epoch",
             dataset.source, len(dataset), dataset.num_classes, len(np.unique(dataset.labels[dataset.labels >= 0])),
             len(loader), cfg["batch_size"])
    targets = load_eval_targets(cfg, log)

    # ---- model, loss, optimizer ----
    start_weights = {}
    for part in ("backbone", "head"):
        if cfg[f"resume_{part}"] and checkpoint is None:
            arrays, source_cfg = read_weights(cfg[f"resume_{part}"], part)
            start_weights[part] = arrays
            if part == "backbone":  # keep the input normalisation the weights were trained with
                cfg["input_norm"] = source_cfg["input_norm"] if source_cfg else OFFICIAL_JITTOR_INPUT_NORM
    cfg.setdefault("input_norm", [DEFAULT_INPUT_MEAN, DEFAULT_INPUT_SCALE])
    backbone, head, optimizer = build_model(cfg, dataset.num_classes)
    progress = {"epoch": 0, "batch": 0, "step": 0}
    best = {"mean_accuracy": -1.0, "step": None, "per_target": {}, "baseline": {}, "latest": {}}
    window = TrainWindow()
    if checkpoint is not None:
        restore_training_state(checkpoint, cfg["resume"], backbone, head, optimizer)
        meta = checkpoint["meta"]
        progress, best, window = meta["progress"], meta["best"], TrainWindow(meta["window"])
        if distributed.is_main():
            metrics.truncate_after(progress["step"])
        log.info("resumed %s at epoch %d, batch %d (step %d)", cfg["resume"], progress["epoch"] + 1,
                 progress["batch"], progress["step"])
    else:
        if "backbone" in start_weights:
            load_weights(backbone, start_weights["backbone"], cfg["resume_backbone"])
        if "head" in start_weights:
            load_head_weights(head, start_weights["head"], cfg["resume_head"])
        if distributed.is_main():
            os.makedirs(cfg["outdir"], exist_ok=True)
            open(metrics.path, "w").close()
            with open(os.path.join(cfg["outdir"], "config.json"), "w") as f:
                json.dump(cfg, f, indent=2)
    distributed.broadcast_vars(list(optimizer.replicated().values()))
    distributed.check_replicas_identical({n: p.numpy() for n, p in optimizer.replicated().items()}, "at start")
    log.info("%s (%s) + %s%s on %s, %d process(es); config: %s", cfg["net"], f"{cfg['input_size']}, "
             f"{cfg['embedding_size']}-d", cfg["head"], " (sharded)" if head.sharded else "", device, world,
             json.dumps(cfg, sort_keys=True))
    backbone.train()
    head.train()

    def save(path):
        save_state(path, cfg, progress, best, window, backbone, head, optimizer)

    def evaluate():
        if targets and run_evaluation(backbone, targets, cfg, progress, best, metrics, log) and progress["step"]:
            save(os.path.join(cfg["outdir"], BEST))
        progress["evaluated_step"] = progress["step"]

    # ---- train ----
    if progress["step"] == 0:
        evaluate()  # the starting point, to compare against
    window.start = time.time()  # throughput measures training, not that evaluation
    stop = False
    while progress["epoch"] < cfg["epochs"] and not stop:
        epoch = progress["epoch"]
        optimizer.lr = lr_at(cfg, epoch)
        bar = tqdm(total=len(loader), initial=progress["batch"], desc=f"epoch {epoch + 1}/{cfg['epochs']}",
                   disable=True if rank else None, dynamic_ncols=True, leave=False)  # None: off when not a TTY
        step_start = time.time()
        for images, labels in loader.epoch(epoch, progress["batch"]):
            stats = train_step(backbone, head, optimizer, images, labels, cfg["seed"], progress["step"])
            progress["batch"] += 1
            progress["step"] += 1
            window.add(stats)
            bar.update(1)
            now = time.time()
            bar.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{stats['correct'] / stats['samples']:.3f}",
                            img_s=f"{stats['samples'] / (now - step_start):.0f}")
            step_start = now
            step = progress["step"]
            if step % cfg["log_freq"] == 0:
                record = window.record(progress, optimizer.lr)
                record["skipped_images"] = loader.skipped
                if rank == 0:
                    metrics.write(record)
                log.info("epoch %d batch %d/%d step %d  lr %.4g  %s", epoch + 1, progress["batch"], len(loader),
                         step, optimizer.lr, describe_record(record))
            if cfg["eval_freq"] and step % cfg["eval_freq"] == 0:
                evaluate()
            stop = bool(cfg["max_steps"]) and step >= cfg["max_steps"]
            if cfg["save_freq"] and step % cfg["save_freq"] == 0 or stop:
                save(os.path.join(cfg["outdir"], LAST))
            if stop:
                break
        bar.close()
        if not stop:
            progress.update(epoch=epoch + 1, batch=0)
            save(os.path.join(cfg["outdir"], LAST))
    if progress.get("evaluated_step") != progress["step"]:
        evaluate()
        save(os.path.join(cfg["outdir"], LAST))
    if loader.skipped:
        log.warning("%d unreadable training images were skipped (see the warnings above)", loader.skipped)
    for name, accuracy in best["latest"].items():
        log.info("%s: verification accuracy %.2f %% at step 0 -> %.2f %% at the end (best %.2f %%)", name,
                 100 * best["baseline"].get(name, float("nan")), 100 * accuracy, 100 * best["per_target"][name])
    log.info("done at step %d; latest checkpoint %s", progress["step"], os.path.join(cfg["outdir"], LAST))
    if best["step"]:
        log.info("best mean verification accuracy %.4f at step %d: %s", best["mean_accuracy"], best["step"],
                 os.path.join(cfg["outdir"], BEST))
    return best


if __name__ == "__main__":
    # Bad input names the file at fault; any failure on any rank ends the whole job, naming the rank.
    distributed.run_main(main, expected_errors=(DataError, CheckpointError))
