"""Backbones by name: `build_backbone("IR_50", input_size=(112, 112), embedding_size=512)`."""
import math
from functools import partial

from .ir import IResNet
from .layers import DEFAULT_INPUT_MEAN, DEFAULT_INPUT_SCALE, checked_input_size
from .mobilefacenet import MobileFaceNet
from .sphereface import SphereNet

BACKBONES = {
    "IR_18": partial(IResNet, 18),
    "IR_34": partial(IResNet, 34),
    "IR_50": partial(IResNet, 50),
    "IR_100": partial(IResNet, 100),
    "IR_101": partial(IResNet, 100),  # the official SFace code's name for IR_100
    "IR_152": partial(IResNet, 152),
    "IR_SE_50": partial(IResNet, 50, use_se=True),
    "IR_SE_100": partial(IResNet, 100, use_se=True),
    "MobileFaceNet": MobileFaceNet,
    "SphereFace4": partial(SphereNet, 4),
    "SphereFace20": partial(SphereNet, 20),
    "SphereFace36": partial(SphereNet, 36),
    "SphereFace64": partial(SphereNet, 64),
}


def check_backbone(name, input_size):
    """A ValueError for a name or an input size no backbone here can take, before anything is built."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone '{name}'; choose from {', '.join(BACKBONES)}")
    checked_input_size(name, input_size)


def build_backbone(name, input_size=(112, 112), embedding_size=512, **kwargs):
    check_backbone(name, input_size)
    return BACKBONES[name](input_size=tuple(input_size), embedding_size=embedding_size, **kwargs)


def check_backbone_config(cfg):
    """A ValueError saying what is wrong with a stored config's backbone keys (a hand-edited or foreign checkpoint's
    net, input_hw, embedding_size, input_norm), before anything is built."""
    if not isinstance(cfg.get("net"), str):
        raise ValueError(f"net {cfg.get('net')!r} is not a backbone name")
    input_hw = cfg.get("input_hw")
    if not (isinstance(input_hw, (list, tuple)) and len(input_hw) == 2 and all(is_integer(v) for v in input_hw)):
        raise ValueError(f"input_hw {input_hw!r} is not [height, width]")
    check_backbone(cfg["net"], input_hw)
    if not (is_integer(cfg.get("embedding_size")) and cfg["embedding_size"] > 0):
        raise ValueError(f"embedding_size {cfg.get('embedding_size')!r} is not a positive integer")
    norm = cfg.get("input_norm", (DEFAULT_INPUT_MEAN, DEFAULT_INPUT_SCALE))
    if not (isinstance(norm, (list, tuple)) and len(norm) == 2 and all(is_number(v) for v in norm) and norm[1]):
        raise ValueError(f"input_norm {norm!r} is not [mean, non-zero scale]")


def is_integer(value):
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def build_backbone_from_config(cfg):
    """The backbone a run config (as stored in checkpoints) describes."""
    mean, scale = cfg.get("input_norm", (DEFAULT_INPUT_MEAN, DEFAULT_INPUT_SCALE))
    return build_backbone(cfg["net"], cfg["input_hw"], cfg["embedding_size"], input_mean=mean, input_scale=scale)
