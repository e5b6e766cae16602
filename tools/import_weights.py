#!/usr/bin/env python3
"""Turn public pretrained face models into this project's checkpoint format (.npz).

    # InsightFace MobileFaceNet (MXNet parameters as numpy + its symbol graph), 112x112, 128-d
    python3 tools/import_weights.py insightface --params model-y1-test2_params.npz \\
        --symbol model-symbol.json --out models/insightface_mobilefacenet.npz
    # Xiaoccer's PyTorch MobileFaceNet (068.ckpt), 112x96, 128-d
    python3 tools/import_weights.py xiaoccer --checkpoint 068.ckpt --out models/xiaoccer_mobilefacenet.npz
    # official SFace / face.evoLVe PyTorch state dicts (same layer names as this project)
    python3 tools/import_weights.py pytorch --net IR_50 --backbone Backbone_IR_50.pth \\
        [--head Head_SFaceLoss.pth] --out models/ir50_sface.npz

The result loads like any checkpoint: `eval_SFace_jittor.py --checkpoint <out>`,
`train_SFace_jittor.py --resume_backbone <out>`, or `model.loading.load_model(<out>)`.
PyTorch files are read without PyTorch; MXNet parameters must be given as a .npz of
`arg:<name>` / `aux:<name>` arrays.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import util.runtime  # noqa: E402,F401

import numpy as np  # noqa: E402

from backbone import build_backbone_from_config  # noqa: E402
from backbone.layers import DEFAULT_INPUT_MEAN  # noqa: E402
from data.images import parse_size  # noqa: E402
from interop.weight_import import (SFACE_TORCH_INPUT_SCALE, from_insightface_mxnet, from_xiaoccer_pytorch,  # noqa: E402
                                   mxnet_nodes)
from model.checkpoint import DAMAGED_NPZ, load_weights, save_checkpoint  # noqa: E402
from model.torch_pickle import load_torch_file  # noqa: E402
from model.weight_files import read_reference_pytorch, state_dict_arrays  # noqa: E402
from util.files import OutputError  # noqa: E402
from util.options import positive_float  # noqa: E402


def backbone_config(net, input_hw, embedding_size, input_norm, source):
    return {"net": net, "input_hw": list(input_hw), "input_size": f"{input_hw[0]}x{input_hw[1]}",
            "embedding_size": int(embedding_size), "input_norm": [float(v) for v in input_norm],
            "imported_from": os.path.abspath(source)}


def read_npz(path):
    """{name: array} of a .npz archive (np.load never unpickles here); ValueError naming the file otherwise."""
    try:
        loaded = np.load(path)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("a single array, not an archive of named arrays")
        with loaded:
            return {name: loaded[name] for name in loaded.files}
    except DAMAGED_NPZ as e:
        raise ValueError(f"{path}: not a readable .npz of arrays ({e or type(e).__name__})") from None


def read_symbol(path):
    """An MXNet -symbol.json graph; ValueError naming the file when it is not one."""
    try:
        with open(path, encoding="utf-8") as f:
            graph = json.load(f)
        mxnet_nodes(graph)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a JSON MXNet graph ({e})") from None
    except (KeyError, TypeError, IndexError):
        raise ValueError(f"{path}: not an MXNet symbol graph (a 'nodes' list of op, name and inputs)") from None
    return graph


def import_insightface(args):
    params = read_npz(args.params)
    embedding = params["aux:fc1_moving_mean"].shape[0]
    cfg = backbone_config("MobileFaceNet", (112, 112), embedding, (0, 0), args.params)
    model = build_backbone_from_config(cfg)
    graph = read_symbol(args.symbol)
    try:
        arrays, input_norm = from_insightface_mxnet(params, graph, model)
    except ValueError as e:  # a graph of another network
        raise ValueError(f"{args.symbol}: {e}") from None
    cfg["input_norm"] = list(input_norm)
    return cfg, arrays, {}


def import_xiaoccer(args):
    checkpoint = load_torch_file(args.checkpoint)
    state = checkpoint.get("net_state_dict", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    state = state_dict_arrays(state, args.checkpoint)
    embedding = state["linear1.bn.weight"].shape[0]
    cfg = backbone_config("MobileFaceNet", (112, 96), embedding, (DEFAULT_INPUT_MEAN, 1 / 128), args.checkpoint)
    return cfg, from_xiaoccer_pytorch(state, build_backbone_from_config(cfg)), {}


def import_pytorch(args):
    backbone = read_reference_pytorch(args.backbone)
    last_bn = next((k for k in reversed(list(backbone)) if k.endswith("running_mean")), None)
    if last_bn is None:
        raise ValueError(f"{args.backbone}: holds no BatchNorm statistics (running_mean), so no backbone; "
                         "a head's state dict goes to --head")
    cfg = backbone_config(args.net, parse_size(args.input_size), backbone[last_bn].shape[0],
                          (DEFAULT_INPUT_MEAN, args.input_scale), args.backbone)
    head = read_reference_pytorch(args.head) if args.head else {}
    if head:
        cfg.update(head="SFaceLoss", num_classes=int(head["weight"].shape[0]))
    return cfg, backbone, head


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="source", required=True)
    s = sub.add_parser("insightface", help="InsightFace MXNet MobileFaceNet")
    s.add_argument("--params", required=True, help=".npz of the MXNet parameters (arg:/aux: keys)")
    s.add_argument("--symbol", required=True, help="the model's -symbol.json graph")
    s = sub.add_parser("xiaoccer", help="Xiaoccer/MobileFaceNet_Pytorch checkpoint (112x96)")
    s.add_argument("--checkpoint", required=True)
    s = sub.add_parser("pytorch", help="official SFace / face.evoLVe PyTorch state dict")
    s.add_argument("--net", required=True, help="project backbone name, e.g. IR_50, IR_101, MobileFaceNet")
    s.add_argument("--backbone", required=True, help="backbone state dict (.pth)")
    s.add_argument("--head", help="SFace head state dict (.pth), optional")
    s.add_argument("--input_size", default="112x112")
    s.add_argument("--input_scale", type=positive_float, default=SFACE_TORCH_INPUT_SCALE,
                   help="pixel scale after subtracting 127.5: 0.078125 for the official SFace code, "
                        "1/127.5 for face.evoLVe, 1/128 for InsightFace")
    for s in sub.choices.values():
        s.add_argument("--out", required=True, help="the .npz checkpoint to write")
    args = p.parse_args(argv)

    try:
        cfg, backbone_arrays, head_arrays = {"insightface": import_insightface, "xiaoccer": import_xiaoccer,
                                             "pytorch": import_pytorch}[args.source](args)
        model = build_backbone_from_config(cfg)
        load_weights(model, backbone_arrays, f"{args.source} weights")  # every name and shape must fit
    except OSError as e:  # a file that cannot be opened
        sys.exit(f"error: cannot import {args.source} weights: {e.filename}: {e.strerror}")
    except KeyError as e:  # an array the source's layout has and the file lacks
        option = {"insightface": "params", "xiaoccer": "checkpoint", "pytorch": "backbone"}[args.source]
        source_file = getattr(args, option)
        sys.exit(f"error: cannot import {args.source} weights: {source_file}: holds no array {e} (not a {args.source} "
                 "model?)")
    except ValueError as e:
        sys.exit(f"error: cannot import {args.source} weights: {e}")
    try:
        save_checkpoint(args.out, {"config": cfg}, backbone_arrays, head_arrays)
    except OutputError as e:  # a full disk, an unwritable folder: the message names the file
        sys.exit(f"error: {e}")
    print(f"{args.out}: {cfg['net']} {cfg['input_size']}, {cfg['embedding_size']}-d, input (x - {cfg['input_norm'][0]})"
          f" * {cfg['input_norm'][1]:g}{', with head' if head_arrays else ''}; config {json.dumps(cfg)}")


if __name__ == "__main__":
    main()
