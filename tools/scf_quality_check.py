#!/usr/bin/env python3
"""Does an SCF model's kappa drop when faces get worse? Mean kappa of a pair set's images,
as they are and blurred / occluded / downscaled.

    python3 tools/scf_quality_check.py --checkpoint results/SCF-MobileFaceNet-demo/last.npz \\
        --target data/demo/lfw_demo
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import util.runtime  # noqa: E402,F401

import jittor as jt  # noqa: E402
import numpy as np  # noqa: E402

from backbone import build_backbone_from_config  # noqa: E402
from data.image_list import DataError  # noqa: E402
from data.verification_sets import load_target  # noqa: E402
from head.scf import load_confidence_head  # noqa: E402
from util.checkpoint import CheckpointError, load_checkpoint, load_weights  # noqa: E402
from util.degradations import DEGRADATIONS, degrade_all  # noqa: E402
from util.evaluation import EvalTarget, image_kappas  # noqa: E402


def kappa_table(checkpoint_path, target, batch_size=16):
    """{condition: kappa of every image} for the originals and each degradation."""
    checkpoint = load_checkpoint(checkpoint_path)
    cfg = checkpoint["meta"]["config"]
    if not cfg.get("scf"):
        raise CheckpointError(f"{checkpoint_path}: not an SCF checkpoint (train one with train_SCF_jittor.py)")
    backbone = build_backbone_from_config(cfg)
    load_weights(backbone, checkpoint["backbone"], checkpoint_path)
    backbone.eval()
    head = load_confidence_head(checkpoint["head"], cfg, checkpoint_path)
    images = EvalTarget(load_target(target, "."), cfg["input_hw"]).images
    conditions = {"original": images, **{how: degrade_all(images, how) for how in DEGRADATIONS}}
    with jt.no_grad():
        return {name: image_kappas(backbone, head, imgs, batch_size) for name, imgs in conditions.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="an SCF checkpoint (train_SCF_jittor.py)")
    p.add_argument("--target", required=True, help="a .bin or pairs folder whose images are used")
    p.add_argument("--workers_id", default="cpu", help="'cpu' or a GPU id")
    args = p.parse_args()
    jt.flags.use_cuda = int(args.workers_id != "cpu" and jt.has_cuda)
    try:
        table = kappa_table(args.checkpoint, args.target)
    except (CheckpointError, DataError) as e:  # bad input: the message names the file at fault
        sys.exit(f"error: {e}")
    original = table["original"]
    print(f"{'images':<12}{'mean kappa':>12}{'median':>10}{'lower than original':>22}")
    for name, kappas in table.items():
        lower = "" if name == "original" else f"{100 * np.mean(kappas < original):.1f} %"
        print(f"{name:<12}{kappas.mean():>12.1f}{np.median(kappas):>10.1f}{lower:>22}")


if __name__ == "__main__":
    main()
