"""The CUDA build, proven on the CPU: Jittor's CUDA core and its cuBLAS, cuDNN, cuRAND and CUB externs
compile with this machine's CUDA toolkit and install/jittor-1.3.11-cuda.patch (install/jittor_cuda.py
prove-build, in a Jittor home of its own). Runs wherever a CUDA toolkit is found; about 7 minutes on
2 cores the first time, seconds once its objects are cached.
"""
import json
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


def test_recorded_cuda_settings_are_exported_and_a_users_value_wins(tmp_path, monkeypatch, capsys):
    from util.runtime import apply_cuda_settings
    settings = tmp_path / "cuda.json"
    settings.write_text(json.dumps({"cudnn": None, "env": {"nvcc_path": "/opt/cuda-home/bin/nvcc", "use_cutt": "0",
                                                           "conv_opt": "1"}}))
    monkeypatch.delenv("nvcc_path", raising=False)
    monkeypatch.delenv("conv_opt", raising=False)
    monkeypatch.setenv("use_cutt", "1")
    apply_cuda_settings(str(settings))
    assert os.environ["nvcc_path"] == "/opt/cuda-home/bin/nvcc" and os.environ["conv_opt"] == "1"
    assert os.environ["use_cutt"] == "1"
    assert "no cuDNN" in capsys.readouterr().err
    apply_cuda_settings(str(tmp_path / "absent.json"))
    assert "run `bash setup.sh`" in capsys.readouterr().err


def test_one_process_uses_the_gpu_its_workers_id_names(monkeypatch, tmp_path):
    """`--workers_id 1` without mpirun means GPU 1, not the first GPU."""
    import util.runtime as runtime
    for key in ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "CUDA_VISIBLE_DEVICES", "nvcc_path"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SFACE_CUDA", "1")
    monkeypatch.setattr(runtime, "CUDA_SETTINGS", str(tmp_path / "absent.json"))
    monkeypatch.setattr(runtime.apply_cuda_settings, "__defaults__", (str(tmp_path / "absent.json"),))
    runtime.configure_jittor_env(["train_SFace_jittor.py", "--workers_id", "1"])
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
