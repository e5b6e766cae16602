"""Heads by name, as `--head` selects them: `build_head("SFaceLoss", 512, num_classes, s=64, ...)`.

Every head is called as `head(embeddings, labels, step)` and returns a `HeadOutput`.
`shard=True` splits SFace's class centres over the MPI ranks (`ShardedSFaceLoss`); the
softmax heads cannot be split that simply (their normalisation spans every class).
"""
import math
from collections import namedtuple
from functools import partial

from .margin import AdditiveCosineHead, ArcFaceHead, SoftmaxHead, SphereFaceHead, sphereface_margin
from .sface import SFaceLoss, ShardedSFaceLoss

# params: the --param_<x> options the head takes (SFace: scale s, slope k, centres a and b; margin
# heads: s, m); sharded: the class splitting its centres over the ranks, or None.
HeadKind = namedtuple("HeadKind", "build params sharded")

HEADS = {
    "SFaceLoss": HeadKind(SFaceLoss, ("s", "k", "a", "b"), ShardedSFaceLoss),
    "Softmax": HeadKind(SoftmaxHead, (), None),
    "CosFace": HeadKind(AdditiveCosineHead, ("s", "m"), None),
    "AMSoftmax": HeadKind(partial(AdditiveCosineHead, s=30.0, m=0.35), ("s", "m"), None),
    "ArcFace": HeadKind(ArcFaceHead, ("s", "m"), None),
    "SphereFace": HeadKind(SphereFaceHead, ("m",), None),
}


# The values each --param_<x> can train with, and what it is (a negative scale or slope inverts the loss).
PARAM_CHECKS = {
    "s": (lambda v: v > 0, "the scale s must be positive"),
    "k": (lambda v: v > 0, "the sigmoid slope k must be positive"),
    "a": (lambda v: 0 <= v <= math.pi, "the sigmoid centre a is an angle in radians from 0 to pi"),
    "b": (lambda v: 0 <= v <= math.pi, "the sigmoid centre b is an angle in radians from 0 to pi"),
    "m": (lambda v: v >= 0, "the margin m must be >= 0"),
}


def head_params(name, params, shard=False):
    """Check a head's name, parameters and shardability; -> its parameters as the head takes them."""
    if name not in HEADS:
        raise ValueError(f"unknown head '{name}'; choose from {', '.join(HEADS)}")
    kind = HEADS[name]
    unknown = sorted(set(params) - set(kind.params))
    if unknown:
        raise ValueError(f"head {name} takes no parameter {', '.join(unknown)}")
    if shard and kind.sharded is None:
        raise ValueError(f"head {name} cannot be sharded (the softmax heads normalise over every class); only "
                         f"{', '.join(n for n, k in HEADS.items() if k.sharded)} can")
    if name == "SphereFace":
        return {k: sphereface_margin(v) for k, v in params.items()}
    for key, value in params.items():
        valid, meaning = PARAM_CHECKS[key]
        if not valid(value):
            raise ValueError(f"head {name}: {meaning}, got {value:g}")
    return params


def build_head(name, embedding_size, num_classes, seed=0, shard=False, **params):
    """`params` are the head's own (see HEADS); the ones left out keep the head's defaults.

    `seed` fixes the class centres' initial values (the same whether sharded or not).
    """
    params = head_params(name, params, shard)
    kind = HEADS[name]
    return (kind.sharded if shard else kind.build)(embedding_size, num_classes, seed=seed, **params)
