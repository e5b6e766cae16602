"""The training run both scripts share: outputs, start or resume, the epoch loop with logging,
evaluation and checkpoints, and the summary.

A script supplies what differs: the model (`TrainingModel`), its step function
`step(images, labels, step) -> figures`, its learning-rate schedule `lr_at(cfg, epoch)`,
how a log window summarises its angles and, for SFace-style runs, a `Validation` that scores
targets and keeps `best.npz`; labels it trains with other than those listed (label noise) it
sets on `run.dataset` before training.
"""
import json
import os
import time

import numpy as np
from tqdm import tqdm

from data.loader import BatchLoader
from data.training_sets import (check_resumed_data, check_trainable, classes_with_images, data_identity,
                                open_training_set)
from evaluation.angles import angle_summary
from evaluation.metrics_file import METRICS_NAME, MetricsLog
from model.checkpoint import BEST, LAST
from util import distributed
from util.files import write_json

from .config import reached_max_steps
from .logger import TrainWindow, describe_record, setup_logging
from .run_state import open_run_folder, restore_state, save_state
from .tensorboard_log import TENSORBOARD_DIR, TensorBoardLog, remove_event_files

CONFIG_NAME = "config.json"


class Run:
    """Logging, metrics, the training data and the position of one run (new or resumed)."""

    def __init__(self, cfg, checkpoint, summarise_angles=angle_summary):
        """`summarise_angles(theta_target, theta_other)` -> the `angles` record of a log window (the SFace script
        gives its run's a, for the share of samples no longer pulled)."""
        self.cfg, self.checkpoint = cfg, checkpoint
        self.rank, self.world = distributed.rank(), distributed.world_size()
        leftovers = open_run_folder(cfg["outdir"], cfg["resume"] if checkpoint else None)  # before reading data
        self.log = setup_logging(cfg["outdir"])
        if leftovers:
            self.log.info("removed %d partial checkpoint(s) that a process killed mid-write left: %s", len(leftovers),
                          ", ".join(leftovers))
        # rank 0 writes metrics.jsonl and, with --tensorboard, the same records as TensorBoard events
        self.tensorboard = TensorBoardLog(os.path.join(cfg["outdir"], TENSORBOARD_DIR)) \
            if cfg["tensorboard"] and distributed.is_main() else None
        self.metrics = MetricsLog(os.path.join(cfg["outdir"], METRICS_NAME),
                                  self.tensorboard.write if self.tensorboard else None)
        meta = checkpoint["meta"] if checkpoint else {}
        self.progress = meta.get("progress", {"epoch": 0, "batch": 0, "step": 0})
        self.window = TrainWindow(meta.get("window"), summarise_angles)
        self.dataset = open_training_set(cfg["data_root"], cfg["input_hw"])
        check_trainable(self.dataset)
        if checkpoint is not None:
            old_root = meta["config"]["data_root"]
            stored = meta.get("data", meta["config"].get("data"))  # in the config itself in older checkpoints
            check_resumed_data(self.dataset, stored, old_root, moved(old_root, cfg["data_root"]))
        self.data = data_identity(self.dataset)  # what a resumed run checks its data against: the labels as listed
        self.loader = BatchLoader(self.dataset, cfg["batch_size"], cfg["seed"], rank=self.rank, world_size=self.world,
                                  num_workers=cfg["num_workers"], strict=cfg["strict_data"])
        self.log.info("training set %s: %d images, %d classes (%d with images), %d batches of %d per epoch",
                      self.dataset.source, len(self.dataset), self.dataset.num_classes,
                      classes_with_images(self.dataset), len(self.loader), cfg["batch_size"])

    def begin(self, model, describe):
        """Restore a resumed run's model, or write a new run's config; then make the ranks' replicas equal."""
        modules = {"backbone": model.backbone, "head": model.head}
        if self.checkpoint is not None:
            restore_state(self.checkpoint, self.cfg["resume"], modules, model.optimizer)
            if distributed.is_main():
                self.metrics.truncate_after(self.progress["step"])
                if self.tensorboard:
                    self.tensorboard.resume(self.progress["step"], self.metrics.records())
            self.log.info("resumed %s at epoch %d, batch %d (step %d)", self.cfg["resume"], self.progress["epoch"] + 1,
                          self.progress["batch"], self.progress["step"])
        elif distributed.is_main():
            self.metrics.start()
            remove_event_files(os.path.join(self.cfg["outdir"], TENSORBOARD_DIR))
            write_json(os.path.join(self.cfg["outdir"], CONFIG_NAME), self.cfg, "run config")
        replicated = model.optimizer.replicated()
        distributed.broadcast_vars(list(replicated.values()))
        distributed.check_replicas_identical({n: p.numpy() for n, p in replicated.items()}, "at start")
        self.log.info("%s on %s, %d process(es); config: %s", describe, self.cfg["device"], self.world,
                      json.dumps(self.cfg, sort_keys=True))

    def save(self, name, model, validation):
        meta = {"config": self.cfg, "data": self.data, "progress": self.progress, "window": self.window.sums}
        if validation is not None:
            meta["best"] = validation.best
        save_state(os.path.join(self.cfg["outdir"], name), meta, {"backbone": model.backbone, "head": model.head},
                   model.optimizer)

    def evaluate(self, model, validation):
        if validation(model.backbone, self.progress, self.metrics, self.log) and self.progress["step"]:
            self.save(BEST, model, validation)
        self.progress["evaluated_step"] = self.progress["step"]

    def log_window(self, lr):
        record = self.window.record(self.progress, lr)
        record["skipped_images"] = self.skipped_images()
        if distributed.is_main():
            self.metrics.write(record)
        self.log.info("epoch %d batch %d/%d step %d  lr %.4g  %s", self.progress["epoch"] + 1, self.progress["batch"],
                      len(self.loader), self.progress["step"], lr, describe_record(record))

    def train(self, model, step, lr_at, validation=None):
        """The epoch loop, from the run's position to its last epoch (or --max_steps)."""
        cfg, progress = self.cfg, self.progress
        for module in model.optimizer.modules.values():
            module.train()
        if validation is not None and progress["step"] == 0:
            self.evaluate(model, validation)  # the starting point, to compare against
        self.window.start = time.time()  # throughput measures training, not that evaluation
        while progress["epoch"] < cfg["epochs"] and not reached_max_steps(cfg, progress):
            epoch = progress["epoch"]
            model.optimizer.lr = lr_at(cfg, epoch)
            bar = tqdm(total=len(self.loader), initial=progress["batch"], desc=f"epoch {epoch + 1}/{cfg['epochs']}",
                       disable=None if distributed.is_main() else True,  # None: off without a terminal
                       dynamic_ncols=True, leave=False)
            step_start = time.time()
            for images, labels in self.loader.epoch(epoch, progress["batch"]):
                stats = step(images, labels, progress["step"])
                progress["batch"] += 1
                progress["step"] += 1
                self.window.add(stats)
                bar.update(1)
                now = time.time()
                bar.set_postfix(progress_figures(stats, now - step_start))
                step_start = now
                if progress["step"] % cfg["log_freq"] == 0:
                    self.log_window(model.optimizer.lr)
                if validation is not None and cfg["eval_freq"] and progress["step"] % cfg["eval_freq"] == 0:
                    with self.window.paused():
                        self.evaluate(model, validation)
                stop = reached_max_steps(cfg, progress)
                if cfg["save_freq"] and progress["step"] % cfg["save_freq"] == 0 or stop:
                    self.save(LAST, model, validation)
                if stop:
                    break
            bar.close()
            if not reached_max_steps(cfg, progress):
                progress.update(epoch=epoch + 1, batch=0)
                self.save(LAST, model, validation)
        if validation is not None and progress.get("evaluated_step") != progress["step"]:
            self.evaluate(model, validation)
            self.save(LAST, model, validation)
        self.finish(validation)

    def skipped_images(self):
        """Training images skipped so far by every rank (a collective: all ranks call it at the same step)."""
        return int(distributed.sum_arrays(np.array([self.loader.skipped], np.int64))[0])

    def finish(self, validation):
        skipped = self.skipped_images()
        if skipped and distributed.is_main():
            self.log.warning("%d unreadable training images were skipped (see the warnings above)", skipped)
        if validation is not None:
            validation.summary(self.log, self.cfg["outdir"])
        self.log.info("done at step %d; latest checkpoint %s", self.progress["step"],
                      os.path.join(self.cfg["outdir"], LAST))
        if self.tensorboard:
            self.tensorboard.close()
            self.log.info("watch the curves: tensorboard --logdir %s", self.tensorboard.folder)
        self.log.info("plot the curves: python3 tools/plot_run.py %s", self.cfg["outdir"])


def moved(old_root, new_root):
    return os.path.realpath(old_root) != os.path.realpath(new_root)


def progress_figures(stats, seconds):
    """What the progress bar shows beside the count: loss, train accuracy (when counted), img/s."""
    figures = {"loss": f"{stats['loss']:.3f}"}
    if "correct" in stats:
        figures["acc"] = f"{stats['correct'] / stats['samples']:.3f}"
    figures["img_s"] = f"{stats['samples'] / seconds:.0f}"
    return figures
