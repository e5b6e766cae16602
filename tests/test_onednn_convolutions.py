"""Every convolution of the backbones runs on oneDNN on the CPU, forward and both gradients, grouped
and depthwise ones included: Jittor's conv tuner turns its reindex-and-reduce convolution graphs
into oneDNN's mkl_conv ops (none of them runs on Jittor's generated kernels). This guards that, e.g.
across a Jittor upgrade."""
import jittor as jt
import numpy as np
import pytest
from jittor import compile_extern, nn

ONEDNN_OPS = ("mkl_conv", "mkl_conv_backward_x", "mkl_conv_backward_w")

pytestmark = pytest.mark.skipif(compile_extern.mkl_ops is None, reason="Jittor has no oneDNN here")


def executed_kernels(layer, x):
    """Names of the ops a forward and backward pass of `layer` ran, from Jittor's profiler."""
    y = layer(x)
    grads = jt.grad((y * jt.array(np.ones(y.shape, np.float32))).sum(), [x, layer.weight])
    with jt.profile_scope(warmup=0, rerun=0) as report:
        jt.sync([y, *grads])
    return {row[0].split("«")[0] for row in report[1:]}


@pytest.mark.parametrize("in_c, out_c, stride, groups", [
    (16, 16, 1, 16),  # depthwise, as MobileFaceNet's
    (16, 16, 2, 16),  # depthwise, stride 2
    (16, 32, 1, 4),   # 1 < groups < channels
    (16, 32, 2, 1),   # ordinary
])
def test_convolutions_run_on_onednn_forward_and_backward(in_c, out_c, stride, groups):
    layer = nn.Conv2d(in_c, out_c, 3, stride=stride, padding=1, groups=groups, bias=False)
    x = jt.array(np.random.default_rng(0).standard_normal((4, in_c, 14, 14)).astype(np.float32))
    kernels = executed_kernels(layer, x)
    assert set(ONEDNN_OPS) <= kernels, kernels
