#!/usr/bin/env python3
"""Score an exported model on a verification pair set through OpenCV alone, beside the Jittor evaluation.

    python3 eval_SFace_jittor.py --checkpoint models/insightface_mobilefacenet.npz --target data/lfw
    python3 tools/eval_opencv.py --model models/insightface_mobilefacenet.onnx --target data/lfw \\
        --compare eval_results/results.json

Each aligned 112x112 image and its mirror image go through cv2.FaceRecognizerSF.feature (fed BGR,
as a deployment does); the two features are summed and scored with the project's protocol
(evaluation/protocol.py: 10 folds, squared distance of the unit vectors). With --compare, the
accuracy is set beside the Jittor evaluation's for the same target, and the exit status is 1 when
they differ by more than --tolerance points.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import util.runtime  # noqa: E402,F401  (the exporter's module imports Jittor)

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from data.verification_sets import load_target  # noqa: E402
from evaluation.protocol import flip_fused, pair_distances, verification_report  # noqa: E402
from evaluation.results_file import read_results, row_number, target_row  # noqa: E402
from interop.onnx_export import ExportError, onnx_input_size  # noqa: E402
from util.errors import InputError  # noqa: E402
from util.options import non_negative_float  # noqa: E402

FACE_SIZE = (112, 112)  # what FaceRecognizerSF.feature feeds, whatever the image


def opencv_features(model_path, pair_set):
    """Features of each distinct image and of its mirror image, from FaceRecognizerSF."""
    try:
        recognizer = cv2.FaceRecognizerSF.create(model_path, "")
    except cv2.error as e:  # a graph OpenCV's importer cannot build
        raise ExportError(f"{model_path}: OpenCV cannot load this model ({' '.join(str(e).split())})") from None
    features, mirrored = [], []
    for i in tqdm(range(len(pair_set.encoded)), desc=f"FaceRecognizerSF on {pair_set.name}", leave=False,
                  disable=None):  # a bar only on a terminal
        bgr = np.ascontiguousarray(pair_set.decode(i, FACE_SIZE)[:, :, ::-1])  # decoded RGB -> OpenCV's order
        features.append(recognizer.feature(bgr)[0])
        mirrored.append(recognizer.feature(cv2.flip(bgr, 1))[0])
    return np.stack(features), np.stack(mirrored)


def jittor_accuracy(results_path, target):
    """The accuracy (and its std) eval_SFace_jittor.py wrote for `target`, and the checkpoint it scored."""
    checkpoint, rows = read_results(results_path)
    row = target_row(results_path, rows, target)
    return row_number(results_path, row, "accuracy"), row_number(results_path, row, "accuracy_std"), checkpoint


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="an .onnx export (tools/export_onnx.py) of a 112x112 model")
    p.add_argument("--target", required=True, help="a .bin file or a folder holding pairs.txt + images/")
    p.add_argument("--compare", help="a results.json of eval_SFace_jittor.py to compare with")
    p.add_argument("--tolerance", type=non_negative_float, default=0.05,
                   help="largest accuracy difference in points (default 0.05)")
    args = p.parse_args(argv)
    try:
        height, width = onnx_input_size(args.model)
        if (height, width) != FACE_SIZE:
            raise ExportError(f"{args.model} takes {height}x{width} faces; FaceRecognizerSF feeds 112x112 only")
        pair_set = load_target(args.target, ".")
        jittor = jittor_accuracy(args.compare, pair_set.name) if args.compare else None  # before the scoring
        features, mirrored = opencv_features(args.model, pair_set)
    except InputError as e:  # the message names the file at fault
        sys.exit(f"error: {e}")
    report = verification_report(pair_distances(flip_fused(features, mirrored), pair_set.pairs), pair_set.issame,
                                 raw_embeddings=(features, mirrored))
    print(f"{pair_set.name}: {len(pair_set.pairs)} pairs through cv2.FaceRecognizerSF ({args.model}), flip-summed, "
          f"10-fold: {100 * report['accuracy']:.2f} % ± {100 * report['accuracy_std']:.2f}, threshold "
          f"{report['threshold']:.3f}, TAR@FAR 1e-3 {report['tar_at_far']['0.001']:.4f}")
    if jittor is not None:
        accuracy, std, checkpoint = jittor
        difference = 100 * abs(report["accuracy"] - accuracy)
        print(f"Jittor evaluation ({args.compare}, {checkpoint}): {100 * accuracy:.2f} % ± {100 * std:.2f}; "
              f"difference {difference:.3f} points (tolerance {args.tolerance})")
        if difference > args.tolerance:
            sys.exit(f"error: OpenCV and Jittor accuracies differ by {difference:.3f} points")


if __name__ == "__main__":
    main()
