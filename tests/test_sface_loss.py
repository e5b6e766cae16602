"""The SFace loss and its gradients against an independent float64 numpy implementation."""
import jittor as jt
import numpy as np
import pytest

from head import build_head
from head.sface import SFaceLoss, sface_loss

S, K, A, B = 64.0, 80.0, 0.87, 1.2


def numpy_sface(x, w, labels, s=S, k=K, a=A, b=B):
    """Loss, d loss / d x, d loss / d W, with the sigmoid re-scale factors held constant."""
    x_norm = np.linalg.norm(x, axis=1, keepdims=True)
    w_norm = np.linalg.norm(w, axis=1, keepdims=True)
    xn, wn = x / x_norm, w / w_norm
    cos = xn @ wn.T
    theta = np.arccos(np.clip(cos, -1, 1))
    target = np.zeros_like(cos, dtype=bool)
    target[np.arange(len(labels)), labels] = True
    with np.errstate(over="ignore"):
        r_intra = 1 / (1 + np.exp(-k * (theta - a)))
        r_inter = 1 / (1 + np.exp(k * (theta - b)))
    factor = np.where(target, -r_intra, r_inter)
    batch = len(labels)
    loss = np.sum(factor * s * cos) / batch
    g = factor * s / batch  # d loss / d cos
    # d cos_ij / d x_i = (wn_j - cos_ij xn_i) / |x_i|, and symmetrically for W_j.
    grad_x = (g @ wn - np.sum(g * cos, axis=1, keepdims=True) * xn) / x_norm
    grad_w = (g.T @ xn - np.sum(g * cos, axis=0)[:, None] * wn) / w_norm
    intra = np.sum(np.where(target, factor * s * cos, 0)) / batch
    inter = np.sum(np.where(target, 0, factor * s * cos)) / batch
    return loss, grad_x, grad_w, intra, inter, cos, target


def relative_error(actual, expected):
    return np.linalg.norm(np.asarray(actual, np.float64) - expected) / max(np.linalg.norm(expected), 1e-30)


@pytest.fixture(autouse=True)
def keep_float64():
    """Jittor turns float64 arrays into float32 unless told not to."""
    jt.flags.auto_convert_64_to_32 = 0
    yield
    jt.flags.auto_convert_64_to_32 = 1


def check_against_numpy(x, w, labels, dtype=np.float64, rtol=1e-5):
    """Same formula in Jittor (float64: to 1e-5; float32, as trained: to float32 rounding)."""
    x, w = x.astype(dtype), w.astype(dtype)
    loss, grad_x, grad_w, intra, inter, cos, target = numpy_sface(x.astype(np.float64), w.astype(np.float64), labels)
    xj, wj = jt.array(x), jt.array(w)
    out = sface_loss(xj, wj, jt.array(labels), S, K, A, B)
    gx, gw = jt.grad(out.loss, [xj, wj])
    values = {name: getattr(out, name).numpy() for name in ("logits", "loss", "cos_target", "cos_other")}
    values.update({name: part.numpy() for name, part in out.parts.items()})
    for name, value in values.items():
        assert np.all(np.isfinite(value)), f"{name} is not finite"
    assert np.isfinite(gx.numpy()).all() and np.isfinite(gw.numpy()).all()
    assert abs(values["loss"].item() - loss) <= rtol * max(abs(loss), 1.0)
    assert abs(values["intra"].item() - intra) <= rtol * max(abs(intra), 1.0)
    assert abs(values["inter"].item() - inter) <= rtol * max(abs(inter), 1.0)
    np.testing.assert_allclose(values["logits"], S * cos, rtol=0, atol=S * 1e-5)
    np.testing.assert_allclose(values["cos_target"].item(), cos[target].mean(), atol=1e-6)
    if (~target).any():
        np.testing.assert_allclose(values["cos_other"].item(), cos[~target].mean(), atol=1e-6)
    assert relative_error(gx.numpy(), grad_x) <= rtol
    assert relative_error(gw.numpy(), grad_w) <= rtol
    return values


def test_random_batch_matches_formula():
    rng = np.random.default_rng(0)
    check_against_numpy(rng.normal(size=(16, 64)), rng.normal(size=(10, 64)), rng.integers(0, 10, 16))


