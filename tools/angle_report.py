#!/usr/bin/env python3
"""Where a trained model puts its training images: the angles theta_y to their own class centre and
theta_j to the others, under SFace's two sigmoid curves (the paper's figure), and how they moved over
the run; then an (a, b) suggestion from them.

    python3 tools/angle_report.py --checkpoint results/MobileFaceNet-SFaceLoss-demo/last.npz
    mpirun -np 2 python3 tools/angle_report.py --checkpoint run/last.npz --data_root DIR --max_images 20000

Works for a checkpoint of any head (every head has class centres). The images are embedded as they
are (no mirror image), in eval mode, and scored against the head's centres with the labels the run
trained on: a run with --label_noise or --label_noise_open gets its noise again from its config, and its
label-flipped, outsiders' and clean images are shown and counted apart. Writes <out>.png and <out>.json (default: angle_report in
the checkpoint's folder) and prints the percentiles; the run's metrics.jsonl (beside the checkpoint)
gives the second panel. Suggestion rule: a = the 90th percentile of theta_y, b = the 1st percentile
of theta_j less 3/k (evaluation/angles.py).
"""
import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import util.runtime  # noqa: E402,F401

import jittor as jt  # noqa: E402
import numpy as np  # noqa: E402

from data.label_noise import apply_noise  # noqa: E402
from data.text import DataError  # noqa: E402
from data.training_sets import open_training_set  # noqa: E402
from evaluation.angle_plot import save_angle_plot  # noqa: E402
from evaluation.angles import PERCENTILES, angles, fraction_unpulled, percentiles, suggest_ab  # noqa: E402
from evaluation.embedding import embed_images, gather_rows  # noqa: E402
from evaluation.metrics_file import read_metrics  # noqa: E402
from evaluation.protocol import l2_normalize  # noqa: E402
from model.checkpoint import CheckpointError, run_checkpoint  # noqa: E402
from model.loading import load_model  # noqa: E402
from util import distributed  # noqa: E402
from util.errors import InputError  # noqa: E402
from util.files import make_outdir, write_json  # noqa: E402

MAX_OTHER = 2_000_000  # theta_j: every non-target pair up to this many, else a random sample of this size
DEFAULT_K = 80.0  # SFace's slope, for the suggested curves of runs that have none


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a training checkpoint (.npz) or a run's folder (its last.npz)")
    p.add_argument("--data_root", default="", help="the training set (default: the run's --data_root)")
    p.add_argument("--max_images", type=int, default=0, help="a random sample of this many training images "
                                                           "(drawn from seed 0; default 0: all)")
    p.add_argument("--metrics", default="", help="the run's metrics.jsonl (default: beside the checkpoint, if there)")
    p.add_argument("--out", default="", help="output path without extension (default: <checkpoint "
                                             "folder>/angle_report)")
    p.add_argument("--batch_size", type=int, default=32, help="images per forward pass on each rank")
    p.add_argument("--workers_id", type=distributed.workers_id, default="auto",
                   help=f"{distributed.WORKERS_ID_HELP} (default: auto)")
    p.add_argument("--num_workers", type=int, default=4, help="image-decoding threads")
    args = p.parse_args(argv)
    if args.max_images < 0 or args.batch_size <= 0:
        p.error("--max_images must be >= 0 and --batch_size positive")
    args.checkpoint = run_checkpoint(args.checkpoint)
    folder = os.path.dirname(os.path.abspath(args.checkpoint))
    args.out = args.out or os.path.join(folder, "angle_report")
    if not args.metrics and os.path.isfile(os.path.join(folder, "metrics.jsonl")):
        args.metrics = os.path.join(folder, "metrics.jsonl")
    elif args.metrics and not os.path.isfile(args.metrics):
        p.error(f"--metrics {args.metrics}: no such file")
    return args


def class_centres(model, path):
    centres = model.head_arrays.get("weight")
    if centres is None or model.confidence_head is not None:
        raise CheckpointError(f"{path}: holds no trained class centres (head/weight); give a training checkpoint")
    return np.asarray(centres, np.float32)


