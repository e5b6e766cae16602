#!/usr/bin/env python3
"""Train a face-recognition backbone with the SFace loss; `mpirun -np N` for N data-parallel ranks.

    python3 train_SFace_jittor.py --data_mode demo                     # the embedded demo
    python3 train_SFace_jittor.py --net IR_50 --param_a 0.87 --param_b 1.2 --data_root DIR

Backbone and loss head (any of head/, `--head`) learn together with SGD; the learning rate is
divided by 10 at each of `--stages`; the targets are scored every `--eval_freq` batches.
"""
import util.runtime  # noqa: F401  (must precede jittor: picks the CPU build on GPU-less machines)

from functools import partial

from data.image_list import DataError
from train.checkpoint import CheckpointError, OutputError, load_part
from train.config import SFACE, RunFinished, configure
from train.loop import Run
from train.model import build_model, start_weights
from train.optim import stage_lr
from train.steps import NonFiniteError, sface_step
from train.validation import Validation, load_eval_targets
from util import distributed


def main(argv=None):
    cfg, checkpoint = configure(SFACE, argv)
    weights = {}
    if checkpoint is None:  # a new run may start from --resume_backbone / --resume_head weights
        weights, cfg["input_norm"] = start_weights(cfg)
    run = Run(cfg, checkpoint)
    validation = Validation(load_eval_targets(cfg, run.log), cfg["batch_size"],
                            checkpoint["meta"]["best"] if checkpoint else None)
    model = build_model(cfg, run.dataset.num_classes)
    for part, arrays in weights.items():
        load_part(getattr(model, part), arrays, cfg[f"resume_{part}"])
    run.begin(model, f"{cfg['net']} ({cfg['input_size']}, {cfg['embedding_size']}-d) + {cfg['head']}"
                     f"{' (sharded)' if model.head.sharded else ''}")
    run.train(model, partial(sface_step, model, cfg["seed"], amp=cfg["amp"]), stage_lr, validation)
    return validation.best


if __name__ == "__main__":
    # Bad input names the file at fault; any failure on any rank ends the whole job, naming the rank.
    distributed.run_main(main, expected_errors=(DataError, CheckpointError, OutputError, NonFiniteError),
                         clean_exits=(RunFinished,))
