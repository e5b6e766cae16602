"""Angle statistics of a model on its training data, pure numpy: what training logs per window and
what tools/angle_report.py draws.

theta_y = acos(cos to the own class centre), theta_j = acos(cos to another class's centre). SFace's
intra-class weight r_intra(theta) = 1 / (1 + exp(-k (theta - a))) rises with the angle: it is below 1/2
exactly when theta_y < a, i.e. the sample sits close enough to its centre to be (mostly) no longer
pulled. `fraction_unpulled` counts those samples; it needs the run's a, so runs of the other heads
(which have none) log no such fraction.
"""
import math

import numpy as np

PERCENTILES = (5, 25, 50, 75, 95)
# 18 bins of 10 degrees over [0, pi]; the last bin includes pi itself (numpy's histogram convention).
HISTOGRAM_BINS = np.linspace(0.0, math.pi, 19)
# The (a, b) suggestion: a at this percentile of theta_y; b at this percentile of theta_j, less 3 / k
# (so that r_inter <= 1 / (1 + e^3) ~ 0.047 for all but 1 % of the non-target pairs).
SUGGEST_A_PERCENTILE = 90
SUGGEST_B_PERCENTILE = 1
SUGGEST_B_SLOPES = 3.0


def angles(cos):
    """Cosines -> angles in radians, float64; cosines rounded past +-1 are clamped first."""
    return np.arccos(np.clip(np.asarray(cos, np.float64), -1.0, 1.0))


def percentiles(theta):
    """{"p5": ..., "p25": ..., ...} of the angles (numpy's linear interpolation)."""
    return {f"p{p}": float(v) for p, v in zip(PERCENTILES, np.percentile(theta, PERCENTILES))}


def histogram(theta):
    """Counts of the angles in HISTOGRAM_BINS (18 bins of 10 degrees over [0, pi])."""
    return [int(c) for c in np.histogram(theta, HISTOGRAM_BINS)[0]]


def fraction_unpulled(theta_target, a):
    """Fraction of samples with r_intra(theta_y) < 1/2, i.e. theta_y < a."""
    return float(np.mean(np.asarray(theta_target) < a))


def r_intra(theta, k, a):
    return 1.0 / (1.0 + np.exp(-k * (np.asarray(theta) - a)))


def r_inter(theta, k, b):
    return 1.0 / (1.0 + np.exp(k * (np.asarray(theta) - b)))


def distribution(theta):
    """One set of angles as a metrics record holds it: count, percentiles and histogram."""
    return {"count": int(len(theta)), **percentiles(theta), "histogram": histogram(theta)}


def angle_summary(theta_target, theta_other, a=None):
    """The `angles` field of a training record: both distributions, and the unpulled fraction when `a` is known."""
    summary = {"theta_target": distribution(theta_target), "theta_other": distribution(theta_other),
               "bins": "18 x 10 degrees over [0, pi]"}
    if a is not None:
        summary["unpulled"] = fraction_unpulled(theta_target, a)
    return summary


def suggest_ab(theta_target, theta_other, k=80.0):
    """(a, b) from a trained model's angles, rounded to 0.01: a = the 90th percentile of theta_y (90 % of the
    samples released, r_intra < 1/2); b = the 1st percentile of theta_j less 3 / k, so r_inter is nearly 0
    for the bulk of the non-target pairs."""
    a = float(np.percentile(theta_target, SUGGEST_A_PERCENTILE))
    b = float(np.percentile(theta_other, SUGGEST_B_PERCENTILE)) - SUGGEST_B_SLOPES / k
    return round(a, 2), round(b, 2)
