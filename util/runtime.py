"""Pick Jittor's compile target before `jittor` is first imported.

Jittor builds CUDA kernels whenever it finds `nvcc`, even on a machine with no GPU,
where that build is slow and useless. Entry points (scripts, tests) import this
module before anything imports jittor; `nvcc_path=""` then forces the CPU build.
A value the user already exported is left alone.
"""
import os
import shutil
import subprocess


def cuda_gpu_present():
    """True when the NVIDIA driver reports at least one GPU."""
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def configure_jittor_env():
    if "nvcc_path" not in os.environ and not cuda_gpu_present():
        os.environ["nvcc_path"] = ""


configure_jittor_env()
