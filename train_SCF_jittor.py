#!/usr/bin/env python3
"""Train Sphere Confidence Face (SCF): a per-image concentration kappa on a frozen model.

The backbone and the class centres come from a trained checkpoint (e.g. an SFace run's
best.npz) and stay frozen; only the confidence head learns, with the KL(delta || vMF)
loss of the SCF paper (Adam, StepLR as in the public recipe).

    python3 train_SCF_jittor.py --checkpoint results/MobileFaceNet-SFaceLoss-demo/best.npz --data_mode demo \\
        --batch_size 32 --epochs 4 --step_size 1 --lr 1e-3
"""
import util.runtime  # noqa: F401  (must precede jittor: picks the CPU build on GPU-less machines)

import argparse
import json
import os

import jittor as jt
import numpy as np
from tqdm import tqdm

from backbone import build_backbone_from_config
from data.image_list import DataError
from data.loader import BatchLoader
from data.training_sets import open_training_set
from head.common import cosine, target_mask
from head.scf import ConfidenceHead, scf_loss
from util import distributed
from util.checkpoint import CheckpointError, load_checkpoint, load_weights, module_arrays, save_checkpoint
from util.config import DATA_MODES, REPO_ROOT, parse_workers
from util.degradations import random_degradation
from util.logger import MetricsLog, TrainWindow, describe_record, setup_logging
from util.optim import Adam

LAST = "last.npz"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="trained checkpoint (.npz) holding the backbone and the head's class "
                                        "centres, both kept frozen")
    p.add_argument("--resume", default="", help="an SCF checkpoint (or its outdir) to continue exactly")
    p.add_argument("--data_mode", default="casia", choices=sorted(DATA_MODES), help="default data root")
    p.add_argument("--data_root", help="training set (imgs.txt or train.rec); must match the checkpoint's classes")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=3e-5, help="Adam learning rate")
    p.add_argument("--weight_decay", type=float, default=5e-4)
    p.add_argument("--step_size", type=int, default=2, help="epochs between learning-rate decays (StepLR)")
    p.add_argument("--gamma", type=float, default=0.5, help="StepLR decay factor")
    p.add_argument("--batch_size", type=int, default=256, help="global batch size")
    p.add_argument("--radius", type=float, default=64.0, help="r of w_y = r W_y / |W_y| (the SCF paper's 64)")
    p.add_argument("--quality_augment", type=float, default=0.0,
                   help="probability that a training image is blurred, downscaled or partly covered at a random "
                        "strength, so the head also sees faces whose embeddings drift from their centre (default 0: "
                        "the public recipe)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--workers_id", default="auto", help="GPU ids, 'cpu' or 'auto'")
    p.add_argument("--num_workers", type=int, default=4, help="image-decoding threads")
    p.add_argument("--log_freq", type=int, default=20)
    p.add_argument("--save_freq", type=int, default=1000)
    p.add_argument("--max_steps", type=int, default=0, help="stop after this many batches (0: no limit)")
    p.add_argument("--outdir", default="", help="default: results/SCF-<net>-<data_mode>")
    args = p.parse_args(argv)
    if not args.checkpoint and not args.resume:
        p.error("give --checkpoint (the frozen model) or --resume")
    for key in ("epochs", "batch_size", "step_size", "log_freq", "num_workers"):
        if getattr(args, key) <= 0:
            p.error(f"--{key} must be positive")
    return args


def scf_config(args):
    """Run config: the frozen model's backbone config plus SCF's own settings."""
    if args.resume:
        path = os.path.join(args.resume, LAST) if os.path.isdir(args.resume) else args.resume
        checkpoint = load_checkpoint(path)
        cfg = dict(checkpoint["meta"]["config"], resume=path, workers_id=args.workers_id,
                   num_workers=args.num_workers, max_steps=args.max_steps)
        cfg["outdir"] = args.outdir or os.path.dirname(os.path.abspath(path))
        return cfg, checkpoint
    source = load_checkpoint(args.checkpoint)["meta"].get("config", {})
    cfg = {k: source[k] for k in ("net", "input_hw", "input_size", "embedding_size", "input_norm") if k in source}
    cfg.update({k: v for k, v in vars(args).items() if k != "resume"}, scf=True, resume="",
               source_checkpoint=os.path.abspath(args.checkpoint))
    cfg["data_root"] = args.data_root or os.path.join(REPO_ROOT, DATA_MODES[args.data_mode]["data_root"])
    cfg["outdir"] = args.outdir or os.path.join("results", f"SCF-{cfg['net']}-{args.data_mode}")
    return cfg, None


def frozen_model(cfg):
    """(backbone in eval mode, class centres) from the source checkpoint; no gradient reaches either."""
    source = load_checkpoint(cfg["source_checkpoint"])
    backbone = build_backbone_from_config(cfg)
    load_weights(backbone, source["backbone"], cfg["source_checkpoint"])
    backbone.eval()
    if "weight" not in source["head"]:
        raise CheckpointError(f"{cfg['source_checkpoint']}: holds no head with class centres (head/weight)")
    return backbone, jt.array(source["head"]["weight"]).stop_grad()


