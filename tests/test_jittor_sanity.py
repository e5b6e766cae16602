"""Fail loudly when the installed Jittor computes wrong numbers.

Jittor 1.3.11 with numpy 2.x returns silently wrong results (e.g. `jt.array(x) * 2 == x`);
these checks compare a few primitive operations with numpy.
"""
import jittor as jt
import numpy as np


def test_numpy_is_below_2():
    assert int(np.__version__.split(".")[0]) < 2, (
        f"numpy {np.__version__} is installed; Jittor 1.3.11 needs numpy<2 (run setup.sh)")


def test_elementwise_arithmetic():
    x = np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5
    np.testing.assert_array_equal((jt.array(x) * 2).numpy(), x * 2)
    np.testing.assert_array_equal((jt.array(x) + 1.5).numpy(), x + 1.5)
    np.testing.assert_allclose(jt.exp(jt.array(x / 10)).numpy(), np.exp(x / 10), rtol=1e-6)
    np.testing.assert_allclose(jt.array(x).sum(1).numpy(), x.sum(1), rtol=1e-6)


def test_matmul_and_conv_match_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(7, 5)).astype(np.float32), rng.normal(size=(5, 3)).astype(np.float32)
    np.testing.assert_allclose(jt.matmul(jt.array(a), jt.array(b)).numpy(), a @ b, rtol=1e-5, atol=1e-5)
    image = rng.normal(size=(1, 2, 5, 5)).astype(np.float32)
    kernel = rng.normal(size=(3, 2, 3, 3)).astype(np.float32)
    expected = np.zeros((1, 3, 3, 3), np.float32)
    for o in range(3):
        for i in range(3):
            for j in range(3):
                expected[0, o, i, j] = np.sum(image[0, :, i:i + 3, j:j + 3] * kernel[o])
    got = jt.nn.conv2d(jt.array(image), jt.array(kernel)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_scatter_and_gradient():
    target = jt.zeros((2, 4))
    target.scatter_(1, jt.array([[1], [3]]), jt.ones((2, 1)))
    np.testing.assert_array_equal(target.numpy(), [[0, 1, 0, 0], [0, 0, 0, 1]])
    x = jt.array(np.array([1.0, -2.0, 3.0], np.float32))
    np.testing.assert_allclose(jt.grad((x * x).sum(), x).numpy(), [2.0, -4.0, 6.0])
