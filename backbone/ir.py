"""IR and IR-SE ResNets of face.evoLVe / the official SFace code (ArcFace's "improved residual").

Attribute names follow the PyTorch reference (input_layer, body.N.res_layer, ...), so its
state_dicts map onto these modules key for key.
"""
from jittor import nn

from .cpu_layers import BatchNorm, PReLU, batchnorm_prelu
from .layers import DEFAULT_INPUT_MEAN, DEFAULT_INPUT_SCALE, Flatten, InputNorm, checked_input_size, reference_init

UNITS_PER_STAGE = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    152: (3, 8, 36, 3),
}
STAGE_CHANNELS = (64, 128, 256, 512)


class Subsample(nn.Module):
    """MaxPool2d(kernel 1, stride s) of the reference, i.e. keep every s-th pixel."""

    def __init__(self, stride):
        self.stride = stride

    def execute(self, x):
        return x if self.stride == 1 else x[:, :, ::self.stride, ::self.stride]


class SEModule(nn.Module):
    def __init__(self, channels, reduction=16):
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def execute(self, x):
        w = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))  # N x C x 1 x 1
        return x * w


class BottleneckIR(nn.Module):
    """BN -> conv3x3 -> PReLU -> conv3x3(stride) -> BN [-> SE], plus a shortcut."""

    def __init__(self, in_channels, depth, stride, use_se=False):
        if in_channels == depth:
            self.shortcut_layer = Subsample(stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, depth, 1, stride=stride, bias=False),
                BatchNorm(depth))
        layers = [
            BatchNorm(in_channels),
            nn.Conv2d(in_channels, depth, 3, stride=1, padding=1, bias=False),
            PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride=stride, padding=1, bias=False),
            BatchNorm(depth),
        ]
        if use_se:
            layers.append(SEModule(depth))
        self.res_layer = nn.Sequential(*layers)

    def execute(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


class IResNet(nn.Module):
    """Input N x 3 x H x W (RGB, 0..255) with H x W = 112x112 or 112x96; output N x embedding_size."""
    feature_channels = 512  # width of the map `features` returns

    def __init__(self, num_layers, input_size=(112, 112), embedding_size=512, use_se=False,
                 dropout=0.5, input_mean=DEFAULT_INPUT_MEAN, input_scale=DEFAULT_INPUT_SCALE):
        if num_layers not in UNITS_PER_STAGE:
            raise ValueError(f"IR depth must be one of {sorted(UNITS_PER_STAGE)}, got {num_layers}")
        height, width = checked_input_size("IR", input_size)
        self.input_norm = InputNorm(input_mean, input_scale)
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False),
            BatchNorm(64),
            PReLU(64))
        units = []
        in_channels = 64
        for depth, num_units in zip(STAGE_CHANNELS, UNITS_PER_STAGE[num_layers]):
            for i in range(num_units):
                units.append(BottleneckIR(in_channels, depth, 2 if i == 0 else 1, use_se))
                in_channels = depth
        self.body = nn.Sequential(*units)
        self.output_layer = nn.Sequential(
            BatchNorm(512),
            nn.Dropout(dropout),
            Flatten(),
            nn.Linear(512 * (height // 16) * (width // 16), embedding_size),
            BatchNorm(embedding_size))
        reference_init(self)

    def features(self, x):
        """The last convolutional map, N x 512 x H/16 x W/16 (what SCF's confidence head reads)."""
        conv, batchnorm, prelu = (self.input_layer[i] for i in range(3))  # BN and PReLU as one step
        return self.body(batchnorm_prelu(batchnorm, prelu, conv(self.input_norm(x))))

    def embedding(self, features):
        return self.output_layer(features)  # N x embedding_size

    def execute(self, x):
        return self.embedding(self.features(x))
