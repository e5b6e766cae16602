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


def momentum_buffers(optimizer):
    return [v.numpy() for group in optimizer.param_groups for v in group["values"]]


def load_momentum_buffers(optimizer, arrays, source):
    buffers = [v for group in optimizer.param_groups for v in group["values"]]
    if len(arrays) != len(buffers):
        raise CheckpointError(f"{source}: {len(arrays)} momentum buffers, this model's optimizer has {len(buffers)}")
    for i, (buffer, value) in enumerate(zip(buffers, arrays)):
        if tuple(buffer.shape) != tuple(value.shape):
            raise CheckpointError(f"{source}: momentum buffer {i} has shape {tuple(value.shape)}, expected {tuple(buffer.shape)}")
        buffer.assign(np.asarray(value, np.float32))
