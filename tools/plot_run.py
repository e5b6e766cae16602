#!/usr/bin/env python3
"""Training curves of one or more runs as one PNG, from their metrics.jsonl alone (no TensorBoard needed):
the loss and its parts, train and verification accuracy, the learning rate, and the theta_y / theta_j
medians with their 5-95 % bands under SFace's a and b. Several runs share the figure, each labelled by
its folder name.

    python3 tools/plot_run.py results/MobileFaceNet-SFaceLoss-demo
    python3 tools/plot_run.py results/run_a results/run_b --out compare.png
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from evaluation.run_plot import plot_runs  # noqa: E402
from util.errors import InputError  # noqa: E402

PNG_NAME = "curves.png"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="a training run's output folder (its --outdir, holding "
                                                             "metrics.jsonl)")
    p.add_argument("--out", default="", help=f"the PNG to write (default: RUN_DIR/{PNG_NAME} for one run, "
                                             f"{PNG_NAME} in the current folder for several)")
    args = p.parse_args(argv)
    out = args.out or (os.path.join(args.runs[0], PNG_NAME) if len(args.runs) == 1 else PNG_NAME)
    try:
        plot_runs(args.runs, out)
    except InputError as e:
        sys.exit(f"error: {e}")
    print(f"{out}: the curves of {', '.join(args.runs)}")


if __name__ == "__main__":
    main()