def load_images(dataset, indices, num_workers):
    """uint8 N x H x W x 3 of the indexed images (zeros where one fails to load) and which loaded."""
    with ThreadPoolExecutor(num_workers) as pool:
        loaded = list(pool.map(dataset.load, indices))
    height, width = dataset.input_size
    images = np.zeros((len(indices), height, width, 3), np.uint8)
    ok = np.zeros(len(indices), np.float32)
    for i, (image, _, problem) in enumerate(loaded):
        if problem is None:
            images[i] = image.transpose(1, 2, 0).astype(np.uint8)  # decoded pixels are whole numbers 0..255
            ok[i] = 1.0
    return images, ok


def training_angles(args):
    """-> dict(theta_y, theta_j, noisy ({"flipped", "outsider"}: bool per image), config, images, skipped);
    embedding split over the ranks."""
    model = load_model(args.checkpoint)
    cfg = model.config
    centres = class_centres(model, args.checkpoint)
    dataset = open_training_set(args.data_root or cfg["data_root"], cfg["input_hw"])
    if dataset.num_classes != len(centres):  # a head trained on these labels has one centre per class
        raise DataError(f"{dataset.source}: {dataset.num_classes} classes, but {args.checkpoint} has {len(centres)} "
                        f"class centres: not the data it was trained on (give that with --data_root)")
    # The noise the run trained with, drawn again from its seed (imported weights have none).
    noise = apply_noise(dataset, cfg.get("label_noise", 0.0), cfg.get("label_noise_open", 0.0), cfg.get("seed", 0))
    noisy = {kind: np.isin(np.arange(len(dataset)), indices) for kind, indices in
             (("flipped", noise.flipped), ("outsider", noise.replaced))}
    indices = np.flatnonzero(dataset.labels >= 0)  # a .rec record without a readable label has -1
    if args.max_images and args.max_images < len(indices):
        indices = np.sort(np.random.default_rng(0).choice(indices, args.max_images, replace=False))
    share = distributed.rank_share(len(indices), distributed.rank(), distributed.world_size())
    images, ok = load_images(dataset, indices[share[0]:share[1]], args.num_workers)
    with jt.no_grad():
        local = embed_images(model.backbone, images, args.batch_size, flip=False,
                             desc="embedding training images")[0]
    embeddings = gather_rows(local, share, len(indices))
    loaded = gather_rows(ok, share, len(indices)) > 0.5
    if not loaded.any():
        height, width = dataset.input_size
        raise DataError(f"{dataset.source}: none of the {len(indices)} images could be read (each is missing, "
                        f"unreadable, undecodable or not {height}x{width})")
    indices, embeddings = indices[loaded], embeddings[loaded]
    cos = l2_normalize(embeddings) @ l2_normalize(centres).T
    labels = dataset.labels[indices]
    target = np.zeros(cos.shape, bool)
    target[np.arange(len(labels)), labels] = True
    others = cos[~target]
    if len(others) > MAX_OTHER:
        others = np.random.default_rng(0).choice(others, MAX_OTHER, replace=False)
    return {"theta_y": angles(cos[np.arange(len(labels)), labels]), "theta_j": angles(others),
            "noisy": {kind: mask[indices] for kind, mask in noisy.items()},
            "config": cfg, "images": len(indices), "skipped": int((~loaded).sum())}


def read_history(path):
    """The training records of the run's metrics.jsonl that hold angles ([] without one)."""
    return [r for r in read_metrics(path) if r.get("kind") == "train" and "angles" in r] if path else []