def quality_augment(images, probability, rng):
    """Degrade a random subset of a N x 3 x H x W float batch (0..255) in place."""
    for i in np.flatnonzero(rng.random(len(images)) < probability):
        face = np.ascontiguousarray(images[i].transpose(1, 2, 0).astype(np.uint8))
        images[i] = random_degradation(face, rng).transpose(2, 0, 1)
    return images


def train_step(backbone, centres, head, optimizer, images, labels, cfg):
    """One Adam step of the confidence head on this rank's part of the batch; -> the global batch's figures."""
    with jt.no_grad():
        features = backbone.features(jt.array(images))
        cos = cosine(backbone.embedding(features), centres)
        cos_target = (cos * target_mask(jt.array(labels), cos)).sum(1)
    kappa = head(features)
    loss = scf_loss(kappa, cos_target, cfg["embedding_size"], cfg["radius"])
    share = distributed.batch_share(len(labels))
    optimizer.step(loss * share)
    figures = {"loss": loss, "kappa": kappa.mean(), "cos_target": cos_target.mean()}
    stats = distributed.global_figures({k: v.item() for k, v in figures.items()}, share, {"samples": len(labels)})
    stats["steps"] = 1
    return stats


def main(argv=None):
    cfg, checkpoint = scf_config(parse_args(argv))
    distributed.select_device(parse_workers(cfg["workers_id"]), cfg["workers_id"])
    rank, world = distributed.rank(), distributed.world_size()
    log = setup_logging(cfg["outdir"], rank)
    metrics = MetricsLog(os.path.join(cfg["outdir"], "metrics.jsonl"))

    dataset = open_training_set(cfg["data_root"], cfg["input_hw"])
    loader = BatchLoader(dataset, cfg["batch_size"], cfg["seed"], rank=rank, world_size=world,
                         num_workers=cfg["num_workers"])
    backbone, centres = frozen_model(cfg)
    if dataset.num_classes != centres.shape[0]:
        raise DataError(f"{dataset.source}: {dataset.num_classes} classes, but {cfg['source_checkpoint']} "
                        f"has {centres.shape[0]} class centres")
    jt.set_seed(cfg["seed"])
    head = ConfidenceHead(512, cfg["embedding_size"])
    optimizer = Adam({"head": head}, cfg["lr"], weight_decay=cfg["weight_decay"])
    progress, window = {"epoch": 0, "batch": 0, "step": 0}, TrainWindow()
    if checkpoint is not None:
        load_weights(head, checkpoint["head"], cfg["resume"])
        meta = checkpoint["meta"]
        optimizer.load_state_arrays(checkpoint["optimizer"], meta["optimizer_steps"], cfg["resume"])
        progress, window = meta["progress"], TrainWindow(meta["window"])
        if rank == 0:
            metrics.truncate_after(progress["step"])
    elif rank == 0:
        os.makedirs(cfg["outdir"], exist_ok=True)
        open(metrics.path, "w").close()
        with open(os.path.join(cfg["outdir"], "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
    log.info("SCF on frozen %s from %s: %d images, %d classes; config %s", cfg["net"], cfg["source_checkpoint"],
             len(dataset), dataset.num_classes, json.dumps(cfg, sort_keys=True))
    head.train()

    def save():
        if rank == 0:
            meta = {"config": cfg, "progress": progress, "window": window.sums, "optimizer_steps": optimizer.steps}
            save_checkpoint(os.path.join(cfg["outdir"], LAST), meta, module_arrays(backbone), module_arrays(head),
                            optimizer.state_arrays())

    stop = False
    while progress["epoch"] < cfg["epochs"] and not stop:
        epoch = progress["epoch"]
        optimizer.lr = cfg["lr"] * cfg["gamma"] ** (epoch // cfg["step_size"])
        bar = tqdm(total=len(loader), initial=progress["batch"], desc=f"epoch {epoch + 1}/{cfg['epochs']}",
                   disable=True if rank else None, leave=False)
        for images, labels in loader.epoch(epoch, progress["batch"]):
            if cfg["quality_augment"]:
                images = quality_augment(images, cfg["quality_augment"],
                                         np.random.default_rng([cfg["seed"], progress["step"], rank]))
            window.add(train_step(backbone, centres, head, optimizer, images, labels, cfg))
            progress["batch"] += 1
            progress["step"] += 1
            bar.update(1)
            step = progress["step"]
            if step % cfg["log_freq"] == 0:
                record = window.record(progress, optimizer.lr)
                if rank == 0:
                    metrics.write(record)
                log.info("epoch %d batch %d/%d step %d  lr %.3g  %s", epoch + 1, progress["batch"], len(loader),
                         step, optimizer.lr, describe_record(record))
            stop = bool(cfg["max_steps"]) and step >= cfg["max_steps"]
            if cfg["save_freq"] and step % cfg["save_freq"] == 0 or stop:
                save()
            if stop:
                break
        bar.close()
        if not stop:
            progress.update(epoch=epoch + 1, batch=0)
            save()
    log.info("done at step %d; SCF checkpoint %s (evaluate it with eval_SFace_jittor.py --checkpoint)",
             progress["step"], os.path.join(cfg["outdir"], LAST))


if __name__ == "__main__":
    # Bad input names the file at fault; any failure on any rank ends the whole job, naming the rank.
    distributed.run_main(main, expected_errors=(DataError, CheckpointError))
