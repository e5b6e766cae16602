"""What every head shares: class centres, cosine logits, the output record, cross-entropy."""
from collections import namedtuple

import jittor as jt
from jittor import nn

from backbone.common import xavier_normal_out

# logits: B x C (what train accuracy is read from); loss: the scalar minimised;
# cos_target / cos_other: mean cosine to the own / other class centres (health figures);
# parts: named components of the loss worth logging (e.g. SFace's intra and inter terms).
HeadOutput = namedtuple("HeadOutput", "logits loss cos_target cos_other parts")


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


def softmax_cross_entropy(logits, mask):
    """Mean over the batch of -log softmax(logits)[target], computed stably."""
    top = logits.max(dim=1, keepdims=True).stop_grad()
    log_sum = jt.log(jt.exp(logits - top).sum(dim=1)) + top.squeeze(1)
    return (log_sum - (mask * logits).sum(dim=1)).mean()


class ClassCentres(nn.Module):
    """A C x D weight of class centres with the reference initialisation."""

    def __init__(self, embedding_size, num_classes):
        self.weight = xavier_normal_out((num_classes, embedding_size))
