"""Embedding pair sets with a backbone and scoring them with the verification protocol.

Under mpirun each rank decodes and embeds only its share of a set's distinct images;
the embeddings are then summed across ranks into one table (rows of other ranks are
zero), so any set size works with any number of ranks.
"""
from concurrent.futures import ThreadPoolExecutor

import jittor as jt
import numpy as np
from tqdm import tqdm

from data.loader import rank_share
from util import distributed
from util.verification import flip_fused, verification_report


class EvalTarget:
    """A `PairSet` with this rank's share of its images decoded (uint8, N x H x W x 3)."""

    def __init__(self, pair_set, input_size, num_threads=4):
        self.pair_set = pair_set
        self.num_images = len(pair_set.encoded)
        self.share = rank_share(self.num_images, distributed.rank(), distributed.world_size())
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
    for start in tqdm(starts, desc=desc, leave=False, disable=True if desc is None or distributed.rank() else None):
        batch = images[start:start + batch_size].transpose(0, 3, 1, 2).astype(np.float32)  # N x 3 x H x W
        outputs.append(backbone(jt.array(batch)).numpy())
        if flip:
            flipped_outputs.append(backbone(jt.array(np.ascontiguousarray(batch[..., ::-1]))).numpy())
    return (np.concatenate(outputs) if outputs else None,
            np.concatenate(flipped_outputs) if flip and flipped_outputs else None)


def gather_embeddings(local, share, num_images):
    """Each rank's rows -> the full N x D table on every rank."""
    dim = distributed.max_int(local.shape[1] if local is not None else 0)  # a rank may hold no images
    table = np.zeros((num_images, dim), np.float32)
    if local is not None:
        table[share[0]:share[1]] = local
    return distributed.sum_arrays(table)


def evaluate_target(backbone, target, batch_size, flip=True):
    """Protocol figures of one target (on every rank); the backbone is left in eval mode."""
    backbone.eval()
    with jt.no_grad():
        local, local_flipped = embed_images(backbone, target.images, batch_size, flip, desc=f"embedding {target.name}")
    raw = gather_embeddings(local, target.share, target.num_images)
    raw_flipped = gather_embeddings(local_flipped, target.share, target.num_images) if flip else None
    report = verification_report(flip_fused(raw, raw_flipped), target.pair_set.pairs, target.pair_set.issame,
                                 raw_embeddings=[e for e in (raw, raw_flipped) if e is not None])
    report["target"] = target.name
    report["pairs"] = len(target.pair_set.issame)
    return report
