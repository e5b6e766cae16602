#!/usr/bin/env python3
"""Label-noise robustness on the demo: SFace against ArcFace and CosFace at several --label_noise levels,
same backbone (the demo's MobileFaceNet), seed and schedule; prints the LFW-demo accuracies (10-fold, no
mirror images) as a table
and, for each noisy SFace run, the share of flipped and of clean images it no longer pulls
(r_intra < 1/2, theta_y < a) according to tools/angle_report.py on its last checkpoint.

    python3 experiments/noise_experiment.py --outdir results/noise_experiment --max_steps 36

Runs one after the other; a run already scored is not trained again, an interrupted one is resumed,
and an angle report already written is kept (so an interrupted experiment continues where it
stopped). Not a test: a measurement.
"""
import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import util.runtime  # noqa: E402,F401  (the head table imports jittor)

from head import HEADS  # noqa: E402
from util.files import REPO_ROOT  # noqa: E402
from util.options import finite_float, non_negative_int  # noqa: E402


class RunFailed(RuntimeError):
    """A training, evaluation or report run that ended with a non-zero status; the message gives its command."""


def head_names(text):
    """--heads' type: comma-separated names of HEADS."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in HEADS]
    if unknown or not names:
        problem = f"unknown head '{unknown[0]}'" if unknown else f"no head in '{text}'"
        raise argparse.ArgumentTypeError(f"{problem}; choose from {', '.join(HEADS)}")
    return names


def noise_levels(text):
    """--noise's type: comma-separated --label_noise fractions in [0, 1)."""
    levels = [finite_float(value) for value in text.split(",")]
    bad = [value for value in levels if not 0 <= value < 1]
    if bad:
        raise argparse.ArgumentTypeError(f"each level must be a fraction in [0, 1), got {bad[0]:g} in '{text}'")
    return levels


def run_dir(outdir, head, noise):
    return os.path.join(outdir, f"{head}-noise{round(100 * noise)}")


def final_eval(folder):
    """The LFW-demo report of a run's last checkpoint (eval_SFace_jittor.py's results.json), or None."""
    path = os.path.join(folder, "eval", "results.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)["results"][0]


def run(command):
    print(" ".join(command), flush=True)
    status = subprocess.run(command, stdout=subprocess.DEVNULL).returncode
    if status:
        raise RunFailed(f"this run ended with exit status {status} (its messages are above): {' '.join(command)}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--outdir", default="results/noise_experiment")
    p.add_argument("--heads", type=head_names, default="SFaceLoss,ArcFace,CosFace",
                   help="comma-separated loss heads")
    p.add_argument("--noise", type=noise_levels, default="0,0.2,0.4",
                   help="comma-separated --label_noise values, each in [0, 1)")
    p.add_argument("--max_steps", type=non_negative_int, default=0, help="the schedule's length for every run (0: the "
                                                                    "demo's 3 epochs)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--max_images", type=non_negative_int, default=0, help="the angle reports' --max_images (0: all)")
    p.add_argument("--no_report", action="store_true", help="train and evaluate only (no angle reports)")
    args = p.parse_args(argv)
    try:
        experiment(args)
    except RunFailed as e:
        sys.exit(f"error: {e}")


def experiment(args):
    heads, levels = args.heads, args.noise
    for head in heads:
        for noise in levels:
            folder = run_dir(args.outdir, head, noise)
            if final_eval(folder) is not None:
                print(f"{folder}: done before, not trained again", flush=True)
                continue
            # No evaluation inside the run (the one at step 0 is the same for all): the last checkpoint's after it,
            # without the mirror images (half the embedding time on a shared CPU).
            command = [sys.executable, os.path.join(REPO_ROOT, "train_SFace_jittor.py"), "--data_mode", "demo",
                       "--head", head, "--label_noise", str(noise), "--seed", str(args.seed), "--target", "none",
                       "--outdir", folder]
            if args.max_steps:
                command += ["--max_steps", str(args.max_steps)]
            if os.path.isfile(os.path.join(folder, "last.npz")):  # an interrupted run continues
                command += ["--resume", folder]
            run(command)
            run([sys.executable, os.path.join(REPO_ROOT, "eval_SFace_jittor.py"), "--checkpoint",
                 os.path.join(folder, "last.npz"), "--target", "lfw_demo",
                 "--eval_root", os.path.join(REPO_ROOT, "data", "demo"), "--no_flip",
                 "--outdir", os.path.join(folder, "eval")])
    unpulled = {}
    for noise in levels:
        folder = run_dir(args.outdir, "SFaceLoss", noise)
        if "SFaceLoss" not in heads or args.no_report:
            break
        if not os.path.isfile(os.path.join(folder, "angle_report.json")):  # made before: kept
            run([sys.executable, os.path.join(REPO_ROOT, "tools", "angle_report.py"), "--checkpoint",
                 os.path.join(folder, "last.npz"), "--max_images", str(args.max_images)])
        with open(os.path.join(folder, "angle_report.json")) as f:
            unpulled[noise] = json.load(f)["unpulled"]
    print(f"\n| head | {' | '.join(f'{100 * n:g} % noise' for n in levels)} |")
    print(f"| --- |{' --- |' * len(levels)}")
    for head in heads:
        cells = []
        for noise in levels:
            r = final_eval(run_dir(args.outdir, head, noise))
            cells.append(f"{100 * r['accuracy']:.2f} ± {100 * r['accuracy_std']:.2f}" if r else "not run")
        print(f"| {head} | {' | '.join(cells)} |")
    if unpulled:
        print("\nSFace, last checkpoint, every training image: share no longer pulled (theta_y < a)")
        print("| noise | clean images | flipped images |")
        print("| --- | --- | --- |")
        for noise, u in unpulled.items():
            flipped = f"{100 * u['flipped']:.1f} %" if u.get("flipped") is not None else "—"
            print(f"| {100 * noise:g} % | {100 * u['clean']:.1f} % | {flipped} |")


if __name__ == "__main__":
    main()
