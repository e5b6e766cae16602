"""Softmax-family heads: Softmax, CosFace, AM-Softmax, ArcFace and SphereFace (A-Softmax).

Each builds B x C logits from the cosines to the class centres, changing only the target
class's logit, and is trained with softmax cross-entropy:
    CosFace / AM-Softmax   s * (cos - m)                        (CosFace s=64; AM-Softmax s=30; m=0.35)
    ArcFace                s * cos(theta + m), or s * (cos - m sin m) once theta + m > pi   (s=64, m=0.5)
    SphereFace (m=4)       |x| * (lambda cos + psi(theta)) / (1 + lambda),
                           psi = (-1)^k cos(m theta) - 2k, k = floor(m theta / pi),
                           lambda = max(5, 1000 / (1 + 0.12 iteration))   (others: |x| cos)
    Softmax                x W^T + b (no normalisation)
"""
import math

import jittor as jt

from .class_centres import (ClassCentres, HeadOutput, cosine, count_correct, mean_cosines, softmax_cross_entropy,
                            target_mask)

# cos(m theta) as a polynomial in cos(theta) (Chebyshev), so no acos sits on the gradient path.
COS_MULTIPLE = {
    1: lambda c: c,
    2: lambda c: 2 * c ** 2 - 1,
    3: lambda c: 4 * c ** 3 - 3 * c,
    4: lambda c: 8 * c ** 4 - 8 * c ** 2 + 1,
    5: lambda c: 16 * c ** 5 - 20 * c ** 3 + 5 * c,
}


def sphereface_margin(m):
    """SphereFace's m as the integer cos(m theta) needs; a ValueError for any other value (2.5 is not 2)."""
    if m not in COS_MULTIPLE:  # 4.0 == 4 is accepted, as a float option gives it
        raise ValueError(f"SphereFace margin m must be an integer from {min(COS_MULTIPLE)} to {max(COS_MULTIPLE)}, "
                         f"got {m:g}")
    return int(m)


def additive_cosine_logits(cos, mask, s, m):
    """CosFace / AM-Softmax: s * (cos - m) on the target, s * cos elsewhere."""
    return s * (cos - m * mask)


def additive_angular_logits(cos, mask, s, m):
    """ArcFace: s * cos(theta + m) on the target while theta + m <= pi, then s * (cos - m sin m)."""
    cos = cos.clamp(-1.0, 1.0)
    sin = jt.sqrt((1.0 - cos * cos).clamp(min_v=1e-12))  # clamped: no NaN gradient at cos = +-1
    with_margin = cos * math.cos(m) - sin * math.sin(m)
    fallback = cos - math.sin(math.pi - m) * m  # keeps the target logit decreasing in theta past pi - m
    target = jt.ternary(cos > math.cos(math.pi - m), with_margin, fallback)
    return s * (mask * target + (1.0 - mask) * cos)


def sphereface_lambda(iteration, base=1000.0, gamma=0.12, minimum=5.0):
    """A-Softmax annealing: mostly plain softmax at first, the full margin (lambda = 5) later."""
    return max(minimum, base / (1.0 + gamma * iteration))


def angular_multiplicative_logits(cos, mask, norms, m, lam):
    """SphereFace: |x| * (lambda cos + psi) / (1 + lambda) on the target, |x| * cos elsewhere."""
    cos = cos.clamp(-1.0, 1.0)
    k = jt.floor(m * jt.acos(cos) / math.pi).stop_grad()
    sign = 1.0 - 2.0 * (k - 2.0 * jt.floor(k / 2.0))  # (-1)^k
    psi = sign * COS_MULTIPLE[m](cos) - 2.0 * k
    target = (lam * cos + psi) / (1.0 + lam)
    return norms.unsqueeze(1) * (mask * target + (1.0 - mask) * cos)


def classification_output(logits, cos, mask):
    cos_target, cos_other = mean_cosines(cos, mask)
    return HeadOutput(logits=logits, loss=softmax_cross_entropy(logits, mask), correct=count_correct(logits, mask),
                      cos_target=cos_target, cos_other=cos_other, parts={}, cos=cos)


class SoftmaxHead(ClassCentres):
    def __init__(self, embedding_size, num_classes, seed=0):
        super().__init__(embedding_size, num_classes, seed)
        # Unnormalised logits need the official Softmax head's Xavier-uniform scale: the
        # centres' fan-out initialisation is far too large when there are few classes.
        bound = math.sqrt(6.0 / (embedding_size + num_classes))
        self.weight = jt.init.uniform((num_classes, embedding_size), "float32", -bound, bound)
        self.bias = jt.zeros(num_classes)

    def execute(self, embeddings, labels, step=0):
        cos = cosine(embeddings, self.weight).stop_grad()  # for the health figures only
        logits = jt.nn.matmul_transpose(embeddings, self.weight) + self.bias
        return classification_output(logits, cos, target_mask(labels, cos))


class MarginHead(ClassCentres):
    """Scale s and margin m on the target cosine, as `margin_logits(cos, mask, s, m)` applies them."""
    margin_logits = None

    def __init__(self, embedding_size, num_classes, s, m, seed=0):
        super().__init__(embedding_size, num_classes, seed)
        self.s, self.m = s, m

    def execute(self, embeddings, labels, step=0):
        cos = cosine(embeddings, self.weight)
        mask = target_mask(labels, cos)
        return classification_output(self.margin_logits(cos, mask, self.s, self.m), cos, mask)


class AdditiveCosineHead(MarginHead):
    """CosFace (s=64, m=0.35) and AM-Softmax (s=30, m=0.35)."""
    margin_logits = staticmethod(additive_cosine_logits)

    def __init__(self, embedding_size, num_classes, s=64.0, m=0.35, seed=0):
        super().__init__(embedding_size, num_classes, s, m, seed)


class ArcFaceHead(MarginHead):
    margin_logits = staticmethod(additive_angular_logits)

    def __init__(self, embedding_size, num_classes, s=64.0, m=0.5, seed=0):
        super().__init__(embedding_size, num_classes, s, m, seed)


class SphereFaceHead(ClassCentres):
    """A-Softmax; `step` (the training iteration) drives the lambda annealing."""

    def __init__(self, embedding_size, num_classes, m=4, seed=0):
        super().__init__(embedding_size, num_classes, seed)
        self.m = sphereface_margin(m)

    def execute(self, embeddings, labels, step=0):
        cos = cosine(embeddings, self.weight)
        mask = target_mask(labels, cos)
        norms = jt.sqrt((embeddings * embeddings).sum(dim=1))
        lam = sphereface_lambda(step + 1)  # the reference counts iterations from 1
        return classification_output(angular_multiplicative_logits(cos, mask, norms, self.m, lam), cos, mask)
