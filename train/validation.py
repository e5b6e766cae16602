"""Verification during training: the targets, their figures in the log and metrics, and the best results."""
import os

import numpy as np

from data.text import DataError
from data.verification_sets import load_target
from evaluation.embedding import EvalTarget, evaluate_target
from model.checkpoint import BEST
from util import distributed


def load_eval_targets(cfg, log):
    """The config's targets, decoded; a default one that is missing is skipped with a warning, a named one is fatal."""
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


class Validation:
    """Scores the targets with the training backbone and tracks the best results (kept in checkpoints)."""

    def __init__(self, targets, batch_size, best=None):
        self.targets, self.batch_size = targets, batch_size
        self.best = best or {"mean_accuracy": -1.0, "step": None, "per_target": {}, "baseline": {}, "latest": {}}

    def __call__(self, backbone, progress, metrics, log):
        """Evaluate every target (on every rank); True on a new best mean accuracy."""
        if not self.targets:
            return False
        reports = [evaluate_target(backbone, t, self.batch_size) for t in self.targets]
        backbone.train()
        best = self.best
        for r in reports:
            log.info("[%s][step %d] accuracy %.4f +- %.4f  threshold %.2f  XNorm %.2f  AUC %.4f  EER %.4f  TAR@FAR %s",
                     r["target"], progress["step"], r["accuracy"], r["accuracy_std"], r["threshold"], r["xnorm"],
                     r["auc"], r["eer"], "  ".join(f"{far} {tar:.4f}" for far, tar in r["tar_at_far"].items()))
            if distributed.is_main():
                record = {k: v for k, v in r.items() if k != "roc"}
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

    def summary(self, log, outdir):
        best = self.best
        for name, accuracy in best["latest"].items():
            log.info("%s: verification accuracy %.2f %% at step 0 -> %.2f %% at the end (best %.2f %%)", name,
                     100 * best["baseline"].get(name, float("nan")), 100 * accuracy, 100 * best["per_target"][name])
        if best["step"]:
            log.info("best mean verification accuracy %.4f at step %d: %s", best["mean_accuracy"], best["step"],
                     os.path.join(outdir, BEST))
