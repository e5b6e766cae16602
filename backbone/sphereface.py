"""SphereFace's residual networks (Liu et al., CVPR 2017): SphereFace-4/20/36/64.

No BatchNorm: each stage is a stride-2 3x3 conv (with bias) + PReLU, then residual units
of two 3x3 convs + PReLU each; a fully connected layer gives the embedding. Built for
112x96 faces (the SphereFace alignment), any multiple of 16 works. Initialisation follows
the Caffe original: Xavier (uniform, fan-in) for the stage convs and the FC layer,
N(0, 0.01) and no bias for the residual convs, PReLU slopes 0.25.
"""
import math

import jittor as jt
from jittor import nn

from .cpu_layers import PReLU
from .layers import DEFAULT_INPUT_MEAN, DEFAULT_INPUT_SCALE, Flatten, InputNorm, checked_input_size

UNITS_PER_STAGE = {4: (0, 0, 0, 0), 20: (1, 2, 4, 1), 36: (2, 4, 8, 2), 64: (3, 8, 16, 3)}
STAGE_CHANNELS = (64, 128, 256, 512)


def caffe_xavier(shape):
    bound = math.sqrt(3.0 / math.prod(shape[1:]))
    return jt.init.uniform(tuple(shape), "float32", -bound, bound)


class ResidualUnit(nn.Module):
    def __init__(self, channels):
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.prelu1 = PReLU(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.prelu2 = PReLU(channels)
        for conv in (self.conv1, self.conv2):
            conv.weight.assign(jt.init.gauss(conv.weight.shape, "float32", 0.0, 0.01))

    def execute(self, x):
        return x + self.prelu2(self.conv2(self.prelu1(self.conv1(x))))


def stage(in_channels, channels, num_units):
    conv = nn.Conv2d(in_channels, channels, 3, stride=2, padding=1)
    conv.weight.assign(caffe_xavier(conv.weight.shape))
    conv.bias.assign(jt.zeros(channels))
    return nn.Sequential(conv, PReLU(channels), *[ResidualUnit(channels) for _ in range(num_units)])


class SphereNet(nn.Module):
    """Input N x 3 x H x W (RGB, 0..255), default 112x96; output N x embedding_size."""
    feature_channels = 512  # width of the map `features` returns

    def __init__(self, num_layers=20, input_size=(112, 96), embedding_size=512,
                 input_mean=DEFAULT_INPUT_MEAN, input_scale=DEFAULT_INPUT_SCALE):
        if num_layers not in UNITS_PER_STAGE:
            raise ValueError(f"SphereFace depth must be one of {sorted(UNITS_PER_STAGE)}, got {num_layers}")
        height, width = checked_input_size("SphereFace", input_size)
        self.input_norm = InputNorm(input_mean, input_scale)
        stages, in_channels = [], 3
        for channels, units in zip(STAGE_CHANNELS, UNITS_PER_STAGE[num_layers]):
            stages.append(stage(in_channels, channels, units))
            in_channels = channels
        self.body = nn.Sequential(*stages)
        self.flatten = Flatten()
        self.fc5 = nn.Linear(512 * (height // 16) * (width // 16), embedding_size)
        self.fc5.weight.assign(caffe_xavier(self.fc5.weight.shape))
        self.fc5.bias.assign(jt.zeros(embedding_size))

    def features(self, x):
        """The last convolutional map, N x 512 x H/16 x W/16."""
        return self.body(self.input_norm(x))

    def embedding(self, features):
        return self.fc5(self.flatten(features))

    def execute(self, x):
        return self.embedding(self.features(x))
