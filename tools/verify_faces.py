#!/usr/bin/env python3
"""Are the faces of two photos the same person? Their cosine similarity and a same/different answer.

    python3 tools/verify_faces.py a.jpg b.jpg --model models/run.onnx     # threshold from eval_results/results.json
    python3 tools/verify_faces.py a.jpg b.jpg --model results/run/best.npz --threshold 0.3
    python3 tools/verify_faces.py group.jpg b.jpg --model models/run.onnx --face 2 1 --save_crops compared/

In each photo the faces are found (MTCNN, data/face_detection.py), the largest (or the one --face
names, by size) is aligned to the 5-point template of the model's input size (112x112 ArcFace, 112x96
SphereFace) and embedded. With --aligned the images are faces aligned already, as for training:
112x112 (cut to 112x96 for such models), e.g. by OpenCV's FaceRecognizerSF.alignCrop. Each face is embedded with
its mirror image and the two summed, as the evaluation does, so the evaluation's thresholds apply:
without --threshold, the one of an eval_SFace_jittor.py results.json for the target (at FAR 1e-3 by
default; a squared distance d is the cosine 1 - d/2). An .onnx runs in onnxruntime, a .npz in Jittor.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import util.runtime  # noqa: E402,F401

import cv2  # noqa: E402
import jittor as jt  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state  # noqa: E402

from data.alignment import template_for  # noqa: E402
from data.face_detection import FaceDetector  # noqa: E402
from data.images import decode_image, fit_input_size  # noqa: E402
from data.photos import photo_face  # noqa: E402
from data.text import DataError  # noqa: E402
from evaluation.protocol import FAR_TARGETS, flip_fused  # noqa: E402
from evaluation.results_file import ResultsError, read_results, row_number, target_row  # noqa: E402
from evaluation.scf_scoring import SCF_TARGET_SUFFIX  # noqa: E402
from interop.onnx_export import ExportError, onnx_input_size  # noqa: E402
from model.loading import load_model  # noqa: E402
from util.errors import InputError  # noqa: E402
from util.files import make_outdir, write_atomically  # noqa: E402
from util.options import finite_float, positive_int  # noqa: E402

ALIGN_HINT = ("give the photo without --aligned to have its face found and aligned, or align it first to the 5-point "
              "112x112 template, e.g. by cv2.FaceRecognizerSF.alignCrop(image, face) (docs/deployment.md)")
DEFAULT_RESULTS = os.path.join("eval_results", "results.json")  # eval_SFace_jittor.py's default --outdir


class UsageError(InputError):
    """Bad input to this tool; the message names the file."""


def false_accept_rate(text):
    """--far's type: a rate in (0, 1]."""
    value = finite_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a false-accept rate in (0, 1], got '{text}'")
    return value


def cosine_threshold(text):
    """--threshold's type: a cosine similarity, from -1 to 1 (beyond, every pair would get one answer)."""
    value = finite_float(text)
    if not -1 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a cosine similarity from -1 to 1, got '{text}'")
    return value


# What onnxruntime raises for a model it cannot load or run (its own exception classes).
ONNXRUNTIME_ERRORS = tuple(v for v in vars(ort_state).values() if isinstance(v, type) and issubclass(v, Exception))


def onnx_embedder(path):
    """-> (input H x W, N x 3 x H x W float32 -> N x D, the checkpoint it was exported from or None)."""
    input_hw = onnx_input_size(path)
    try:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except ONNXRUNTIME_ERRORS as e:
        raise ExportError(f"{path}: onnxruntime cannot load this model ({e})") from None
    name = session.get_inputs()[0].name

    def embed(x):  # one at a time: the export's batch may be fixed at 1
        try:
            return np.concatenate([session.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])
        except ONNXRUNTIME_ERRORS as e:
            raise ExportError(f"{path}: onnxruntime cannot run this model on a {x.shape[2]}x{x.shape[3]} face "
                              f"({e})") from None
    return input_hw, embed, session.get_modelmeta().custom_metadata_map.get("source_checkpoint")


def jittor_embedder(path):
    model = load_model(path)

    def embed(x):
        with jt.no_grad():
            return model.backbone(jt.array(x)).numpy()
    return tuple(model.config["input_hw"]), embed, path


def read_face(path, input_hw):
    """An aligned face as H x W x 3 uint8 RGB (a 112x112 one cut to 112x96 for such models)."""
    try:
        with open(path, "rb") as f:
            image = decode_image(f.read())
    except OSError as e:
        raise UsageError(f"{path}: cannot read ({e.strerror})") from None
    if image is None:
        raise UsageError(f"{path}: not a decodable image")
    face, problem = fit_input_size(image, input_hw)
    if problem is not None:
        height, width = input_hw
        raise UsageError(f"{path}: a {image.shape[0]}x{image.shape[1]} image, the model takes aligned {height}x{width} "
                         f"faces{' (or 112x112 ones, cut to it)' if width < 112 else ''}; {ALIGN_HINT}")
    return face


def photo_reader(face_ranks):
    """read(path, input_hw) -> the next photo's face of the next rank in `face_ranks` (1: the largest), aligned
    for the model."""
    detector, ranks = FaceDetector(), iter(face_ranks)

    def read(path, input_hw):
        try:
            template_for(input_hw)
        except ValueError as e:
            raise UsageError(f"the model takes {input_hw[0]}x{input_hw[1]} faces: {e}; give aligned faces with "
                             f"--aligned") from None
        try:
            return photo_face(detector, path, input_hw, next(ranks))
        except DataError as e:
            raise UsageError(str(e)) from None
    return read


