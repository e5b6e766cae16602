"""SFace: sigmoid-constrained hypersphere loss (Zhong et al., TIP 2021).

For cos_ij = <x_i/|x_i|, W_j/|W_j|> and theta_ij = acos(cos_ij):
    loss = 1/B * sum_i [ -r_intra(theta_iy) * s * cos_iy + sum_{j != y_i} r_inter(theta_ij) * s * cos_ij ]
    r_intra(t) = 1 / (1 + exp(-k (t - a))),   r_inter(t) = 1 / (1 + exp(k (t - b)))
with both r's gradient-blocked. The loss has no softmax: it is a sum of independent
per-(sample, class) terms, which is why `sface_terms` can work on any slice of the
class centres and the parts simply add up.
"""
import jittor as jt

from .common import ClassCentres, HeadOutput, cosine, mean_cosines, target_mask


def sface_weights(cos, mask, k, a, b):
    """Per-element re-scale factors -r_intra (target) or +r_inter (others); no gradient flows through them."""
    theta = jt.acos(cos.clamp(-1.0, 1.0))  # rounding can push |cos| past 1
    r_intra = 1.0 / (1.0 + jt.exp(-k * (theta - a)))
    r_inter = 1.0 / (1.0 + jt.exp(k * (theta - b)))
    return (mask * -r_intra + (1.0 - mask) * r_inter).stop_grad()


def sface_terms(cos, mask, s, k, a, b):
    """(intra sum, inter sum) over a B x C' block of cosines and its target mask.

    Divide by the global batch size after adding the sums of every block.
    """
    scaled = sface_weights(cos, mask, k, a, b) * (s * cos)
    return (mask * scaled).sum(), ((1.0 - mask) * scaled).sum()


def sface_loss(embeddings, centres, labels, s=64.0, k=80.0, a=0.87, b=1.2):
    """The whole loss for one block holding every class; returns a `HeadOutput`."""
    cos = cosine(embeddings, centres)
    mask = target_mask(labels, cos)
    intra, inter = sface_terms(cos, mask, s, k, a, b)
    batch = embeddings.shape[0]
    cos_target, cos_other = mean_cosines(cos, mask)
    return HeadOutput(logits=s * cos, loss=(intra + inter) / batch, cos_target=cos_target, cos_other=cos_other,
                      parts={"intra": intra / batch, "inter": inter / batch})


class SFaceHead(ClassCentres):
    """Class centres W (num_classes x embedding_size) and the SFace loss on them."""

    def __init__(self, embedding_size, num_classes, s=64.0, k=80.0, a=0.87, b=1.2):
        super().__init__(embedding_size, num_classes)
        self.s, self.k, self.a, self.b = s, k, a, b

    def execute(self, embeddings, labels, step=0):
        return sface_loss(embeddings, self.weight, labels, self.s, self.k, self.a, self.b)
