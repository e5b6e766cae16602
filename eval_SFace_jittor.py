#!/usr/bin/env python3
"""Score a backbone on verification pair sets (LFW, CFP-FP, AgeDB-30, CALFW, CPLFW, ...) and IJB-B / IJB-C.

    python3 eval_SFace_jittor.py --checkpoint results/run/best.npz --target lfw,cfp_fp,agedb_30 \\
        --eval_root data/faces_webface_112x112
    python3 eval_SFace_jittor.py --checkpoint Backbone_IR_50.pkl --net IR_50 --target ../lfw/lfw.bin
    python3 eval_SFace_jittor.py --checkpoint results/run/best.npz --ijb IJB_release/IJBC

Prints a table, writes `results.json` and one ROC curve PNG per target to --outdir.
For an SCF checkpoint (train_SCF_jittor.py) each target is also scored with SCF's eq. 13
from (embedding, kappa). Under mpirun the embedding work is split over the ranks; rank 0 writes.
"""
import util.runtime  # noqa: F401  (must precede jittor: picks the CPU build on GPU-less machines)

import argparse
import os

import numpy as np

from backbone import check_backbone
from data.ijb_sets import IJB_SETS, load_ijb
from data.images import parse_size
from data.verification_sets import load_target
from evaluation.embedding import EvalTarget, protocol_report, target_features
from evaluation.ijb_scoring import IJB_FAR_TARGETS, ijb_features, ijb_reports
from evaluation.protocol import FAR_TARGETS
from evaluation.roc_plot import save_roc_plot
from evaluation.scf_scoring import scf_report
from model.checkpoint import BEST, LAST, run_checkpoint
from model.loading import load_model
from util import distributed
from util.errors import InputError
from util.files import make_outdir, write_atomically, write_json, write_npz
from util.options import non_negative_int, positive_int


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a .npz checkpoint of this project (training or "
                   "tools/import_weights.py), a run's output folder (its best.npz, else last.npz), or an official "
                   "SFace-Jittor Backbone_*.pkl (then give --net)")
    p.add_argument("--target", default="", help="comma-separated names under --eval_root, .bin files or "
                                               "folders holding pairs.txt + images/")
    p.add_argument("--ijb", help="an IJB-B or IJB-C folder in InsightFace's layout (meta/, loose_crop/): 1:1 "
                                 "template verification, TAR at FAR 1e-6 .. 1e-1")
    p.add_argument("--ijb_set", choices=IJB_SETS, help="which set --ijb holds (default: the one its meta/ files name)")
    p.add_argument("--eval_root", default=".", help="folder holding the named targets")
    p.add_argument("--net", help="backbone of a .pkl checkpoint (a .npz names its own)")
    p.add_argument("--input_size", default="112x112", help="input HxW of a .pkl checkpoint's backbone")
    p.add_argument("--embedding_size", type=positive_int, default=512,
                   help="embedding size of a .pkl checkpoint's backbone")
    p.add_argument("--batch_size", type=non_negative_int, default=0,
                   help="images per forward pass on each rank (default 0: 16 on CPU, where small batches run fastest; "
                        "256 on GPU)")
    p.add_argument("--no_flip", action="store_true", help="embed the images only, not their mirror images too")
    p.add_argument("--workers_id", type=distributed.workers_id, default="auto",
                   help=f"{distributed.WORKERS_ID_HELP} (default: auto)")
    p.add_argument("--num_workers", type=positive_int, default=4, help="image-decoding threads")
    p.add_argument("--outdir", default="eval_results", help="where results.json and the ROC PNGs go")
    p.add_argument("--save_features", action="store_true",
                   help="also write features_<target>.npz: unit embeddings (and SCF kappas) of each distinct image "
                        "(of each face for --ijb)")
    args = p.parse_args(argv)
    args.targets = [t.strip() for t in args.target.split(",") if t.strip()]
    if not args.targets and not args.ijb:
        p.error(f"give --target, --ijb or both{f' (--target {args.target!r} names no target)' if args.target else ''}")
    if not args.checkpoint.endswith((".npz", ".pkl")) and not os.path.exists(args.checkpoint):
        p.error(f"--checkpoint {args.checkpoint}: no such file or folder")  # a missing .npz or .pkl: its loader says
    try:
        args.checkpoint = run_checkpoint(args.checkpoint, (BEST, LAST))
        args.input_hw = list(parse_size(args.input_size))
        if args.net:
            check_backbone(args.net, args.input_hw)
    except ValueError as e:
        p.error(str(e))
    if not args.checkpoint.endswith(".npz") and not args.net:
        p.error(f"{args.checkpoint}: a .pkl checkpoint does not say which backbone it holds: give --net")
    return args


