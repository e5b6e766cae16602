"""SCF's von Mises-Fisher maths: log I_nu, the KL loss, eq. 13 scores and eq. 14 pooling."""
import math

import jittor as jt
import numpy as np
import pytest
from scipy.special import gammaln, ive, logsumexp

from evaluation.scf_scoring import pair_scores, pool_template
from head.vmf import kl_dirac_vmf, log_bessel_iv

NU = 255.0  # d = 512
KAPPAS = np.logspace(0, 5, 241)  # 1 .. 1e5


def log_iv_power_series(nu, kappa, terms=4000):
    """log of sum_k (kappa/2)^(2k+nu) / (k! Gamma(k+nu+1)), summed in log space (exact, slow)."""
    k = np.arange(terms)
    return logsumexp((2 * k + nu) * np.log(kappa / 2) - gammaln(k + 1) - gammaln(k + nu + 1))


def test_log_bessel_matches_scipy_and_the_power_series():
    ours = log_bessel_iv(NU, KAPPAS, np)
    with np.errstate(divide="ignore"):
        scipy_values = np.log(ive(NU, KAPPAS)) + KAPPAS
    finite = np.isfinite(scipy_values) & (ive(NU, KAPPAS) > 1e-300)
    assert finite.sum() > 150 and (~finite).sum() > 20  # both regimes are covered
    # |log(ours) - log(true)| <= 1e-6 is a relative error of at most 1e-6 on I_nu itself.
    np.testing.assert_allclose(ours[finite], scipy_values[finite], rtol=0, atol=1e-6)
    series = np.array([log_iv_power_series(NU, k) for k in KAPPAS[~finite]])
    np.testing.assert_allclose(ours[~finite], series, rtol=0, atol=1e-6)


def test_log_bessel_derivative():
    """By finite differences, and against the identity d/dk log I_nu = I_{nu+1}/I_nu + nu/k."""
    h = 1e-4 * KAPPAS
    numeric = (log_bessel_iv(NU, KAPPAS + h, np) - log_bessel_iv(NU, KAPPAS - h, np)) / (2 * h)
    jt.flags.auto_convert_64_to_32 = 0
    try:
        kappa = jt.array(KAPPAS)
        autograd = jt.grad(log_bessel_iv(NU, kappa, jt).sum(), kappa).numpy()
    finally:
        jt.flags.auto_convert_64_to_32 = 1
    np.testing.assert_allclose(autograd, numeric, rtol=1e-6)
    usable = ive(NU, KAPPAS) > 1e-300
    identity = ive(NU + 1, KAPPAS[usable]) / ive(NU, KAPPAS[usable]) + NU / KAPPAS[usable]
    np.testing.assert_allclose(autograd[usable], identity, rtol=1e-6)


def test_the_public_codes_epsilon_breaks_the_loss():
    """log(1e-6 + ive) is flat in kappa where ive << 1e-6; the exact term is not."""
    kappa = np.array([500.0, 2000.0])
    broken = np.log(1e-6 + ive(NU, kappa)) + kappa
    assert np.all(np.abs(broken - log_bessel_iv(NU, kappa, np)) > 1.0)


def test_kl_loss_is_minimised_where_the_vmf_mean_length_matches_the_cosine():
    """d KL / d kappa = -cos + A_d(kappa) = 0 at the optimum, A_d(kappa) = I_{d/2}/I_{d/2-1} (the mean length)."""
    cos = 0.7
    grid = np.linspace(50, 2000, 39001)
    best = grid[np.argmin(kl_dirac_vmf(cos, grid, 512, 64.0, np))]
    assert ive(NU + 1, best) / ive(NU, best) == pytest.approx(cos, abs=1e-4)


def test_pair_scores_are_symmetric_and_increase_with_similarity():
    rng = np.random.default_rng(0)
    base = rng.normal(size=512)
    base /= np.linalg.norm(base)
    other = rng.normal(size=512)
    other -= other @ base * base
    other /= np.linalg.norm(other)
    angles = np.linspace(0.05, 3.0, 30)
    mu2 = np.cos(angles)[:, None] * base + np.sin(angles)[:, None] * other
    mu1 = np.tile(base, (30, 1))
    k1, k2 = np.full(30, 800.0), np.full(30, 300.0)
    scores = pair_scores(mu1, k1, mu2, k2)
    np.testing.assert_allclose(scores, pair_scores(mu2, k2, mu1, k1))
    assert np.all(np.diff(scores) < 0)  # larger angle, lower score


def test_template_pooling_weights_by_kappa():
    mu = np.array([[1.0, 0.0], [0.0, 1.0]])
    feature, kappa = pool_template(mu, np.array([3.0, 1.0]))
    np.testing.assert_allclose(feature, np.array([3.0, 1.0]) / math.sqrt(10))
    assert kappa == pytest.approx(math.sqrt(10))