def save_crops(folder, image_paths, faces):
    """Each compared face as folder/<1|2>_<photo name>.png (lossless: exactly what the model saw)."""
    make_outdir(folder, "--save_crops")
    for number, (path, face) in enumerate(zip(image_paths, faces), 1):
        name = os.path.join(folder, f"{number}_{os.path.splitext(os.path.basename(path))[0]}.png")
        write_atomically(name, cv2.imencode(".png", cv2.cvtColor(face, cv2.COLOR_RGB2BGR))[1].tobytes(), "face crop")


def evaluation_threshold(results_path, target, far):
    """-> (cosine threshold, where it comes from, the checkpoint evaluated) out of a results.json."""
    checkpoint, rows = read_results(results_path)
    rows = {name: row for name, row in rows.items() if not name.endswith(SCF_TARGET_SUFFIX)}
    if not rows:
        raise ResultsError(f"{results_path}: holds no verification results (evaluate with --target)")
    if target is None and len(rows) != 1:
        raise UsageError(f"{results_path}: choose a target with --target: {', '.join(rows)}")
    row = target_row(results_path, rows, target or next(iter(rows)))
    if far is None:
        distance, how = row_number(results_path, row, "threshold"), "the best-accuracy threshold (10-fold mean)"
    else:
        at_far = row.get("threshold_at_far")
        if not isinstance(at_far, dict) or f"{far:g}" not in at_far:
            raise UsageError(f"{results_path}: no threshold at FAR {far:g} (evaluations record "
                             f"{', '.join(f'{f:g}' for f in FAR_TARGETS)}); evaluate again, or use --best_accuracy")
        if at_far[f"{far:g}"] is None:
            raise UsageError(f"{results_path}: on {row['target']} no threshold keeps FAR at {far:g}; "
                             f"use --best_accuracy or --threshold")
        distance = row_number(results_path, at_far | {"target": row["target"]}, f"{far:g}")
        how = f"the threshold at FAR {far:g}"
    return 1 - distance / 2, f"{how} on {row['target']} in {results_path}", checkpoint


def cosine_similarity(model_path, image_paths, read=read_face, crops_folder=None):
    """-> (cosine of the two faces' flip-summed embeddings, the checkpoint the model comes from or None).

    read(path, input_hw): the face of one image, as the model takes it; crops_folder: where to save them.
    """
    input_hw, embed, source = (onnx_embedder if model_path.endswith(".onnx") else jittor_embedder)(model_path)
    faces = np.stack([read(path, input_hw) for path in image_paths])
    if crops_folder:
        save_crops(crops_folder, image_paths, faces)
    x = np.ascontiguousarray(faces.transpose(0, 3, 1, 2), dtype=np.float32)
    unit = flip_fused(embed(x), embed(np.ascontiguousarray(x[..., ::-1])))
    return float(unit[0] @ unit[1]), source


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs=2, metavar="IMAGE", help="two photos (with --aligned: two aligned faces)")
    p.add_argument("--model", required=True, help="an .onnx export (tools/export_onnx.py) or a .npz checkpoint")
    p.add_argument("--threshold", type=cosine_threshold,
                   help="cosine similarity from which two faces count as the same person")
    p.add_argument("--results", help=f"an eval_SFace_jittor.py results.json to take the threshold from "
                                     f"(default: {DEFAULT_RESULTS} when it exists)")
    p.add_argument("--target", help="which of its targets (needed when it holds several)")
    p.add_argument("--far", type=false_accept_rate, default=1e-3,
                   help="take the evaluation's threshold at this false-accept rate (default: %(default)g)")
    p.add_argument("--best_accuracy", action="store_true", help="take its best-accuracy threshold instead")
    p.add_argument("--face", type=positive_int, nargs="+", default=[1], metavar="N",
                   help="which face of each photo to compare, by size (1: the largest, the default): one number for "
                        "both photos, or one each")
    p.add_argument("--aligned", action="store_true", help="the images are aligned faces already: no face detection")
    p.add_argument("--save_crops", metavar="DIR", help="write the two faces compared, as the model saw them, to DIR")
    args = p.parse_args(argv)
    if len(args.face) > 2:
        p.error(f"--face takes one face number for both photos or one for each, got {len(args.face)}")
    if args.aligned and max(args.face) > 1:
        p.error("--face: aligned faces (--aligned) hold one face each")
    results = args.results or DEFAULT_RESULTS
    try:
        read = read_face if args.aligned else photo_reader(args.face * (3 - len(args.face)))
        similarity, source = cosine_similarity(args.model, args.images, read, args.save_crops)
        threshold, evaluated = args.threshold, None
        if threshold is None and (args.results or os.path.isfile(results)):
            threshold, how, evaluated = evaluation_threshold(results, args.target,
                                                                None if args.best_accuracy else args.far)
    except InputError as e:  # the message names the file at fault
        sys.exit(f"error: {e}")
    print(f"cosine similarity {similarity:.4f}")
    if threshold is None:
        print(f"no threshold: give --threshold, or evaluate the model (eval_SFace_jittor.py --checkpoint ... "
              f"--target lfw) to take one from {results}")
        return
    if evaluated is not None:
        print(f"threshold {threshold:.4f}: {how}")
        if source is None or os.path.realpath(evaluated) != os.path.realpath(source):
            print(f"note: that evaluation scored {evaluated}, not {source or 'the checkpoint of ' + args.model}")
    print("same person" if similarity >= threshold else "different people")


if __name__ == "__main__":
    main()
