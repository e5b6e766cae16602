"""SFace: sigmoid-constrained hypersphere loss (Zhong et al., TIP 2021).

For cos_ij = <x_i/|x_i|, W_j/|W_j|> and theta_ij = acos(cos_ij):
    loss = 1/B * sum_i [ -r_intra(theta_iy) * s * cos_iy + sum_{j != y_i} r_inter(theta_ij) * s * cos_ij ]
    r_intra(t) = 1 / (1 + exp(-k (t - a))),   r_inter(t) = 1 / (1 + exp(k (t - b)))
with both r's gradient-blocked. The loss has no softmax: it is a sum of independent
per-(sample, class) terms, which is why `sface_terms` can work on any slice of the
class centres and the parts simply add up.
"""
from collections import namedtuple

import jittor as jt
from jittor import nn

from backbone.common import xavier_normal_out

SFaceOutput = namedtuple("SFaceOutput", "logits loss intra inter cos_target cos_other")


def cosine(embeddings, centres):
    """B x D, C x D -> B x C cosine similarities."""
    return nn.matmul_transpose(jt.normalize(embeddings, dim=1), jt.normalize(centres, dim=1))


def sface_weights(cos, target_mask, k, a, b):
    """Per-element re-scale factors -r_intra (target) or +r_inter (others); no gradient flows through them."""
    theta = jt.acos(cos.clamp(-1.0, 1.0))  # rounding can push |cos| past 1
    r_intra = 1.0 / (1.0 + jt.exp(-k * (theta - a)))
    r_inter = 1.0 / (1.0 + jt.exp(k * (theta - b)))
    return (target_mask * -r_intra + (1.0 - target_mask) * r_inter).stop_grad()


def sface_terms(cos, labels, s, k, a, b, class_offset=0):
    """Summed loss terms of a B x C' block of cosines whose first column is class `class_offset`.

    -> (intra sum, inter sum, sum of target cosines, number of targets in the block,
        sum of non-target cosines, number of non-target entries). Divide by the global
    batch size (and counts) after adding the parts of every block.
    """
    classes = jt.arange(cos.shape[1]).int64() + class_offset
    target_mask = (classes.unsqueeze(0) == labels.int64().unsqueeze(1)).float32()  # B x C'
    scaled = sface_weights(cos, target_mask, k, a, b) * (s * cos)
    intra = (target_mask * scaled).sum()
    inter = ((1.0 - target_mask) * scaled).sum()
    num_targets = target_mask.sum()
    cos_target = (target_mask * cos).sum()
    num_other = cos.numel() - num_targets
    cos_other = cos.sum() - cos_target
    return intra, inter, cos_target, num_targets, cos_other, num_other


def sface_loss(embeddings, centres, labels, s=64.0, k=80.0, a=0.87, b=1.2):
    """The whole loss for one block holding every class; returns an `SFaceOutput`."""
    cos = cosine(embeddings, centres)
    intra, inter, cos_target, num_targets, cos_other, num_other = sface_terms(cos, labels, s, k, a, b)
    batch = embeddings.shape[0]
    return SFaceOutput(
        logits=s * cos,
        loss=(intra + inter) / batch,
        intra=intra / batch,
        inter=inter / batch,
        cos_target=cos_target / num_targets,
        cos_other=cos_other / jt.maximum(num_other, 1.0),  # a single class has no others
    )


class SFaceHead(nn.Module):
    """Class centres W (num_classes x embedding_size) and the SFace loss on them."""

    def __init__(self, embedding_size, num_classes, s=64.0, k=80.0, a=0.87, b=1.2):
        self.s, self.k, self.a, self.b = s, k, a, b
        self.weight = xavier_normal_out((num_classes, embedding_size))

    def execute(self, embeddings, labels):
        return sface_loss(embeddings, self.weight, labels, self.s, self.k, self.a, self.b)
