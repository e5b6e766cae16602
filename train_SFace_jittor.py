#!/usr/bin/env python3
"""Train a face-recognition backbone with the SFace loss; `mpirun -np N` for N data-parallel ranks.

    python3 train_SFace_jittor.py --data_mode demo                     # the embedded demo
    python3 train_SFace_jittor.py --net IR_50 --param_a 0.87 --param_b 1.2 --data_root DIR

Backbone and loss head (any of head/, `--head`) learn together with SGD; the learning rate is
divided by 10 at each of `--stages`; the targets are scored every `--eval_freq` batches.
"""
import util.runtime  # noqa: F401  (must precede jittor: picks the CPU build on GPU-less machines)

from functools import partial

from data.label_noise import apply_noise, write_noise_lists
from evaluation.angles import angle_summary
from train.config import SFACE, RunFinished, configure
from train.loop import Run
from train.optim import stage_lr
from train.run_state import load_part
from train.steps import NonFiniteError, sface_step
from train.training_model import build_model, check_head_fits
from train.validation import Validation, load_eval_targets
from util import distributed
from util.errors import InputError


def add_label_noise(run, cfg):
    """--label_noise, --label_noise_open: drawn from the seed, trained with from the first step, listed in the outdir."""
    noise = apply_noise(run.dataset, cfg["label_noise"], cfg["label_noise_open"], cfg["seed"])
    written = write_noise_lists(cfg["outdir"], run.dataset, noise) if distributed.is_main() else []
    run.log.info("label noise (seed %d): %d of %d images trained with another class's label, %d replaced by images "
                 "of people outside the training classes%s", cfg["seed"], len(noise.flipped), len(run.dataset),
                 len(noise.replaced), f"; listed in {', '.join(written)}" if written else "")


def main(argv=None):
    cfg, checkpoint, weights = configure(SFACE, argv)
    # SFace's a is the angle below which a sample is no longer pulled: each log window counts those.
    run = Run(cfg, checkpoint, partial(angle_summary, a=cfg["head_params"].get("a")))
    if cfg["label_noise"] or cfg["label_noise_open"]:
        add_label_noise(run, cfg)
    validation = Validation(load_eval_targets(cfg, run.log), cfg["batch_size"],
                            checkpoint["meta"]["best"] if checkpoint else None)
    check_head_fits(cfg, run.dataset)
    model = build_model(cfg, run.dataset.num_classes)
    for part, arrays in weights.items():
        load_part(getattr(model, part), arrays, cfg[f"resume_{part}"])
    run.begin(model, f"{cfg['net']} ({cfg['input_size']}, {cfg['embedding_size']}-d) + {cfg['head']}"
                     f"{' (sharded)' if model.head.sharded else ''}")
    run.train(model, partial(sface_step, model, cfg["seed"], amp=cfg["amp"]), stage_lr, validation)
    return validation.best


if __name__ == "__main__":
    # Bad input names the file at fault; any failure on any rank ends the whole job, naming the rank.
    distributed.run_main(main, expected_errors=(InputError, NonFiniteError),
                         clean_exits=(RunFinished,))
