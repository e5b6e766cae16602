#!/usr/bin/env python3
"""Export a checkpoint's backbone to ONNX, for OpenCV's FaceRecognizerSF / cv2.dnn and onnxruntime.

    python3 tools/export_onnx.py --checkpoint results/run/best.npz --out models/run.onnx [--batch 1|N|dynamic]

The graph takes N x 3 x H x W float32 RGB pixels 0..255 (the checkpoint's own input normalisation
is inside it) and outputs the raw embedding. Any .npz of this project exports: trained, imported
(tools/import_weights.py) or SCF; of an SCF checkpoint only the frozen backbone is exported (its
embedding; kappa is not), with a note.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import util.runtime  # noqa: E402,F401

from interop.onnx_export import DEFAULT_OPSET, ExportError, backbone_onnx, check_opset  # noqa: E402
from model.checkpoint import BEST, LAST, is_scf, run_checkpoint  # noqa: E402
from model.loading import load_model  # noqa: E402
from util.errors import InputError  # noqa: E402
from util.files import OutputError, make_outdir, write_atomically  # noqa: E402
from util.options import positive_int  # noqa: E402


def batch_size(text):
    if text == "dynamic" or (text.isdigit() and int(text) > 0):
        return text
    raise argparse.ArgumentTypeError(f"--batch must be a positive integer or 'dynamic', got '{text}'")


def opset_version(text):
    """--opset's type: one this onnx package writes, checked before any work."""
    opset = positive_int(text)
    try:
        check_opset(opset)
    except ExportError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return opset


def check_output_file(out):
    """Refuse an --out that is a folder and make the folder it goes in, before any export work."""
    if os.path.isdir(out):
        raise OutputError(f"{out}: a folder; --out names the .onnx file to write")
    make_outdir(os.path.dirname(os.path.abspath(out)), "--out")


def export(checkpoint, out, batch, opset):
    """-> (the checkpoint's config, the ONNX model written to `out`)."""
    check_output_file(out)
    checkpoint = run_checkpoint(checkpoint, (BEST, LAST))
    model = load_model(checkpoint)
    cfg = model.config
    metadata = {"source_checkpoint": os.path.abspath(checkpoint), "net": cfg["net"],
                "input": f"{'x'.join(map(str, cfg['input_hw']))} RGB 0..255, NCHW float32"}
    proto = backbone_onnx(model.backbone, cfg["input_hw"], batch, opset, source=checkpoint, metadata=metadata)
    write_atomically(out, proto.SerializeToString(), "model")
    return cfg, proto


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a .npz checkpoint of this project, or a run's output folder "
                                                       "(its best.npz, else last.npz)")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--batch", type=batch_size, default="1",
                   help="batch dimension: 1 (what FaceRecognizerSF feeds), any N, or 'dynamic' (default: 1)")
    p.add_argument("--opset", type=opset_version, default=DEFAULT_OPSET, help=f"ONNX opset (default: {DEFAULT_OPSET})")
    args = p.parse_args(argv)
    try:
        cfg, proto = export(args.checkpoint, args.out, args.batch, args.opset)
    except InputError as e:  # the message names the file at fault
        sys.exit(f"error: {e}")
    height, width = cfg["input_hw"]
    print(f"{args.out}: {cfg['net']} {height}x{width} -> {cfg['embedding_size']}-d, batch {args.batch}, "
          f"opset {args.opset}, {len(proto.graph.node)} nodes")
    if is_scf(cfg):
        print(f"note: {args.checkpoint} is an SCF checkpoint: the graph outputs its frozen backbone's embedding; "
              f"the confidence head (kappa) is not exported")
    if (height, width) != (112, 112):
        print(f"note: cv2.FaceRecognizerSF feeds 112x112 only; run this {height}x{width} model with cv2.dnn "
              f"(blobFromImage(face_bgr, 1.0, ({width}, {height}), swapRB=True)) or onnxruntime")


if __name__ == "__main__":
    main()
