"""The CUDA build, proven on the CPU: Jittor's CUDA core and its cuBLAS, cuDNN, cuRAND and CUB externs
compile with this machine's CUDA toolkit and install/jittor-1.3.11-cuda.patch (install/jittor_cuda.py
prove-build, in a Jittor home of its own). Runs wherever a CUDA toolkit is found; about 7 minutes on
2 cores the first time, seconds once its objects are cached.
"""
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

TOOL = os.path.join(REPO_ROOT, "install", "jittor_cuda.py")


def tool(*args):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, timeout=3600)


def test_patch_is_applied_and_reapplying_changes_nothing():
    first, second = tool("patch"), tool("patch")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "already applied" in second.stdout


def test_cuda_core_and_externs_build_with_the_patch():
    if tool("find").returncode:
        pytest.skip("no CUDA toolkit on this machine: the CUDA build cannot be proven here")
    proof = tool("prove-build")
    assert proof.returncode == 0, proof.stdout + proof.stderr
    for part in ("CUDA core", "cublas extern", "cudnn extern", "curand extern", "cub extern", "cccl_probe.cu"):
        assert any(part in line and line.rstrip().endswith("built") for line in proof.stdout.splitlines()), proof.stdout
