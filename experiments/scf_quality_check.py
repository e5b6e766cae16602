#!/usr/bin/env python3
"""Does an SCF model's kappa drop when faces get worse? Mean kappa of a pair set's images,
as they are and blurred / occluded / downscaled.

    python3 experiments/scf_quality_check.py --checkpoint results/SCF-MobileFaceNet-demo/last.npz \\
        --target data/demo/lfw_demo
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import util.runtime  # noqa: E402,F401

import jittor as jt  # noqa: E402
import numpy as np  # noqa: E402

from data.degradations import DEGRADATIONS, degrade_all  # noqa: E402
from data.verification_sets import load_target  # noqa: E402
from evaluation.embedding import EvalTarget, image_kappas  # noqa: E402
from model.checkpoint import not_scf  # noqa: E402
from model.loading import load_model  # noqa: E402
from util import distributed  # noqa: E402
from util.errors import InputError  # noqa: E402
from util.options import positive_int  # noqa: E402


def kappa_table(checkpoint_path, target, num_workers, batch_size=16):
    """{condition: kappa of every image} for the originals and each degradation."""
    backbone, head, cfg, _ = load_model(checkpoint_path)
    if head is None:
        raise not_scf(checkpoint_path)
    images = EvalTarget(load_target(target, "."), cfg["input_hw"], num_workers).images
    conditions = {"original": images, **{how: degrade_all(images, how) for how in DEGRADATIONS}}
    with jt.no_grad():
        return {name: image_kappas(backbone, head, imgs, batch_size) for name, imgs in conditions.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="an SCF checkpoint (train_SCF_jittor.py)")
    p.add_argument("--target", required=True, help="a .bin or pairs folder whose images are used")
    p.add_argument("--workers_id", type=distributed.workers_id, default="auto",
                   help=f"{distributed.WORKERS_ID_HELP} (default: auto)")
    p.add_argument("--num_workers", type=positive_int, default=4, help="image-decoding threads")
    args = p.parse_args(argv)
    try:
        distributed.select_device(args.workers_id)
        table = kappa_table(args.checkpoint, args.target, args.num_workers)
    except InputError as e:  # bad input: the message names the file at fault
        sys.exit(f"error: {e}")
    original = table["original"]
    print(f"{'images':<12}{'mean kappa':>12}{'median':>10}{'lower than original':>22}")
    for name, kappas in table.items():
        lower = "" if name == "original" else f"{100 * np.mean(kappas < original):.1f} %"
        print(f"{name:<12}{kappas.mean():>12.1f}{np.median(kappas):>10.1f}{lower:>22}")


if __name__ == "__main__":
    main()
