"""SGD as the reference trains: weight decay on every parameter except BatchNorm's."""
import jittor as jt
import numpy as np
from jittor import nn

from backbone.common import learnable_parameters
from util.checkpoint import CheckpointError


def split_batchnorm_parameters(modules):
    """-> (parameters with weight decay, BatchNorm weights and biases), chosen by module type."""
    batchnorm = {id(p) for m in modules for sub in m.modules() if isinstance(sub, nn.BatchNorm)
                 for p in (sub.weight, sub.bias) if isinstance(p, jt.Var)}
    params = [p for m in modules for p in learnable_parameters(m)]
    return [p for p in params if id(p) not in batchnorm], [p for p in params if id(p) in batchnorm]


def build_sgd(modules, lr, momentum, weight_decay):
    decayed, batchnorm = split_batchnorm_parameters(modules)
    return jt.optim.SGD([{"params": decayed, "weight_decay": weight_decay},
                         {"params": batchnorm, "weight_decay": 0.0}], lr=lr, momentum=momentum)


# Jittor keeps per-parameter optimizer buffers in each group under these keys:
# SGD "values" (momentum); Adam "values" and "m" (second and first moments).
STATE_KEYS = ("values", "m")


def state_buffers(optimizer):
    return [v for group in optimizer.param_groups for key in STATE_KEYS for v in group.get(key, [])]


def optimizer_state(optimizer):
    """(buffers as numpy arrays, step count); Adam's bias correction needs the count."""
    return [v.numpy() for v in state_buffers(optimizer)], optimizer.n_step


def load_optimizer_state(optimizer, arrays, steps, source):
    buffers = state_buffers(optimizer)
    if len(arrays) != len(buffers):
        raise CheckpointError(f"{source}: {len(arrays)} optimizer buffers, this model's optimizer has {len(buffers)}")
    for i, (buffer, value) in enumerate(zip(buffers, arrays)):
        if tuple(buffer.shape) != tuple(value.shape):
            raise CheckpointError(f"{source}: optimizer buffer {i} has shape {tuple(value.shape)}, "
                                  f"expected {tuple(buffer.shape)}")
        buffer.assign(np.asarray(value, np.float32))
    optimizer.n_step = steps
