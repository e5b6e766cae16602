"""backbone.cpu_layers (BatchNorm and PReLU with CPU channel-sum kernels) against Jittor's own layers."""
import jittor as jt
import numpy as np
import pytest
from jittor import nn

from backbone import build_backbone, cpu_layers
from backbone.cpu_layers import BatchNorm, PReLU, batchnorm_prelu, channel_sums
from backbone.layers import is_running_stat


def randomise(module, rng):
    """BatchNorm and PReLU parameters away from their initial 1 / 0 / 0.25 (a PReLU slope of 1 makes the
    layer linear and the gradients of the BatchNorm shifts before it exactly zero)."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm):
            m.weight.assign(jt.array(rng.uniform(0.5, 1.5, m.num_features).astype(np.float32)))
            m.bias.assign(jt.array(rng.normal(0, 0.5, m.num_features).astype(np.float32)))
        elif isinstance(m, nn.PReLU):
            m.weight.assign(jt.array(rng.uniform(-0.5, 1.0, m.num_parameters).astype(np.float32)))


def outputs_and_gradients(module, x):
    """y, running statistics, and d(y . projection)/d(x and every parameter), as float64 numpy."""
    y = module(x)
    projection = jt.array(np.random.default_rng(7).standard_normal(y.shape)).cast(y.dtype)
    state = module.state_dict()
    names = [k for k in state if not is_running_stat(k)]
    grads = jt.grad((y * projection).sum(), [x] + [state[k] for k in names])
    arrays = {"y": y, "d_input": grads[0], **dict(zip(names, grads[1:]))}
    arrays.update({k: v for k, v in state.items() if is_running_stat(k)})
    return {k: v.numpy().astype(np.float64) for k, v in arrays.items()}


def with_jittors_layers(monkeypatch):
    monkeypatch.setattr(cpu_layers, "use_cpu_kernel", lambda *vars: False)


def in_float64(module, state, x):
    """outputs_and_gradients with the module's parameters and x in float64."""
    modules = dict(module.named_modules())
    with jt.flag_scope(auto_convert_64_to_32=0):
        for key, value in state.items():
            path, _, attr = key.rpartition(".")
            setattr(modules[path], attr, jt.array(value.astype(np.float64)))
        return outputs_and_gradients(module, jt.array(x.astype(np.float64)))


def jittors_in_float64(module, state, x):
    """The reference: Jittor's own layers, in float64."""
    with pytest.MonkeyPatch.context() as m:
        with_jittors_layers(m)
        return in_float64(module, state, x)


def layer_scales(arrays):
    """{name: the largest value among the arrays of its layer and kind} (kinds: output, input gradient,
    parameter gradients, running statistics).

    Float32 rounding errs in proportion to the magnitudes summed, not to the sum: a gradient that is zero
    in exact arithmetic (a BatchNorm's shift followed by another BatchNorm, which removes any constant)
    still carries rounding noise of the size of its layer's other gradients. Each error is therefore
    measured against its layer's scale, never against a value that may be zero."""
    def group(name):
        layer, dot, _ = name.rpartition(".")
        return (layer if dot else name), is_running_stat(name)
    largest = {}
    for name, value in arrays.items():
        largest[group(name)] = max(largest.get(group(name), 0.0), float(np.abs(value).max()))
    return {name: largest[group(name)] for name in arrays}


def compare(module, x):
    """Our float32 layers are at least as accurate as Jittor's float32 layers, measured against Jittor's
    layers in float64: per array, error <= 2 x Jittor's error + 1e-5, both relative to the layer's scale
    (`layer_scales`). 1e-5 is about 100 float32 roundings (2^-24 each) of that scale: the bound for arrays
    whose exact value is zero, where both errors are pure rounding noise and their ratio means nothing."""
    state = {k: v.numpy().copy() for k, v in module.state_dict().items()}
    ours = outputs_and_gradients(module, jt.array(x))
    module.load_state_dict(state)
    with pytest.MonkeyPatch.context() as m:
        with_jittors_layers(m)
        jittors = outputs_and_gradients(module, jt.array(x))
    exact = jittors_in_float64(module, state, x)
    assert ours.keys() == exact.keys()
    scales = layer_scales(exact)
    for k, reference in exact.items():
        assert scales[k] > 0, k
        our_error, jittors_error = (np.abs(v[k] - reference).max() / scales[k] for v in (ours, jittors))
        assert our_error <= 2 * jittors_error + 1e-5, (k, our_error, jittors_error)
    return ours, exact


def test_channel_sums_match_numpy():
    rng = np.random.default_rng(0)
    dz, x = (rng.standard_normal((2, 5, 7, 3, 4)).astype(np.float32) for _ in range(2))
    scale, shift, slope = (rng.standard_normal(5).astype(np.float32) for _ in range(3))
    sums = channel_sums(*(jt.array(v) for v in (dz, x, scale, shift, slope)))

    def channel(v):
        return v.reshape(1, 5, 1, 1, 1)
    y = x * channel(scale) + channel(shift)
    dy = np.where(y > 0, dz, dz * channel(slope))
    axes = (0, 2, 3, 4)
    expected = [dy.sum(axes), (dy * x).sum(axes), (dz * np.minimum(y, 0)).sum(axes)]
    for got, want in zip(sums, expected):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(6, 5, 9, 7), (3, 8, 1, 1), (10, 12)])
