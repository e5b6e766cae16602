"""install/gpu_check.py on the CPU at small sizes: every check against numpy, the training and embedding
throughput rows, and its mpirun-vs-one-process and resume comparisons on the demo data."""
import importlib.util
import os
import re
import subprocess
import sys

import numpy as np

from conftest import REPO_ROOT


def test_gpu_check_passes_on_the_cpu_and_reports_every_check():
    done = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "install", "gpu_check.py"), "--small"],
                          capture_output=True, text=True, timeout=1800, cwd=REPO_ROOT)
    rows = [line for line in done.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert len(rows) == 13 and all(row.startswith("PASS") for row in rows), "\n".join(rows)
    for part in ("depthwise conv", "batchnorm", "softmax", "argsort", "SFace head", "MobileFaceNet train batch 8",
                 "mpirun -np 2", "resume to 4"):
        assert any(part in row for row in rows), part
    assert re.search(r"^13 passed, 0 failed$", done.stdout, re.M)


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(REPO_ROOT, "install", "gpu_check.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_op_check_fails_on_a_wrong_forward_or_gradient():
    gpu_check = load_gpu_check()
    rng = np.random.default_rng(1)
    x = [rng.standard_normal((4, 6)).astype(np.float32)]
    assert gpu_check.check_op(False, "square", lambda a: a * a, lambda a: a * a, x, True, rng)[0]
    assert not gpu_check.check_op(False, "square", lambda a: a * a, lambda a: a * a + 1e-2, x, True, rng)[0]
    # right forward, wrong gradient: a * a computed as a stop_grad factor times a
    assert not gpu_check.check_op(False, "square", lambda a: a.stop_grad() * a, lambda a: a * a, x, True, rng)[0]


def test_conv_reference_matches_a_loop():
    gpu_check = load_gpu_check()
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((1, 4, 5, 5)), rng.standard_normal((4, 2, 3, 3))
    out = gpu_check.conv_np(x, w, 2, 1, 2)
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    loop = np.zeros((1, 4, 3, 3))
    for o in range(4):
        group = o // 2
        for i in range(3):
            for j in range(3):
                loop[0, o, i, j] = (padded[0, 2 * group:2 * group + 2, 2 * i:2 * i + 3, 2 * j:2 * j + 3] * w[o]).sum()
    assert np.allclose(out, loop)
