"""Softmax-family heads against independent float64 numpy implementations of their formulas."""
import math

import jittor as jt
import numpy as np
import pytest

from head import HEADS, build_head
from head.margin import sphereface_lambda


@pytest.fixture(autouse=True)
def keep_float64():
    jt.flags.auto_convert_64_to_32 = 0
    yield
    jt.flags.auto_convert_64_to_32 = 1


def unit(v):
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def numpy_logits(name, x, w, labels, step=0, bias=None):
    """Each head's published formula, written with angles where the paper uses them."""
    cos = np.clip(unit(x) @ unit(w).T, -1, 1)
    theta = np.arccos(cos)
    target = np.zeros_like(cos, bool)
    target[np.arange(len(labels)), labels] = True
    if name == "Softmax":
        return x @ w.T + bias
    if name in ("CosFace", "AMSoftmax"):
        s = 64.0 if name == "CosFace" else 30.0
        return s * np.where(target, cos - 0.35, cos)
    if name == "ArcFace":
        m = 0.5
        arc = np.where(theta + m <= math.pi, np.cos(theta + m), cos - m * math.sin(math.pi - m))
        return 64.0 * np.where(target, arc, cos)
    if name == "SphereFace":
        m = 4
        k = np.floor(m * theta / math.pi)
        psi = (-1.0) ** k * np.cos(m * theta) - 2 * k
        lam = max(5.0, 1000.0 / (1 + 0.12 * (step + 1)))
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return norms * np.where(target, (lam * cos + psi) / (1 + lam), cos)
    raise AssertionError(name)


def numpy_cross_entropy(logits, labels):
    top = logits.max(1, keepdims=True)
    log_sum = np.log(np.exp(logits - top).sum(1)) + top[:, 0]
    return np.mean(log_sum - logits[np.arange(len(labels)), labels])


MARGIN_HEADS = ["Softmax", "CosFace", "AMSoftmax", "ArcFace", "SphereFace"]


def run_head(name, x, w, labels, step=0):
    head = build_head(name, x.shape[1], w.shape[0])
    head.weight = jt.array(w)  # replaced, not assigned: assign would keep the float32 of the original
    bias = None
    if name == "Softmax":
        bias = np.linspace(-0.5, 0.5, w.shape[0])
        head.bias = jt.array(bias)
    xj = jt.array(x)
    out = head(xj, jt.array(labels), step)
    return head, xj, out, bias


@pytest.mark.parametrize("name", MARGIN_HEADS)
def test_logits_and_loss_match_the_formula(name):
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(12, 16)), rng.normal(size=(9, 16))
    labels = rng.integers(0, 9, 12)
    _, _, out, bias = run_head(name, x, w, labels, step=3)
    expected = numpy_logits(name, x, w, labels, step=3, bias=bias)
    # Jittor rounds Python scalar operands (s, m) to float32, even in float64 arithmetic.
    np.testing.assert_allclose(out.logits.numpy(), expected, rtol=1e-6, atol=1e-6)
    assert out.loss.item() == pytest.approx(numpy_cross_entropy(expected, labels), rel=1e-6)


@pytest.mark.parametrize("name", MARGIN_HEADS)
def test_gradient_matches_finite_differences(name):
    rng = np.random.default_rng(1)
    x, w = rng.normal(size=(4, 6)), rng.normal(size=(5, 6))
    labels = np.array([0, 2, 4, 1])
    head, xj, out, bias = run_head(name, x, w, labels)
    grad_x, grad_w = jt.grad(out.loss, [xj, head.weight])
    eps = 1e-6
    for values, grad, which in ((x, grad_x.numpy(), "x"), (w, grad_w.numpy(), "w")):
        numeric = np.zeros_like(values)
        for index in np.ndindex(values.shape):
            plus, minus = values.copy(), values.copy()
            plus[index] += eps
            minus[index] -= eps
            args = (plus, w) if which == "x" else (x, plus)
            args_minus = (minus, w) if which == "x" else (x, minus)
            numeric[index] = (numpy_cross_entropy(numpy_logits(name, *args, labels, bias=bias), labels)
                              - numpy_cross_entropy(numpy_logits(name, *args_minus, labels, bias=bias), labels)) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-6, err_msg=f"d loss / d {which}")


@pytest.mark.parametrize("name", MARGIN_HEADS)
def test_cos_plus_minus_one_stay_finite(name):
    rng = np.random.default_rng(2)
    w = rng.normal(size=(4, 8))
    x = np.stack([w[0] * 2, -w[1], w[2], -w[3] * 3])  # cos = +1, -1, +1, -1 with the targets
    labels = np.array([0, 1, 2, 3])
    head, xj, out, bias = run_head(name, x, w, labels)
    grad_x, grad_w = jt.grad(out.loss, [xj, head.weight])
    for value in (out.logits.numpy(), out.loss.numpy(), grad_x.numpy(), grad_w.numpy()):
        assert np.isfinite(value).all()
    # ArcFace's sine is clamped at 1e-6 where cos = +-1: a 1e-6-sized departure from the formula.
    np.testing.assert_allclose(out.logits.numpy(), numpy_logits(name, x, w, labels, bias=bias), atol=1e-4)


def test_sphereface_psi_is_monotonic_and_lambda_anneals():
    w = np.array([[1.0, 0.0]])
    angles = np.linspace(0, math.pi, 181)
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    head, _, out, _ = run_head("SphereFace", x, w, np.zeros(len(x), np.int64), step=10 ** 6)
    target = out.logits.numpy()[:, 0]  # |x| = 1, lambda = 5
    assert np.all(np.diff(target) < 0)  # psi makes the target logit decrease over the whole [0, pi]
    assert sphereface_lambda(1) == pytest.approx(1000 / 1.12)
    assert sphereface_lambda(100) == pytest.approx(1000 / 13)
    assert sphereface_lambda(10 ** 6) == 5.0


def test_heads_take_only_their_own_parameters():
    assert set(HEADS) == set(MARGIN_HEADS) | {"SFaceLoss"}
    with pytest.raises(ValueError, match="head ArcFace takes no parameter k"):
        build_head("ArcFace", 8, 3, k=80)
    assert build_head("CosFace", 8, 3, m=0.2).m == 0.2
    assert build_head("AMSoftmax", 8, 3).s == 30.0
