"""SGD and Adam over named parameters, exact under MPI data parallelism.

Each rank calls `step(loss)` with its *share* of the global loss: its part of a batch
mean (the mean over its images times its fraction of the global batch), or, for a sharded
head, its block of the sum over classes. The gradients of replicated parameters are then
summed over the ranks in one all-reduce, which gives every rank the gradient of the global
loss however unevenly the batch was split. Parameters that live on one rank only (a sharded
head's class centres) keep their own gradient.

Update rules (torch's and Jittor's, weight decay added to the gradient):
    SGD   v = momentum * v + (g + wd * p);  p -= lr * v
    Adam  g' = g + wd * p;  m, v = moving averages of g', g'^2;  p -= lr * m^ / (sqrt(v^) + eps)
State (momentum buffers, Adam moments, step count) is named by parameter, e.g.
`backbone/conv.weight/momentum`, so checkpoints do not depend on parameter order.
Learning-rate schedules: `stage_lr` (SFace's recipe) and `step_lr` (SCF's StepLR).
"""
import math

import jittor as jt
import numpy as np
from jittor import nn

from backbone.common import is_running_stat
from util import distributed

from .checkpoint import CheckpointError

GRADIENTS = "gradients (replicated parameters)"  # what the step's all-reduce carries (benchmark report)


def named_parameters(modules):
    """{'<part>/<name>': Var} of what an optimiser updates (not BatchNorm running statistics)."""
    return {f"{part}/{name}": p for part, module in modules.items()
            for name, p in module.state_dict().items() if not is_running_stat(name)}


def batchnorm_parameter_names(modules):
    """Names of BatchNorm weights and biases, chosen by module type (they get no weight decay)."""
    ids = {id(p) for module in modules.values() for m in module.modules() if isinstance(m, nn.BatchNorm)
           for p in (m.weight, m.bias) if isinstance(p, jt.Var)}
    return {name for name, p in named_parameters(modules).items() if id(p) in ids}


class Optimizer:
    BUFFERS = ()

    def __init__(self, modules, lr, weight_decay, local=()):
        """modules: {'backbone': module, 'head': module}; `local`: parameter names held by this rank only."""
        self.lr = lr
        self.modules = modules
        self.params = named_parameters(modules)
        no_decay = batchnorm_parameter_names(modules)
        self.weight_decay = {name: 0.0 if name in no_decay else weight_decay for name in self.params}
        self.local = set(local)
        self.buffers = {name: {key: jt.zeros(p.shape, p.dtype).stop_grad() for key in self.BUFFERS}
                        for name, p in self.params.items()}
        self.steps = 0

    def replicated(self):
        return {name: p for name, p in self.params.items() if name not in self.local}

    def step(self, loss):
        names = list(self.params)
        grads = dict(zip(names, jt.grad(loss, [self.params[n] for n in names])))
        shared = [n for n in names if n not in self.local]
        grads.update(zip(shared, distributed.all_reduce_sum([grads[n] for n in shared], GRADIENTS)))
        self.steps += 1
        for name in names:
            p = self.params[name]
            self.update(p, grads[name].stop_grad() + self.weight_decay[name] * p, self.buffers[name])
        jt.sync(list(self.params.values()) + [b for bs in self.buffers.values() for b in bs.values()])

    def update(self, p, g, buffers):
        raise NotImplementedError

    def state_arrays(self):
        """{'<parameter>/<buffer>': numpy array}."""
        return {f"{name}/{key}": b.numpy() for name, bs in self.buffers.items() for key, b in bs.items()}

    def load_state_arrays(self, arrays, steps, source):
        expected = {f"{name}/{key}": b for name, bs in self.buffers.items() for key, b in bs.items()}
        missing, unexpected = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
        if missing or unexpected:
            raise CheckpointError(f"{source}: optimizer state does not fit this model: missing {missing[:3]}, "
                                  f"unexpected {unexpected[:3]}")
        for key, buffer in expected.items():
            if tuple(arrays[key].shape) != tuple(buffer.shape):
                raise CheckpointError(f"{source}: optimizer state '{key}' has shape {tuple(arrays[key].shape)}, "
                                      f"expected {tuple(buffer.shape)}")
            buffer.assign(np.asarray(arrays[key], np.float32))
        self.steps = steps


class SGD(Optimizer):
    BUFFERS = ("momentum",)

    def __init__(self, modules, lr, momentum, weight_decay, local=()):
        super().__init__(modules, lr, weight_decay, local)
        self.momentum = momentum

    def update(self, p, g, buffers):
        v = buffers["momentum"]
        v.update(self.momentum * v + g)
        p.update(p - self.lr * v)


class Adam(Optimizer):
    BUFFERS = ("exp_avg", "exp_avg_sq")

    def __init__(self, modules, lr, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8, local=()):
        super().__init__(modules, lr, weight_decay, local)
        self.betas, self.eps = betas, eps

    def update(self, p, g, buffers):
        b1, b2 = self.betas
        m, v = buffers["exp_avg"], buffers["exp_avg_sq"]
        m.update(b1 * m + (1 - b1) * g)
        v.update(b2 * v + (1 - b2) * g * g)
        step_size = self.lr * math.sqrt(1 - b2 ** self.steps) / (1 - b1 ** self.steps)
        p.update(p - step_size * m / (jt.sqrt(v) + self.eps * math.sqrt(1 - b2 ** self.steps)))


def stage_lr(cfg, epoch):
    """The learning rate of an epoch: divided by 10 at each listed stage already reached."""
    return cfg["lr"] * 0.1 ** sum(epoch >= s for s in cfg["stage_epochs"])


def step_lr(cfg, epoch):
    """StepLR: the learning rate times gamma every step_size epochs."""
    return cfg["lr"] * cfg["gamma"] ** (epoch // cfg["step_size"])
