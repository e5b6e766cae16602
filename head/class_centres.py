"""What every head shares: class centres, cosine logits, the output record, cross-entropy."""
import math
from collections import namedtuple

import jittor as jt
import numpy as np
from jittor import nn

# logits: B x C; loss: the scalar minimised; correct: how many samples have their own class's
# logit on top (train accuracy); cos_target / cos_other: mean cosine to the own / other class
# centres (health figures); parts: named components of the loss worth logging (e.g. SFace's
# intra and inter terms); cos: the B x C cosines themselves (this rank's block of classes for a sharded
# head), which the training step reads after the update for its angle diagnostics (train/steps.py).
HeadOutput = namedtuple("HeadOutput", "logits loss correct cos_target cos_other parts cos")
CENTRE_BLOCK = 4096  # classes drawn per random generator in `centre_rows`


def centre_rows(num_classes, embedding_size, start, stop, seed):
    """Rows [start, stop) of the reference-initialised C x D centre matrix.

    Gaussian with std 2 * sqrt(2 / C) (xavier-normal, gain 2, fan-out mode, as the reference
    initialises every weight). Each block of CENTRE_BLOCK classes has its own generator seeded
    by (seed, block), so any process builds any rows with the values a single process would.
    """
    std = 2.0 * math.sqrt(2.0 / num_classes)
    rows = []
    for block in range(start // CENTRE_BLOCK, -(-stop // CENTRE_BLOCK)):
        first = block * CENTRE_BLOCK
        values = np.random.default_rng([seed, block]).standard_normal((CENTRE_BLOCK, embedding_size), np.float32)
        rows.append(values[max(start, first) - first:min(stop, first + CENTRE_BLOCK) - first])
    return np.concatenate(rows or [np.zeros((0, embedding_size), np.float32)]) * np.float32(std)


def cosine(embeddings, centres):
    """B x D, C x D -> B x C cosine similarities."""
    return nn.matmul_transpose(jt.normalize(embeddings, dim=1), jt.normalize(centres, dim=1))


def target_mask(labels, cos, class_offset=0):
    """Mask shaped and typed like the B x C cosines, 1 at (i, labels[i]); labels outside
    [offset, offset + C) give a zero row (the classes of another block)."""
    classes = jt.arange(cos.shape[1]).int64() + class_offset
    return (classes.unsqueeze(0) == labels.int64().unsqueeze(1)).cast(cos.dtype)


def mean_cosines(cos, mask):
    """(mean cosine to the target centre, mean cosine to the other centres; 0 when there are none)."""
    num_targets = mask.sum()
    cos_target = (mask * cos).sum()
    num_other = cos.numel() - num_targets
    return cos_target / jt.maximum(num_targets, 1.0), (cos.sum() - cos_target) / jt.maximum(num_other, 1.0)


def count_correct(logits, mask):
    """Samples whose target logit is the largest (ties count as correct)."""
    return ((mask * logits).sum(dim=1) >= logits.max(dim=1)).sum()


def softmax_cross_entropy(logits, mask):
    """Mean over the batch of -log softmax(logits)[target], computed stably."""
    top = logits.max(dim=1, keepdims=True).stop_grad()
    log_sum = jt.log(jt.exp(logits - top).sum(dim=1)) + top.squeeze(1)
    return (log_sum - (mask * logits).sum(dim=1)).mean()


class ClassCentres(nn.Module):
    """A C x D weight of class centres with the reference initialisation, on every process."""
    sharded = False  # figures are means over this process's batch (see ShardedSFaceLoss for the other kind)

    def __init__(self, embedding_size, num_classes, seed=0):
        self.weight = jt.array(centre_rows(num_classes, embedding_size, 0, num_classes, seed))
