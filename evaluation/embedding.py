"""Embedding pair sets with a backbone and scoring them with the verification protocol.

Under mpirun each rank decodes and embeds only its share of a set's distinct images;
the embeddings are then summed across ranks into one table (rows of other ranks are
zero), so any set size works with any number of ranks.
"""
from concurrent.futures import ThreadPoolExecutor

import jittor as jt
import numpy as np
from tqdm import tqdm

from util import distributed

from .protocol import flip_fused, pair_distances, verification_report


class EvalTarget:
    """A `PairSet` with this rank's share of its images decoded (uint8, N x H x W x 3)."""

    def __init__(self, pair_set, input_size, num_threads=4):
        self.pair_set = pair_set
        self.num_images = len(pair_set.encoded)
        self.share = distributed.rank_share(self.num_images, distributed.rank(), distributed.world_size())
        with ThreadPoolExecutor(num_threads) as pool:
            decoded = list(pool.map(lambda i: pair_set.decode(i, input_size), range(*self.share)))
        height, width = input_size
        self.images = np.stack(decoded) if decoded else np.zeros((0, height, width, 3), np.uint8)

    @property
    def name(self):
        return self.pair_set.name


def embed_images(backbone, images, batch_size, flip=True, desc=None):
    """uint8 N x H x W x 3 -> (embeddings, embeddings of the mirrored images or None), float32.

    With `desc`, rank 0 shows a progress bar (when its output is a terminal).
    """
    outputs, flipped_outputs = [], []
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc=desc, leave=False, disable=None if desc and distributed.is_main() else True):
        batch = images[start:start + batch_size].transpose(0, 3, 1, 2).astype(np.float32)  # N x 3 x H x W
        outputs.append(backbone(jt.array(batch)).numpy())
        if flip:
            flipped_outputs.append(backbone(jt.array(np.ascontiguousarray(batch[..., ::-1]))).numpy())
    return (np.concatenate(outputs) if outputs else None,
            np.concatenate(flipped_outputs) if flip and flipped_outputs else None)


def gather_rows(local, share, num_rows):
    """Each rank's rows (or values) -> the full table on every rank."""
    width = distributed.max_int(local.shape[1] if local is not None and local.ndim > 1 else 0)
    table = np.zeros((num_rows, width) if width else num_rows, np.float32)
    if local is not None:
        table[share[0]:share[1]] = local
    return distributed.sum_arrays(table)


def image_kappas(backbone, confidence_head, images, batch_size):
    """SCF concentration of each uint8 N x H x W x 3 image (as it is, not mirrored)."""
    kappas = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].transpose(0, 3, 1, 2).astype(np.float32)
        kappas.append(confidence_head(backbone.features(jt.array(batch))).numpy())
    return np.concatenate(kappas) if kappas else np.zeros(0, np.float32)


def target_features(backbone, target, batch_size, flip=True, confidence_head=None):
    """Embeddings of every distinct image of a target (and SCF kappas), on every rank.

    -> dict(raw, raw_flipped or None, unit: flip-fused L2-normalised, kappa or None).
    The backbone (and head) are left in eval mode.
    """
    backbone.eval()
    with jt.no_grad():
        local, local_flipped = embed_images(backbone, target.images, batch_size, flip, desc=f"embedding {target.name}")
        local_kappa = None
        if confidence_head is not None:
            confidence_head.eval()
            local_kappa = image_kappas(backbone, confidence_head, target.images, batch_size)
    raw = gather_rows(local, target.share, target.num_images)
    raw_flipped = gather_rows(local_flipped, target.share, target.num_images) if flip else None
    kappa = gather_rows(local_kappa, target.share, target.num_images) if confidence_head is not None else None
    return {"raw": raw, "raw_flipped": raw_flipped, "unit": flip_fused(raw, raw_flipped), "kappa": kappa}


def protocol_report(target, features):
    """The standard protocol on the flip-fused embeddings."""
    pairs = target.pair_set.pairs
    raw = [e for e in (features["raw"], features["raw_flipped"]) if e is not None]
    report = verification_report(pair_distances(features["unit"], pairs), target.pair_set.issame, raw_embeddings=raw)
    return dict(report, target=target.name, pairs=len(pairs))


def evaluate_target(backbone, target, batch_size, flip=True):
    """Protocol figures of one target (on every rank); the backbone is left in eval mode."""
    return protocol_report(target, target_features(backbone, target, batch_size, flip))
