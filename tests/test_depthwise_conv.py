"""Grouped and depthwise convolutions on oneDNN (backbone.common.Conv2d) against Jittor's own kernels."""
import jittor as jt
import numpy as np
import pytest
from jittor import compile_extern, nn

from backbone import build_backbone
from backbone.common import Conv2d

pytestmark = pytest.mark.skipif(compile_extern.mkl_ops is None, reason="Jittor has no oneDNN here")


def outputs_and_gradients(layer, execute, x):
    """y = layer(x) through `execute`, and the gradients of a fixed random projection of y."""
    y = execute(layer, x)
    projection = jt.array(np.random.default_rng(1).standard_normal(y.shape).astype(np.float32))
    params = [p for p in (layer.weight, layer.bias) if p is not None]
    grads = jt.grad((y * projection).sum(), [x, *params])
    return [v.numpy() for v in (y, *grads)]


@pytest.mark.parametrize("in_c, out_c, kernel, stride, padding, groups, bias", [
    (8, 8, 3, 1, 1, 8, False),     # depthwise, as MobileFaceNet's
    (8, 8, 3, 2, 1, 8, False),     # depthwise, stride 2
    (6, 12, 3, 2, 0, 6, True),     # two filters per channel, no padding, a bias
    (8, 12, 3, 1, 1, 4, False),    # 1 < groups < channels
    (12, 6, (3, 2), 2, (1, 0), 3, True),  # rectangular kernel and padding
    (8, 8, 7, 1, 0, 8, False),     # the global depthwise 7x7 on a 7x7 map
])
def test_grouped_convolution_matches_jittors_own(in_c, out_c, kernel, stride, padding, groups, bias):
    jt.set_seed(0)
    layer = Conv2d(in_c, out_c, kernel, stride=stride, padding=padding, groups=groups, bias=bias)
    size = 7 if kernel == 7 else 11
    x = jt.array(np.random.default_rng(0).standard_normal((3, in_c, size, size + 2)).astype(np.float32))
    ours = outputs_and_gradients(layer, Conv2d.execute, x)
    stock = outputs_and_gradients(layer, nn.Conv2d.execute, x)
    for a, b in zip(ours, stock):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


def test_mobilefacenet_output_and_gradients_match_jittors_own_convolutions(monkeypatch):
    jt.set_seed(0)
    backbone = build_backbone("MobileFaceNet")
    backbone.train()
    images = jt.array(np.random.default_rng(0).uniform(0, 255, (4, 3, 112, 112)).astype(np.float32))
    params = [p for name, p in backbone.state_dict().items() if not name.endswith(("running_mean", "running_var"))]

    def run():
        y = backbone(images)
        projection = jt.array(np.random.default_rng(1).standard_normal(y.shape).astype(np.float32))
        return [v.numpy() for v in (y, *jt.grad((y * projection).sum(), params))]
    ours = run()
    monkeypatch.setattr(Conv2d, "execute", nn.Conv2d.execute)
    stock = run()
    assert len(ours) == len(params) + 1
    for a, b in zip(ours, stock):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * np.abs(b).max())
