#!/usr/bin/env python3
"""Compile Jittor and the demo's kernels once (setup.sh runs this), and check its arithmetic.

Jittor compiles its core on first import and each new kernel on first use; doing it here
keeps that wait out of the first training run.
"""
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import util.runtime  # noqa: E402,F401

import jittor as jt  # noqa: E402
import numpy as np  # noqa: E402

from util.files import REPO_ROOT  # noqa: E402


def check_arithmetic():
    if int(np.__version__.split(".")[0]) >= 2:
        sys.exit(f"numpy {np.__version__} is installed; Jittor 1.3.11 computes wrong results with numpy 2")
    x = np.arange(6, dtype=np.float32)
    if not np.array_equal((jt.array(x) * 2).numpy(), x * 2):
        sys.exit("Jittor's arithmetic is wrong in this environment (jt.array(x) * 2 != 2 x)")


def warm_demo_kernels():
    """One step of the demo's training run, with its evaluation before and after, in a scratch folder."""
    with tempfile.TemporaryDirectory(prefix="sface_warmup_") as outdir:
        done = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "train_SFace_jittor.py"), "--data_mode", "demo",
                               "--workers_id", "cpu", "--max_steps", "1", "--outdir", outdir],
                              capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"the demo's first training step failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")


if __name__ == "__main__":
    start = time.time()
    check_arithmetic()
    warm_demo_kernels()
    jt.sync_all(True)
    print(f"Jittor {jt.__version__} ready ({'CUDA' if jt.has_cuda else 'CPU'}), kernels warmed in "
          f"{time.time() - start:.0f} s")