@pytest.mark.parametrize("eps, momentum", [(1e-5, 0.1), (1e-3, 0.3)])
def test_batchnorm_in_training_matches_jittors(shape, eps, momentum):
    rng = np.random.default_rng(1)
    layer = BatchNorm(shape[1], eps=eps, momentum=momentum)
    randomise(layer, rng)
    layer.running_mean.assign(jt.array(rng.standard_normal(shape[1]).astype(np.float32)))
    ours, exact = compare(layer, (rng.standard_normal(shape) * 3 + 2).astype(np.float32))
    for k, reference in exact.items():
        np.testing.assert_allclose(ours[k], reference, rtol=1e-4, atol=1e-5 * np.abs(reference).max(), err_msg=k)


@pytest.mark.parametrize("shape", [(4, 6, 5, 3), (7, 3)])
def test_prelu_matches_jittors(shape):
    rng = np.random.default_rng(2)
    layer = PReLU(shape[1])
    randomise(layer, rng)
    ours, exact = compare(layer, rng.standard_normal(shape).astype(np.float32))
    for k, reference in exact.items():
        np.testing.assert_allclose(ours[k], reference, rtol=1e-5, atol=1e-6 * np.abs(reference).max(), err_msg=k)


class BatchNormPReLU(nn.Module):
    def __init__(self, channels):
        self.batchnorm, self.prelu = BatchNorm(channels, eps=1e-3), PReLU(channels)

    def execute(self, x):
        return batchnorm_prelu(self.batchnorm, self.prelu, x)


def test_batchnorm_then_prelu_as_one_step_matches_jittors():
    rng = np.random.default_rng(6)
    layer = BatchNormPReLU(6)
    randomise(layer, rng)
    ours, exact = compare(layer, rng.standard_normal((5, 6, 4, 7)).astype(np.float32))
    for k, reference in exact.items():
        np.testing.assert_allclose(ours[k], reference, rtol=1e-4, atol=1e-5 * np.abs(reference).max(), err_msg=k)


def test_eval_mode_and_a_single_slope_are_jittors_layers_unchanged(monkeypatch):
    rng = np.random.default_rng(3)
    x = jt.array(rng.standard_normal((4, 6, 5, 5)).astype(np.float32))
    batchnorm, prelu = BatchNorm(6), PReLU(1)
    randomise(batchnorm, rng)
    batchnorm.eval()
    ours = [batchnorm(x).numpy(), prelu(x).numpy()]
    with_jittors_layers(monkeypatch)
    np.testing.assert_array_equal(ours[0], batchnorm(x).numpy())
    np.testing.assert_array_equal(ours[1], prelu(x).numpy())


@pytest.mark.parametrize("seed", [5, 7])
@pytest.mark.parametrize("name", ["MobileFaceNet", "IR_18", "SphereFace4"])  # 32x32 inputs keep float64 quick
def test_whole_backbones_compute_jittors_formulas(name, seed):
    """Whole networks with our layers against Jittor's, both in float64: output, every gradient and the running
    statistics agree to 1e-10 of their layer's scale.

    Float64 rounding (1.1e-16) grows through these networks about as float32 rounding does (1e-5 output error
    from 6e-8 roundings: x200), so the two orders of summation differ by ~1e-13: 1e-10 leaves a margin of 1000,
    and a formula error of 1e-3 (a wrong factor, a miscount) exceeds it ten-million-fold. Whole networks are
    not compared in float32: a pre-activation within rounding of a PReLU's kink takes either branch in either
    implementation, which moves a weight gradient by a whole term (4e-2 of its layer's scale with seed 7);
    each layer's float32 accuracy is checked on its own above."""
    jt.set_seed(0)
    backbone = build_backbone(name, (32, 32))
    randomise(backbone, np.random.default_rng(4))
    backbone.train()
    if name == "IR_18":
        backbone.output_layer[1].p = 0.0  # dropout masks are not part of the comparison
    x = np.random.default_rng(seed).uniform(0, 255, (4, 3, 32, 32)).astype(np.float32)
    state = {k: v.numpy().copy() for k, v in backbone.state_dict().items()}
    ours, jittors = in_float64(backbone, state, x), jittors_in_float64(backbone, state, x)
    assert ours.keys() == jittors.keys()
    scales = layer_scales(jittors)
    for k, reference in jittors.items():
        assert np.abs(ours[k] - reference).max() <= 1e-10 * scales[k], k


def test_a_second_gradient_of_one_forward_pass_is_refused_by_name():
    layer = PReLU(3)
    x = jt.array(np.random.default_rng(8).standard_normal((2, 3, 4, 4)).astype(np.float32))
    y = layer(x)
    jt.grad(y.sum(), [x], retain_graph=True)
    with pytest.raises(RuntimeError, match="second gradient of the same forward pass"):
        jt.grad(y.sum(), [x])
