"""Backbone shapes, parameter counts, initialisation and gradient flow."""
import math

import jittor as jt
import numpy as np
import pytest
from jittor import nn

from backbone import BACKBONES, build_backbone
from backbone.ir import UNITS_PER_STAGE
from backbone.layers import count_parameters

# Measured on the official PyTorch IR_50 (face.evoLVe / SFace_torch), 112x112, 512-d.
REFERENCE_IR_50_PARAMETERS = 43_574_976
# Xiaoccer's PyTorch MobileFaceNet (112x96, 128-d) has 999,552; its last layer is a 1x1 conv
# without bias where ours (like InsightFace's) is a Linear with one: +128.
XIAOCCER_MOBILEFACENET_PARAMETERS = 999_552 + 128


def ir_parameter_count(depth, height, width, embedding=512, se=False):
    """Independent arithmetic over the architecture of face.evoLVe's IR networks."""
    total = 3 * 64 * 9 + 2 * 64 + 64  # stem conv + BN + PReLU
    in_c = 64
    for d, units in zip((64, 128, 256, 512), UNITS_PER_STAGE[depth]):
        for _ in range(units):
            total += 2 * in_c + in_c * d * 9 + d + d * d * 9 + 2 * d
            if in_c != d:
                total += in_c * d + 2 * d
            if se:
                total += 2 * d * (d // 16)
            in_c = d
    return total + 2 * 512 + 512 * (height // 16) * (width // 16) * embedding + embedding + 2 * embedding


def images(n, height, width, seed=0):
    return jt.array(np.random.default_rng(seed).uniform(0, 255, (n, 3, height, width)).astype(np.float32))


def test_ir_50_matches_the_reference_parameter_count():
    assert count_parameters(build_backbone("IR_50")) == REFERENCE_IR_50_PARAMETERS


@pytest.mark.parametrize("name,depth,se", [("IR_18", 18, False), ("IR_34", 34, False), ("IR_100", 100, False),
                                           ("IR_101", 100, False), ("IR_152", 152, False),
                                           ("IR_SE_50", 50, True), ("IR_SE_100", 100, True)])
def test_ir_parameter_counts(name, depth, se):
    assert count_parameters(build_backbone(name)) == ir_parameter_count(depth, 112, 112, se=se)


def test_parameter_counts_at_112x96_and_other_embedding_sizes():
    assert count_parameters(build_backbone("IR_50", (112, 96), 256)) == ir_parameter_count(50, 112, 96, 256)
    assert count_parameters(build_backbone("MobileFaceNet", (112, 96), 128)) == XIAOCCER_MOBILEFACENET_PARAMETERS


@pytest.mark.parametrize("name", ["IR_18", "MobileFaceNet"])
@pytest.mark.parametrize("size", [(112, 112), (112, 96)])
def test_output_shapes(name, size):
    model = build_backbone(name, size, embedding_size=128)
    model.eval()
    assert tuple(model(images(2, *size)).shape) == (2, 128)


def test_real_ir_50_forward():
    model = build_backbone("IR_50")
    model.eval()
    out = model(images(2, 112, 112)).numpy()
    assert out.shape == (2, 512) and np.isfinite(out).all()


@pytest.mark.parametrize("name", ["IR_18", "MobileFaceNet"])
def test_gradients_reach_the_stem(name):
    model = build_backbone(name, (112, 96), embedding_size=64)
    model.train()
    stem = model.input_layer[0].weight if name.startswith("IR") else model.conv_1.conv2d.weight
    out = model(images(4, 112, 96))
    grad = jt.grad((out * out).sum(), stem).numpy()
    assert np.isfinite(grad).all() and np.abs(grad).max() > 0


def test_reference_initialisation():
    model = build_backbone("IR_18")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm):
            assert np.all(m.weight.numpy() == 1) and np.all(m.bias.numpy() == 0)
        elif isinstance(m, nn.PReLU):
            assert np.all(m.weight.numpy() == 1)
    conv = model.body[3].res_layer[1].weight.numpy()  # 128 x 128 x 3 x 3
    assert conv.std() == pytest.approx(2 * math.sqrt(2 / (128 * 9)), rel=0.05)
    linear = model.output_layer[3]
    assert linear.weight.numpy().std() == pytest.approx(2 * math.sqrt(2 / 512), rel=0.05)
    assert np.all(linear.bias.numpy() == 0)


def test_unknown_names_and_sizes_are_refused():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("ResNet_9000")
    with pytest.raises(ValueError, match="multiple of 16"):
        build_backbone("IR_18", (100, 100))
    assert {"IR_50", "IR_100", "IR_101", "IR_152", "IR_SE_50", "IR_SE_100", "MobileFaceNet"} <= set(BACKBONES)


def spherenet_parameter_count(units, height, width, embedding=512):
    total, in_c = 0, 3
    for c, n in zip((64, 128, 256, 512), units):
        total += in_c * c * 9 + c + c  # stride-2 conv with bias, PReLU
        total += n * 2 * (c * c * 9 + c)  # residual units: two bias-free convs + PReLUs
        in_c = c
    return total + 512 * (height // 16) * (width // 16) * embedding + embedding


@pytest.mark.parametrize("depth,units", [(4, (0, 0, 0, 0)), (20, (1, 2, 4, 1)), (36, (2, 4, 8, 2)),
                                         (64, (3, 8, 16, 3))])
def test_sphereface_networks(depth, units):
    model = build_backbone(f"SphereFace{depth}", (112, 96))
    assert count_parameters(model) == spherenet_parameter_count(units, 112, 96)
    assert not any(isinstance(m, nn.BatchNorm) for m in model.modules())


@pytest.mark.parametrize("size", [(112, 96), (112, 112)])
def test_sphereface20_shapes_gradients_and_initialisation(size):
    model = build_backbone("SphereFace20", size, embedding_size=128)
    out = model(images(2, *size))
    assert tuple(out.shape) == (2, 128)
    stem = model.body[0][0].weight
    grad = jt.grad((out * out).sum(), stem).numpy()
    assert np.isfinite(grad).all() and np.abs(grad).max() > 0
    residual_conv = model.body[2][2].conv1.weight.numpy()
    assert residual_conv.std() == pytest.approx(0.01, rel=0.05)
    assert np.all(model.body[0][1].weight.numpy() == 0.25)  # Caffe's PReLU slope
