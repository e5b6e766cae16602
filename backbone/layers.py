"""Layers and initialisation shared by the backbones and heads."""
import math

import jittor as jt
from jittor import nn

# Pixels arrive as RGB floats in 0..255 and are normalised inside the network, so a
# checkpoint carries its own input convention. InsightFace's (x - 127.5) / 128 is the
# default; the official SFace code used (x - 127.5) * 0.078125 (docs/training.md).
DEFAULT_INPUT_MEAN = 127.5
DEFAULT_INPUT_SCALE = 1.0 / 128.0


def checked_input_size(network, input_size):
    """(height, width) of a network's input; each of the four stride-2 stages halves it, so both must divide by 16."""
    height, width = input_size
    if height <= 0 or width <= 0 or height % 16 or width % 16:
        raise ValueError(f"{network} takes an input size whose sides are each a positive multiple of 16 (112x112, "
                         f"112x96, ...), got {height}x{width}")
    return height, width


class InputNorm(nn.Module):
    def __init__(self, mean, scale):
        self.mean = float(mean)
        self.scale = float(scale)

    def execute(self, x):
        return (x - self.mean) * self.scale


class Flatten(nn.Module):
    def execute(self, x):
        return x.reshape(x.shape[0], -1)


def xavier_normal_out(shape, gain=2.0):
    """Gaussian with std = gain * sqrt(2 / fan_out), fan_out = shape[0] * receptive field.

    The reference's initialisation for every weight that is not a BatchNorm or PReLU one.
    """
    fan_out = shape[0] * math.prod(shape[2:])
    return jt.init.gauss(tuple(shape), "float32", 0.0, gain * math.sqrt(2.0 / fan_out))


def reference_init(module):
    """Re-initialise `module` in place the way the official SFace code does."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm):
            if isinstance(m.weight, jt.Var):
                m.weight.assign(jt.ones(m.weight.shape))
                m.bias.assign(jt.zeros(m.bias.shape))
        elif isinstance(m, nn.PReLU):
            m.weight.assign(jt.ones(m.weight.shape))
        elif isinstance(getattr(m, "weight", None), jt.Var) and m.weight.ndim > 1:
            m.weight.assign(xavier_normal_out(m.weight.shape))
            if getattr(m, "bias", None) is not None:
                m.bias.assign(jt.zeros(m.bias.shape))


def is_running_stat(name):
    return name.endswith(("running_mean", "running_var"))


def learnable_parameters(module):
    """What an optimiser updates: every parameter but BatchNorm running statistics.

    Chosen by name, not by `is_stop_grad()`, which `Module.eval()` sets on everything.
    """
    return [p for name, p in module.state_dict().items() if not is_running_stat(name)]


def count_parameters(module):
    return sum(p.numel() for p in learnable_parameters(module))
