"""Sphere Confidence Face (Li et al., CVPR 2021): a concentration kappa per image.

On top of a frozen backbone and its frozen class centres, a small network reads the last
convolutional map and predicts log kappa of a von Mises-Fisher distribution around the
image's embedding; it is trained to minimise KL(delta at the class centre || vMF), which
makes kappa high for images whose embeddings sit close to their class centre and low
for ambiguous ones (blur, occlusion, low resolution). The layer plan follows the public
SCF code (three 3x3 convs, global pooling, a 3-layer MLP), with padding so that 7x6 maps
(112x96 inputs) fit too.
"""
import math

import jittor as jt
from jittor import nn

from .vmf import kl_dirac_vmf

LOG_KAPPA_FLOOR = math.log(1e-6)  # log kappa = log(1e-6 + exp(h)): kappa > 1e-6, smooth in h


class ConfidenceHead(nn.Module):
    """N x C x H x W feature map (C: the backbone's `feature_channels`) -> N kappa values (> 0)."""

    def __init__(self, channels, embedding_size=512):
        self.convs = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
            nn.AdaptiveAvgPool2d(1))
        self.mlp = nn.Sequential(
            nn.Linear(channels, channels // 2), nn.ReLU(),
            nn.Linear(channels // 2, channels // 4), nn.ReLU(),
            nn.Linear(channels // 4, 1))
        # Start at kappa = d/2: the size the loss prefers for cosines near 0.5, where its gradient
        # (kappa * (A_d(kappa) - cos)) is informative; from kappa ~ 1 it creeps up for many epochs.
        last = self.mlp[-1]
        last.weight.assign(last.weight * 0.01)
        last.bias.assign(jt.full((1,), math.log(embedding_size / 2)))

    def execute(self, features):
        h = self.mlp(self.convs(features).reshape(features.shape[0], -1)).reshape(-1)
        # log(1e-6 + exp(h)) written as a stable log-add-exp
        top = jt.maximum(h, LOG_KAPPA_FLOOR)
        log_kappa = top + jt.log(jt.exp(h - top) + jt.exp(LOG_KAPPA_FLOOR - top))
        return jt.exp(log_kappa)


def feature_channels(arrays):
    """The feature-map width a trained confidence head reads, from its arrays (first conv: C x C x 3 x 3)."""
    return int(arrays["convs.0.weight"].shape[1])


def scf_loss(kappa, cos_target, dim, radius):
    """Mean KL(delta || vMF) over the batch; cos_target = cos(embedding, own class centre)."""
    return kl_dirac_vmf(cos_target, kappa, dim, radius, jt).mean()