def print_table(reports):
    fars = [f"{far:g}" for far in FAR_TARGETS]
    columns = "".join(f"{'TAR@' + f'{far:.0e}'.replace('e-0', 'e-'):>10}" for far in FAR_TARGETS)
    header = f"{'target':<14}{'pairs':>7}{'accuracy':>18}{'threshold':>11}{columns}{'AUC':>8}{'EER':>8}{'XNorm':>9}"
    print(header)
    print("-" * len(header))
    for r in reports:
        print(f"{r['target']:<14}{r['pairs']:>7}{100 * r['accuracy']:>10.2f} ± {100 * r['accuracy_std']:<5.2f}"
              f"{r['threshold']:>11.3f}" + "".join(f"{r['tar_at_far'][far]:>10.4f}" for far in fars) +
              f"{r['auc']:>8.4f}{r['eer']:>8.4f}" + (f"{r['xnorm']:>9.2f}" if r["xnorm"] is not None else f"{'-':>9}"))


def print_ijb_table(reports):
    fars = [f"{far:g}" for far in IJB_FAR_TARGETS]
    header = f"{'IJB 1:1':<10}{'templates':>10}{'pairs':>10}" + "".join(f"{'TAR@' + far:>12}" for far in fars) + \
             f"{'AUC':>8}"
    print(header)
    print("-" * len(header))
    for r in reports:
        print(f"{r['target']:<10}{r['templates']:>10}{r['pairs']:>10}"
              + "".join(f"{r['tar_at_far'][far]:>12.4f}" for far in fars) + f"{r['auc']:>8.4f}")


def save_features(outdir, name, features, sources):
    saved = {"embeddings": features["unit"], "sources": np.array(sources)}
    if features["kappa"] is not None:
        saved["kappa"] = features["kappa"]
    write_atomically(os.path.join(outdir, f"features_{name}.npz"), lambda f: write_npz(f, saved), "features")


def main(argv=None):
    args = parse_args(argv)
    make_outdir(args.outdir)  # before any work
    device = distributed.select_device(args.workers_id)
    batch_size = args.batch_size or (256 if device == "cuda" else 16)
    pkl_config = {"net": args.net, "input_hw": args.input_hw, "embedding_size": args.embedding_size}
    backbone, confidence_head, cfg, _ = load_model(args.checkpoint, pkl_config)
    ijb_set = load_ijb(args.ijb, args.ijb_set) if args.ijb else None  # its meta files checked before any embedding
    reports, ijb = [], []
    for name in args.targets:
        target = EvalTarget(load_target(name, args.eval_root), cfg["input_hw"], args.num_workers)
        features = target_features(backbone, target, batch_size, not args.no_flip, confidence_head)
        reports.append(protocol_report(target, features))
        if confidence_head is not None:
            reports.append(scf_report(target, features, cfg["radius"]))
        if args.save_features and distributed.is_main():
            save_features(args.outdir, target.name, features, target.pair_set.sources)
    if ijb_set is not None:
        features = ijb_features(backbone, ijb_set, cfg["input_hw"], batch_size, not args.no_flip, confidence_head,
                                args.num_workers)
        if distributed.is_main():  # only rank 0 holds the gathered features
            ijb = ijb_reports(ijb_set, features, cfg.get("radius"))
            if args.save_features:
                save_features(args.outdir, ijb_set.name, features, ijb_set.images)
    if not distributed.is_main():
        return reports + ijb
    print(f"{cfg['net']} {cfg['input_hw'][0]}x{cfg['input_hw'][1]} from {args.checkpoint}, "
          f"{'flip-summed' if not args.no_flip else 'no flip'}" + (", 10-fold" if reports else ""))
    if reports:
        print_table(reports)
    if ijb:
        print_ijb_table(ijb)
    for rows, min_far in ((reports, 1e-4), (ijb, min(IJB_FAR_TARGETS))):
        for r in rows:
            save_roc_plot(os.path.join(args.outdir, f"roc_{r['target']}.png"), *r["roc"], title=r["target"],
                          min_far=min_far)
    write_json(os.path.join(args.outdir, "results.json"),
               {"checkpoint": args.checkpoint, "config": cfg, "flip": not args.no_flip,
                "results": [{k: v for k, v in r.items() if k != "roc"} for r in reports],
                "ijb": [{k: v for k, v in r.items() if k != "roc"} for r in ijb]}, "results")
    print(f"results in {os.path.join(args.outdir, 'results.json')}")
    return reports + ijb


if __name__ == "__main__":
    # Bad input names the file at fault; any failure on any rank ends the whole job, naming the rank.
    distributed.run_main(main, expected_errors=(InputError,))
