#!/usr/bin/env python3
"""Train Sphere Confidence Face (SCF): a per-image concentration kappa on a frozen model.

The backbone and the class centres come from a trained checkpoint (e.g. an SFace run's
best.npz) and stay frozen; only the confidence head learns, with the KL(delta || vMF)
loss of the SCF paper (Adam, StepLR as in the public recipe).

    python3 train_SCF_jittor.py --checkpoint results/MobileFaceNet-SFaceLoss-demo/best.npz --data_mode demo \\
        --batch_size 32 --epochs 4 --step_size 1 --lr 1e-3
"""
import util.runtime  # noqa: F401  (must precede jittor: picks the CPU build on GPU-less machines)

import os
from functools import partial

import jittor as jt

from data.text import DataError
from model.checkpoint import LAST, CheckpointError
from model.loading import load_model
from train.config import SCF, RunFinished, configure
from train.loop import Run
from train.optim import step_lr
from train.steps import NonFiniteError, scf_step
from train.training_model import build_scf_model
from util import distributed
from util.errors import InputError


def frozen_centres(frozen, source, dataset):
    """The source checkpoint's class centres, checked against the training set; no gradient reaches them."""
    if "weight" not in frozen.head_arrays:
        raise CheckpointError(f"{source}: holds no head with class centres (head/weight)")
    centres = frozen.head_arrays["weight"]
    if centres.shape[0] != dataset.num_classes:
        raise DataError(f"{dataset.source}: {dataset.num_classes} classes, but {source} has {centres.shape[0]} "
                        "class centres")
    return jt.array(centres).stop_grad()


def main(argv=None):
    cfg, checkpoint, _ = configure(SCF, argv)
    run = Run(cfg, checkpoint)
    frozen = load_model(cfg["source_checkpoint"])
    centres = frozen_centres(frozen, cfg["source_checkpoint"], run.dataset)
    model = build_scf_model(cfg, frozen)
    run.begin(model, f"SCF on frozen {cfg['net']} from {cfg['source_checkpoint']}")
    run.train(model, partial(scf_step, model, centres, cfg), step_lr)
    run.log.info("score it with eval_SFace_jittor.py --checkpoint %s", os.path.join(cfg["outdir"], LAST))


if __name__ == "__main__":
    # Bad input names the file at fault; any failure on any rank ends the whole job, naming the rank.
    distributed.run_main(main, expected_errors=(InputError, NonFiniteError),
                         clean_exits=(RunFinished,))