def test_thousands_of_classes():
    rng = np.random.default_rng(1)
    check_against_numpy(rng.normal(size=(8, 128)), rng.normal(size=(5000, 128)), rng.integers(0, 5000, 8))


@pytest.mark.parametrize("classes", [10, 5000])
def test_float32_as_trained(classes):
    rng = np.random.default_rng(7)
    values = check_against_numpy(rng.normal(size=(8, 128)), rng.normal(size=(classes, 128)),
                                 rng.integers(0, classes, 8), dtype=np.float32, rtol=1e-4)
    assert values["loss"].dtype == np.float32


def test_embedding_equal_to_its_centre_and_to_its_opposite():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(6, 32))
    labels = np.array([0, 1, 2, 3])
    x = np.stack([w[0] * 3.0, -w[1] * 0.5, w[2], -w[3]])  # cos = 1, -1, 1, -1 with the targets
    values = check_against_numpy(x, w, labels)
    assert values["cos_target"].item() == pytest.approx(0.0, abs=1e-5)


def test_centres_equal_to_other_embeddings():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(4, 16))
    x = np.stack([w[1], -w[2], w[3] * 2])  # cos = +-1 against non-target classes
    check_against_numpy(x, w, np.array([0, 0, 1]))


def test_single_class():
    rng = np.random.default_rng(4)
    values = check_against_numpy(rng.normal(size=(5, 8)), rng.normal(size=(1, 8)), np.zeros(5, np.int64))
    assert values["inter"].item() == 0.0
    assert values["cos_other"].item() == 0.0


def test_rescale_factors_are_gradient_blocked():
    """Differentiating through r_intra/r_inter would change the gradient; it must equal the blocked formula."""
    rng = np.random.default_rng(5)
    w = rng.normal(size=(3, 8))
    # Put every angle inside the sigmoids' steep region, where their own derivative is large.
    x = np.stack([np.cos(0.87) * w[0] / np.linalg.norm(w[0]) + 0.1 * rng.normal(size=8) for _ in range(4)])
    check_against_numpy(x, w, np.array([0, 0, 0, 0]))


def test_head_module_uses_its_parameters():
    head = build_head("SFaceLoss", 16, 7, s=S, k=K, a=A, b=B)
    assert isinstance(head, SFaceLoss) and tuple(head.weight.shape) == (7, 16)
    x = np.random.default_rng(6).normal(size=(3, 16)).astype(np.float32)
    labels = np.array([1, 6, 0])
    out = head(jt.array(x), jt.array(labels))
    expected = numpy_sface(x.astype(np.float64), head.weight.numpy().astype(np.float64), labels)[0]
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="unknown head"):
        build_head("NoSuchLoss", 16, 7)


def test_class_centres_are_the_same_however_they_are_split():
    """Any block of rows is the full matrix's (what lets a sharded head start where an unsharded one does)."""
    from head.class_centres import CENTRE_BLOCK, centre_rows
    classes = 2 * CENTRE_BLOCK + 100
    full = centre_rows(classes, 8, 0, classes, seed=3)
    for start, stop in ((0, 1), (5, CENTRE_BLOCK + 7), (CENTRE_BLOCK, classes), (classes - 3, classes)):
        np.testing.assert_array_equal(centre_rows(classes, 8, start, stop, seed=3), full[start:stop])
    assert full.std() == pytest.approx(2 * np.sqrt(2 / classes), rel=0.01)  # the reference's xavier-normal
    assert not np.array_equal(centre_rows(classes, 8, 0, 10, seed=4), full[:10])
    head = build_head("SFaceLoss", 8, classes, seed=3)
    np.testing.assert_array_equal(head.weight.numpy(), full)


def test_correct_counts_samples_whose_own_class_scores_highest():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(40, 16)).astype(np.float32)
    labels = rng.integers(0, 5, 40)
    head = build_head("SFaceLoss", 16, 5)
    out = head(jt.array(x), jt.array(labels))
    assert out.correct.item() == np.sum(out.logits.numpy().argmax(1) == labels)
