"""SCF at test time (Li et al., CVPR 2021), numpy: pair scores (eq. 13) and template pooling (eq. 14)."""
import math

import numpy as np

from head.vmf import log_vmf_normaliser

from .protocol import score_thresholds, verification_report

SCF_TARGET_SUFFIX = "-scf"  # names the eq. 13 row of a target; its thresholds are scores, not distances


def pair_scores(mu1, kappa1, mu2, kappa2, radius=64.0):
    """SCF eq. 13, numpy: log C(k1) + log C(k2) - log C(|k1 mu1 + k2 mu2|) - d log r, per pair.

    mu: P x d unit vectors, kappa: P. Symmetric, and increasing in mu1 . mu2.
    """
    dim = mu1.shape[1]
    combined = np.linalg.norm(kappa1[:, None] * mu1 + kappa2[:, None] * mu2, axis=1)
    return (log_vmf_normaliser(kappa1, dim, np) + log_vmf_normaliser(kappa2, dim, np)
            - log_vmf_normaliser(combined, dim, np) - dim * math.log(radius))


def pool_template(mu, kappa):
    """SCF eq. 14: a template's images pooled with kappa as weights, numpy.

    The product of the images' vMF densities is a vMF with natural parameter
    sum_i kappa_i mu_i: its direction is the template feature, its norm the template's kappa.
    """
    total = (kappa[:, None] * mu).sum(axis=0)
    norm = np.linalg.norm(total)
    return total / norm, norm


def scf_report(target, features, radius):
    """The same protocol scored with SCF eq. 13 (mutual likelihood of the two vMFs) instead of distance."""
    pairs, mu, kappa = target.pair_set.pairs, features["unit"], features["kappa"]
    scores = pair_scores(mu[pairs[:, 0]], kappa[pairs[:, 0]].astype(np.float64), mu[pairs[:, 1]],
                         kappa[pairs[:, 1]].astype(np.float64), radius)
    report = verification_report(-scores, target.pair_set.issame, score_thresholds(-scores))
    return dict(report, target=target.name + SCF_TARGET_SUFFIX, pairs=len(pairs))
