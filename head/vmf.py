"""von Mises-Fisher maths for Sphere Confidence Face (Li et al., CVPR 2021).

Every function takes `xp`, the array module (numpy, or jittor for the training loss), so
the loss (head/scf.py) and the test-time scores (evaluation/scf_scoring.py) share one
implementation.

log I_nu(kappa) uses the uniform asymptotic (Debye) expansion of the modified Bessel
function, DLMF 10.41.3 with the polynomials u_1..u_4 of 10.41.10:
    I_nu(nu z) ~ exp(nu eta) / sqrt(2 pi nu) / (1 + z^2)^(1/4) * sum_k u_k(p) / nu^k,
    p = 1 / sqrt(1 + z^2),  eta = sqrt(1 + z^2) + log(z / (1 + sqrt(1 + z^2))).
It is uniform in z > 0, and for nu = d/2 - 1 = 255 the first omitted term is below 1e-12
relatively, for every kappa. The public SCF code instead takes log(1e-6 + ive(nu, kappa)),
where the 1e-6 swamps ive (< 1e-8 for kappa up to several thousand) and the loss stops
depending on kappa through that term.
"""
import math

# Coefficients of u_k(p) in powers of p, DLMF 10.41.10.
DEBYE_POLYNOMIALS = (
    ({1: 3.0, 3: -5.0}, 24.0),
    ({2: 81.0, 4: -462.0, 6: 385.0}, 1152.0),
    ({3: 30375.0, 5: -369603.0, 7: 765765.0, 9: -425425.0}, 414720.0),
    ({4: 4465125.0, 6: -94121676.0, 8: 349922430.0, 10: -446185740.0, 12: 185910725.0}, 39813120.0),
)


def log_bessel_iv(nu, kappa, xp):
    """log I_nu(kappa) for kappa > 0 and large order nu (SCF: nu = 255)."""
    z = kappa / nu
    root = xp.sqrt(1.0 + z * z)
    p = 1.0 / root
    eta = root + xp.log(z / (1.0 + root))
    series = 1.0
    for k, (coefficients, denominator) in enumerate(DEBYE_POLYNOMIALS, 1):
        u_k = sum(c * p ** power for power, c in coefficients.items()) / denominator
        series = series + u_k / nu ** k
    return nu * eta - 0.5 * math.log(2 * math.pi * nu) - 0.5 * xp.log(root) + xp.log(series)


def log_vmf_normaliser(kappa, dim, xp):
    """log C_d(kappa) = nu log kappa - (d/2) log 2 pi - log I_nu(kappa), nu = d/2 - 1."""
    nu = dim / 2 - 1
    return nu * xp.log(kappa) - dim / 2 * math.log(2 * math.pi) - log_bessel_iv(nu, kappa, xp)


def kl_dirac_vmf(cos_target, kappa, dim, radius, xp):
    """KL(delta at w_y || vMF(mu, kappa)) per sample, w_y = radius * W_y / |W_y| (SCF eq. 11).

    = -kappa cos(mu, W_y) - nu log kappa + log I_nu(kappa) + (d/2) log 2 pi + d log r
    = -kappa cos(mu, W_y) - log C_d(kappa) + d log r
    """
    return -kappa * cos_target - log_vmf_normaliser(kappa, dim, xp) + dim * math.log(radius)
