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

With a loss scale (`--amp`, train/amp.py), a step whose gradients (summed over the ranks) are not
all finite changes nothing and lowers the scale. Without one the step's graph is left exactly as
it was (so results stay bit-identical), and the training step stops the run on a non-finite loss
instead; checkpoints refuse non-finite weights (train/run_state.py).
Learning-rate schedules: `stage_lr` (SFace's recipe) and `step_lr` (SCF's StepLR).
"""
import math

import jittor as jt
import numpy as np
from jittor import nn

from backbone.layers import is_running_stat
from model.checkpoint import CheckpointError
from util import distributed


REPLICATED_GRADIENTS = "gradients (replicated parameters)"  # what the step's one all-reduce carries


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

    def __init__(self, modules, lr, weight_decay, local=(), loss_scale=None):
        """modules: {'backbone': module, 'head': module}; `local`: parameter names held by this rank only;
        loss_scale: a train.amp.LossScale, or None (no scaling)."""
        self.lr = lr
        self.loss_scale = loss_scale
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
        """Update from this rank's share of the loss; -> False, with nothing changed, when a loss scale is in
        use and a gradient of the global loss is not finite."""
        names = list(self.params)
        scale = self.loss_scale.scale if self.loss_scale else 1.0
        grads = dict(zip(names, jt.grad(loss * scale if scale != 1.0 else loss, [self.params[n] for n in names])))
        shared = [n for n in names if n not in self.local]
        grads.update(zip(shared, distributed.all_reduce_sum([grads[n] for n in shared], REPLICATED_GRADIENTS)))
        grads = {n: self.unscaled(g, self.params[n], scale) for n, g in grads.items()}
        # Under a loss scale every update is a select on this flag: a skipped step changes nothing and
        # the step still runs as one graph (no extra sync).
        finite = self.all_finite(grads) if self.loss_scale else None
        self.steps += 1
        for name in names:
            p = self.params[name]
            self.update(p, grads[name] + self.weight_decay[name] * p, self.buffers[name], select(finite))
        jt.sync(list(self.params.values()) + [b for bs in self.buffers.values() for b in bs.values()]
                + ([finite] if finite is not None else []))
        if finite is None:
            return True
        applied = bool(finite.item())
        self.loss_scale.update(applied)
        self.steps -= not applied
        return applied

    @staticmethod
    def unscaled(grad, param, scale):
        """The gradient as the parameter's dtype (float16 parts of the graph give float16 ones), unscaled."""
        grad = grad.stop_grad()
        if grad.dtype != param.dtype:
            grad = grad.cast(param.dtype)
        return grad / scale if scale != 1.0 else grad

    def all_finite(self, grads):
        """A boolean Var, the same on every rank: whether every gradient element is finite. A NaN or an
        infinity anywhere makes the sum of all gradients non-finite (a finite sum would need values
        near 1e38, a diverged run anyway)."""
        total = sum(g.sum() for g in grads.values())
        if self.local:
            total = distributed.all_reduce_sum([total], "gradient sum for the finite check")[0]
        return jt.isfinite(total)

    def update(self, p, g, buffers, keep):
        """Assign the new parameter and buffers, each through keep(new, old) (see `select`)."""
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

    def __init__(self, modules, lr, momentum, weight_decay, local=(), loss_scale=None):
        super().__init__(modules, lr, weight_decay, local, loss_scale)
        self.momentum = momentum

    def update(self, p, g, buffers, keep):
        v = buffers["momentum"]
        v.update(keep(self.momentum * v + g, v))
        p.update(keep(p - self.lr * v, p))


class Adam(Optimizer):
    BUFFERS = ("exp_avg", "exp_avg_sq")

    def __init__(self, modules, lr, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8, local=()):
        super().__init__(modules, lr, weight_decay, local)
        self.betas, self.eps = betas, eps

    def update(self, p, g, buffers, keep):
        b1, b2 = self.betas
        m, v = buffers["exp_avg"], buffers["exp_avg_sq"]
        m.update(keep(b1 * m + (1 - b1) * g, m))
        v.update(keep(b2 * v + (1 - b2) * g * g, v))
        step_size = self.lr * math.sqrt(1 - b2 ** self.steps) / (1 - b1 ** self.steps)
        p.update(keep(p - step_size * m / (jt.sqrt(v) + self.eps * math.sqrt(1 - b2 ** self.steps)), p))


def select(finite):
    """keep(new, old) for the updates: new where `finite` holds (old otherwise); the new value itself when
    there is no flag, so the graph is the plain update's."""
    if finite is None:
        return lambda new, old: new
    return lambda new, old: jt.ternary(finite, new, old)


def stage_lr(cfg, epoch):
    """The learning rate of an epoch: divided by 10 at each listed stage already reached."""
    return cfg["lr"] * 0.1 ** sum(epoch >= s for s in cfg["stage_epochs"])


def step_lr(cfg, epoch):
    """StepLR: the learning rate times gamma every step_size epochs."""
    return cfg["lr"] * cfg["gamma"] ** (epoch // cfg["step_size"])
