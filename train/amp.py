"""Mixed precision (`--amp`): the backbone in float16 through Jittor's auto mixed precision, the loss
head and every weight in float32, and a dynamic loss scale against float16 gradient underflow.

The optimizer multiplies the loss by the scale before differentiating and divides the gradients
by it after; a power of two, so both are exact. A step whose gradients are not finite (the scale
made float16 overflow) changes nothing and halves the scale; after `GROWTH_INTERVAL` good steps in
a row the scale doubles. The scale and that count are part of the resumable state.
"""
from contextlib import nullcontext

import jittor as jt

INITIAL_SCALE = 2.0 ** 16
GROWTH_INTERVAL = 2000
# Jittor's level 5: ops prefer float16 and new arrays are float16; reductions and exp stay float32.
AMP_LEVEL = 5


class LossScale:
    def __init__(self, scale=INITIAL_SCALE, growth_interval=GROWTH_INTERVAL):
        self.scale, self.good_steps, self.growth_interval = float(scale), 0, growth_interval

    def update(self, finite):
        """After a step: halve on overflow (the step was skipped), double after enough good steps."""
        if not finite:
            self.scale, self.good_steps = max(self.scale / 2, 1.0), 0
            return
        self.good_steps += 1
        if self.good_steps == self.growth_interval:
            self.scale, self.good_steps = self.scale * 2, 0

    def state(self):
        return {"scale": self.scale, "good_steps": self.good_steps}

    def load_state(self, state):
        self.scale, self.good_steps = float(state["scale"]), int(state["good_steps"])


def float16_scope(enabled):
    """Where the backbone runs: float16 under --amp, unchanged otherwise."""
    return jt.flag_scope(auto_mixed_precision_level=AMP_LEVEL) if enabled else nullcontext()
