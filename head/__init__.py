"""Heads by name, as `--head` selects them: `build_head("SFaceLoss", 512, num_classes, s=64, ...)`."""
from .sface import SFaceHead

HEADS = {
    "SFaceLoss": SFaceHead,
}


def build_head(name, embedding_size, num_classes, **params):
    if name not in HEADS:
        raise ValueError(f"unknown head '{name}'; choose from {', '.join(HEADS)}")
    return HEADS[name](embedding_size, num_classes, **params)
