"""MobileFaceNet (Chen et al. 2018) as in InsightFace's fmobilefacenet and the official SFace code.

Attribute names follow the PyTorch reference (conv_1, dconv_23, res_3.model.block0, ...).
BatchNorm eps is 1e-3 (MXNet's default, which the architecture was trained with) except
fc1 (2e-5); activations are per-channel PReLU; there is no dropout.
"""
from jittor import nn

from .cpu_layers import BatchNorm, PReLU, batchnorm_prelu
from .layers import DEFAULT_INPUT_MEAN, DEFAULT_INPUT_SCALE, Flatten, InputNorm, checked_input_size, reference_init

BN_EPS = 1e-3
EMBEDDING_BN_EPS = 2e-5


class ConvBlock(nn.Module):
    """conv (no bias) -> BN -> PReLU"""

    def __init__(self, in_c, out_c, kernel=1, stride=1, padding=0, groups=1):
        self.conv2d = nn.Conv2d(in_c, out_c, kernel, stride=stride, padding=padding, groups=groups, bias=False)
        self.batchnorm = BatchNorm(out_c, eps=BN_EPS)
        self.relu = PReLU(out_c)

    def execute(self, x):
        return batchnorm_prelu(self.batchnorm, self.relu, self.conv2d(x))


class LinearBlock(nn.Module):
    """conv (no bias) -> BN, no activation"""

    def __init__(self, in_c, out_c, kernel=1, stride=1, padding=0, groups=1):
        self.conv2d = nn.Conv2d(in_c, out_c, kernel, stride=stride, padding=padding, groups=groups, bias=False)
        self.batchnorm = BatchNorm(out_c, eps=BN_EPS)

    def execute(self, x):
        return self.batchnorm(self.conv2d(x))


class DepthWise(nn.Module):
    """Inverted residual: 1x1 expand to `groups` channels -> 3x3 depthwise(stride) -> 1x1 project."""

    def __init__(self, in_c, out_c, groups, stride, residual=False):
        self.conv_sep = ConvBlock(in_c, groups)
        self.conv_dw = ConvBlock(groups, groups, kernel=3, stride=stride, padding=1, groups=groups)
        self.conv_proj = LinearBlock(groups, out_c)
        self.residual = residual

    def execute(self, x):
        y = self.conv_proj(self.conv_dw(self.conv_sep(x)))
        return x + y if self.residual else y


class Residual(nn.Module):
    def __init__(self, channels, num_blocks, groups):
        self.model = nn.Sequential()
        for i in range(num_blocks):
            self.model.add_module(f"block{i}", DepthWise(channels, channels, groups, stride=1, residual=True))

    def execute(self, x):
        return self.model(x)


class MobileFaceNet(nn.Module):
    """Input N x 3 x H x W (RGB, 0..255), H x W = 112x112 or 112x96; output N x embedding_size."""
    feature_channels = 512  # width of the map `features` returns

    def __init__(self, input_size=(112, 112), embedding_size=512,
                 input_mean=DEFAULT_INPUT_MEAN, input_scale=DEFAULT_INPUT_SCALE):
        height, width = checked_input_size("MobileFaceNet", input_size)
        self.input_norm = InputNorm(input_mean, input_scale)
        self.conv_1 = ConvBlock(3, 64, kernel=3, stride=2, padding=1)  # H/2
        self.conv_2_dw = ConvBlock(64, 64, kernel=3, stride=1, padding=1, groups=64)
        self.dconv_23 = DepthWise(64, 64, groups=128, stride=2)  # H/4
        self.res_3 = Residual(64, num_blocks=4, groups=128)
        self.dconv_34 = DepthWise(64, 128, groups=256, stride=2)  # H/8
        self.res_4 = Residual(128, num_blocks=6, groups=256)
        self.dconv_45 = DepthWise(128, 128, groups=512, stride=2)  # H/16
        self.res_5 = Residual(128, num_blocks=2, groups=256)
        self.conv_6sep = ConvBlock(128, 512)
        # Global depthwise conv over the whole H/16 x W/16 map (7x7 or 7x6).
        self.conv_6dw7_7 = LinearBlock(512, 512, kernel=(height // 16, width // 16), groups=512)
        self.conv_6_flatten = Flatten()
        self.pre_fc1 = nn.Linear(512, embedding_size)
        self.fc1 = BatchNorm(embedding_size, eps=EMBEDDING_BN_EPS)
        reference_init(self)

    def features(self, x):
        """The last full-resolution map, N x 512 x H/16 x W/16 (what SCF's confidence head reads)."""
        x = self.conv_2_dw(self.conv_1(self.input_norm(x)))  # N x 64 x H/2 x W/2
        x = self.res_3(self.dconv_23(x))  # N x 64 x H/4
        x = self.res_4(self.dconv_34(x))  # N x 128 x H/8
        x = self.res_5(self.dconv_45(x))  # N x 128 x H/16
        return self.conv_6sep(x)

    def embedding(self, features):
        x = self.conv_6dw7_7(features)  # N x 512 x 1 x 1
        return self.fc1(self.pre_fc1(self.conv_6_flatten(x)))

    def execute(self, x):
        return self.embedding(self.features(x))
