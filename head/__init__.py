"""Heads by name, as `--head` selects them: `build_head("SFaceLoss", 512, num_classes, s=64, ...)`.

Every head is called as `head(embeddings, labels, step)` and returns a `HeadOutput`.
`shard=True` splits SFace's class centres over the MPI ranks (`ShardedSFaceHead`); the
softmax heads cannot be split that simply (their normalisation spans every class).
"""
from functools import partial

from .margin import AdditiveCosineHead, ArcFaceHead, SoftmaxHead, SphereFaceHead
from .sface import SFaceHead, ShardedSFaceHead

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


SHARDABLE = {"SFaceLoss": ShardedSFaceHead}


def build_head(name, embedding_size, num_classes, seed=0, shard=False, **params):
    """`params` are the head's own (see HEAD_PARAMS); the ones left out keep the head's defaults.

    `seed` fixes the class centres' initial values (the same whether sharded or not).
    """
    if name not in HEADS:
        raise ValueError(f"unknown head '{name}'; choose from {', '.join(HEADS)}")
    unknown = set(params) - set(HEAD_PARAMS[name])
    if unknown:
        raise ValueError(f"head {name} takes no parameter {', '.join(sorted(unknown))}")
    if shard and name not in SHARDABLE:
        raise ValueError(f"head {name} cannot be sharded; only {', '.join(SHARDABLE)} can")
    if name == "SphereFace" and "m" in params:
        params["m"] = int(params["m"])
    return (SHARDABLE if shard else HEADS)[name](embedding_size, num_classes, seed=seed, **params)