def report(args, history):
    found = training_angles(args)
    if not distributed.is_main():
        return None
    cfg, theta_y, theta_j, noisy = found["config"], found["theta_y"], found["theta_j"], found["noisy"]
    clean = ~(noisy["flipped"] | noisy["outsider"])
    sface = cfg.get("head") == "SFaceLoss"
    params = cfg.get("head_params", {})
    k = params.get("k", DEFAULT_K)
    a, b = suggest_ab(theta_y[clean], theta_j, k)  # from the clean images: the noisy ones are not the data
    result = {"checkpoint": args.checkpoint, "head": cfg.get("head"), "images": found["images"],
              "skipped_images": found["skipped"], "flipped_images": int(noisy["flipped"].sum()),
              "outsider_images": int(noisy["outsider"].sum()),
              "theta_y": percentiles(theta_y), "theta_y_clean": percentiles(theta_y[clean]),
              "theta_j": percentiles(theta_j), "theta_j_pairs": len(theta_j), "suggested": {"a": a, "b": b, "k": k}}
    for kind, mask in noisy.items():
        if mask.any():
            result[f"theta_y_{kind}"] = percentiles(theta_y[mask])
    curves = [("suggested", k, a, b, "--")]
    if sface:
        curves.insert(0, ("run", k, params["a"], params["b"], "-"))
        result["unpulled"] = {"all": fraction_unpulled(theta_y, params["a"]),
                              "clean": fraction_unpulled(theta_y[clean], params["a"]),
                              **{kind: fraction_unpulled(theta_y[mask], params["a"]) if mask.any() else None
                                 for kind, mask in noisy.items()}}
    groups = {"clean": theta_y[clean], "label-flipped": theta_y[noisy["flipped"]],
              "outsiders": theta_y[noisy["outsider"]]}
    groups = {name: theta for name, theta in groups.items() if len(theta)} if not clean.all() else {"": theta_y}
    title = (f"{cfg.get('net')} + {cfg.get('head')}, {found['images']} training images, "
             f"{os.path.basename(args.checkpoint)}")
    save_angle_plot(args.out + ".png", groups, theta_j, curves, history, title)
    write_json(args.out + ".json", result, "angle report")
    print_report(result, sface and params)
    print(f"wrote {args.out}.png and {args.out}.json")
    return result


def print_report(result, sface_params):
    print(f"{result['images']} training images ({result['flipped_images']} label-flipped, "
          f"{result['outsider_images']} outsiders' images), "
          f"{result['theta_j_pairs']} non-target pairs; angles in radians")
    print(f"{'':<18}" + "".join(f"{f'p{p}':>8}" for p in PERCENTILES))
    rows = [("theta_y", "theta_y"), ("theta_y clean", "theta_y_clean"), ("theta_y flipped", "theta_y_flipped"),
            ("theta_y outsiders", "theta_y_outsider"), ("theta_j", "theta_j")]
    noisy = result["flipped_images"] or result["outsider_images"]
    for name, key in rows:
        if key in result and (key != "theta_y_clean" or noisy):
            print(f"{name:<18}" + "".join(f"{v:>8.3f}" for v in result[key].values()))
    if sface_params:
        u = result["unpulled"]
        noisy = "".join(f", {kind} {100 * u[kind]:.1f} %" for kind in ("flipped", "outsider") if u[kind] is not None)
        print(f"no longer pulled (theta_y < a = {sface_params['a']:g}): all {100 * u['all']:.1f} %, "
              f"clean {100 * u['clean']:.1f} %{noisy}")
    s = result["suggested"]
    print(f"suggested (a, b) = ({s['a']:.2f}, {s['b']:.2f}) for k = {s['k']:g}: a = p90 of the clean theta_y, "
          f"b = p1 of theta_j - 3/k")
    if s["b"] <= s["a"]:
        print("  b <= a: theta_y and theta_j overlap, so the rule has nothing to separate (a model this early in "
              "training, or this weak, says little about the data's (a, b))")


def main(argv=None):
    args = parse_args(argv)
    # the output folder and the metrics: before any work
    make_outdir(os.path.dirname(os.path.abspath(args.out)), "--out")
    history = read_history(args.metrics)
    distributed.select_device(args.workers_id)
    return report(args, history)


if __name__ == "__main__":
    distributed.run_main(main, expected_errors=(InputError,))
