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

from backbone import build_backbone  # noqa: E402
from head import build_head  # noqa: E402
from util.config import DATA_MODES  # noqa: E402
from util.optim import SGD  # noqa: E402


def check_arithmetic():
    if int(np.__version__.split(".")[0]) >= 2:
        sys.exit(f"numpy {np.__version__} is installed; Jittor 1.3.11 computes wrong results with numpy 2")
    x = np.arange(6, dtype=np.float32)
    if not np.array_equal((jt.array(x) * 2).numpy(), x * 2):
        sys.exit("Jittor's arithmetic is wrong in this environment (jt.array(x) * 2 != 2 x)")


def warm_demo_kernels():
    demo = DATA_MODES["demo"]
    batch = demo["batch_size"]
    backbone = build_backbone(demo["net"])
    head = build_head("SFaceLoss", 512, 10)
    optimizer = SGD({"backbone": backbone, "head": head}, 0.01, 0.9, 5e-4)
    images = jt.array(np.random.default_rng(0).uniform(0, 255, (batch, 3, 112, 112)).astype(np.float32))
    labels = jt.array(np.arange(batch) % 10)
    backbone.train()
    optimizer.step(head(backbone(images), labels).loss)
    backbone.eval()
    with jt.no_grad():
        backbone(images).sync()


if __name__ == "__main__":
    start = time.time()
    check_arithmetic()
    warm_demo_kernels()
    jt.sync_all(True)
    print(f"Jittor {jt.__version__} ready ({'CUDA' if jt.has_cuda else 'CPU'}), kernels warmed in "
          f"{time.time() - start:.0f} s")
