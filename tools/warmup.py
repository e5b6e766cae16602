#!/usr/bin/env python3
"""Compile Jittor and the demo's kernels once (setup.sh runs this), and check its arithmetic.

Jittor compiles its core on first import and each new kernel on first use; doing it here
keeps that wait out of the first training run.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import util.runtime  # noqa: E402,F401

import jittor as jt  # noqa: E402
import numpy as np  # noqa: E402

from train.config import SFACE, configure  # noqa: E402
from train.model import build_model  # noqa: E402
from train.steps import sface_step  # noqa: E402


def check_arithmetic():
    if int(np.__version__.split(".")[0]) >= 2:
        sys.exit(f"numpy {np.__version__} is installed; Jittor 1.3.11 computes wrong results with numpy 2")
    x = np.arange(6, dtype=np.float32)
    if not np.array_equal((jt.array(x) * 2).numpy(), x * 2):
        sys.exit("Jittor's arithmetic is wrong in this environment (jt.array(x) * 2 != 2 x)")


def warm_demo_kernels():
    """One training step and one embedding pass of the demo's model, on random images of 10 classes."""
    cfg, _ = configure(SFACE, ["--data_mode", "demo", "--workers_id", "cpu"])
    model = build_model(cfg, 10)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (cfg["batch_size"], 3, *cfg["input_hw"])).astype(np.float32)
    model.backbone.train()
    sface_step(model, cfg["seed"], images, np.arange(cfg["batch_size"]) % 10, 0)
    model.backbone.eval()
    with jt.no_grad():
        model.backbone(jt.array(images)).sync()


if __name__ == "__main__":
    start = time.time()
    check_arithmetic()
    warm_demo_kernels()
    jt.sync_all(True)
    print(f"Jittor {jt.__version__} ready ({'CUDA' if jt.has_cuda else 'CPU'}), kernels warmed in "
          f"{time.time() - start:.0f} s")
