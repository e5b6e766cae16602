"""Heads by name, as `--head` selects them: `build_head("SFaceLoss", 512, num_classes, s=64, ...)`.

Every head is called as `head(embeddings, labels, step)` and returns a `HeadOutput`.
"""
from functools import partial

from .margin import AdditiveCosineHead, ArcFaceHead, SoftmaxHead, SphereFaceHead
from .sface import SFaceHead

# The --param_<x> options each head takes (SFace: scale s, slope k, centres a and b; margin heads: s, m).
HEAD_PARAMS = {
    "SFaceLoss": ("s", "k", "a", "b"),
    "Softmax": (),
    "CosFace": ("s", "m"),
    "AMSoftmax": ("s", "m"),
    "ArcFace": ("s", "m"),
    "SphereFace": ("m",),
}

HEADS = {
    "SFaceLoss": SFaceHead,
    "Softmax": SoftmaxHead,
    "CosFace": AdditiveCosineHead,
    "AMSoftmax": partial(AdditiveCosineHead, s=30.0, m=0.35),
    "ArcFace": ArcFaceHead,
    "SphereFace": SphereFaceHead,
}


def build_head(name, embedding_size, num_classes, **params):
    """`params` are the head's own (see HEAD_PARAMS); the ones left out keep the head's defaults."""
    if name not in HEADS:
        raise ValueError(f"unknown head '{name}'; choose from {', '.join(HEADS)}")
    unknown = set(params) - set(HEAD_PARAMS[name])
    if unknown:
        raise ValueError(f"head {name} takes no parameter {', '.join(sorted(unknown))}")
    if name == "SphereFace" and "m" in params:
        params["m"] = int(params["m"])
    return HEADS[name](embedding_size, num_classes, **params)
