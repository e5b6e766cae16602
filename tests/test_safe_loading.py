"""No checkpoint or weight file runs code when a script loads it, and official checkpoints still load exactly.

Each crafted file carries a pickle whose `__reduce__` opens a marker file for writing: plain
unpickling (what these paths did through jt.load and pickle.load) creates the marker; the
scripts must refuse the file by name, without a traceback, and never create it.
"""
import hashlib
import os
import pickle
import subprocess
import sys

import jittor as jt
import numpy as np
import pytest

from backbone import build_backbone
from conftest import REPO_ROOT
from interop.torch_pickle import LEGACY_MAGIC
from train.checkpoint import OFFICIAL_JITTOR_INPUT_NORM, load_checkpoint
from train.model import load_model

TRAIN = os.path.join(REPO_ROOT, "train_SFace_jittor.py")
EVAL = os.path.join(REPO_ROOT, "eval_SFace_jittor.py")
IMPORT = os.path.join(REPO_ROOT, "tools", "import_weights.py")
PKL_CONFIG = {"net": "MobileFaceNet", "input_hw": [112, 112], "embedding_size": 512}


class CreatesMarker:
    """Unpickling it opens `marker` for writing, which creates the file: code run by loading."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def write_jittor_file(path, obj):
    """What jt.save writes: a protocol-4 pickle, its SHA-1, the trailer."""
    body = pickle.dumps(obj, protocol=4)
    path.write_bytes(body + hashlib.sha1(body).digest() + b"HCAJSLHD")


def write_legacy_torch_file(path, sys_info, obj):
    """PyTorch's legacy (non-zip) stream: magic number, protocol, system info, the object, storage keys."""
    with open(path, "wb") as f:
        for part in (LEGACY_MAGIC, 1001, sys_info, obj, []):
            pickle.dump(part, f, protocol=2)


def run(*command, timeout=300):
    return subprocess.run([sys.executable, *command], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def train_command(tmp_path, *extra):
    return (TRAIN, "--data_mode", "demo", "--outdir", str(tmp_path / "run"), "--target", "none", "--max_steps", "1",
            "--batch_size", "8", "--num_workers", "1", "--workers_id", "cpu", *extra)


def test_the_crafted_pickle_runs_code_under_plain_unpickling(tmp_path):
    """What makes the refusals below mean something: plain pickle.loads of the payload creates the marker."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps({"conv.weight": CreatesMarker(marker)}, protocol=4))
    assert marker.exists()


# (the crafted file's name, how it is written, the command line that loads it)
CRAFTED = {
    "--resume_backbone Backbone_X.pkl": (
        "Backbone_X.pkl", lambda path, marker: write_jittor_file(path, {"conv.weight": CreatesMarker(marker)}),
        lambda tmp_path, path: train_command(tmp_path, "--resume_backbone", str(path))),
    "--resume_head Head_X.pkl": (
        "Head_X.pkl", lambda path, marker: write_jittor_file(path, {"weight": CreatesMarker(marker)}),
        lambda tmp_path, path: train_command(tmp_path, "--resume_head", str(path))),
    "eval --checkpoint X.pkl": (
        "X.pkl", lambda path, marker: write_jittor_file(path, {"conv.weight": CreatesMarker(marker)}),
        lambda tmp_path, path: (EVAL, "--checkpoint", str(path), "--net", "MobileFaceNet", "--target", "lfw_demo",
                                "--outdir", str(tmp_path / "eval"), "--workers_id", "cpu")),
    "--resume_backbone X.pth (legacy)": (  # the payload in the state dict
        "X.pth", lambda path, marker: write_legacy_torch_file(path, {"little_endian": True},
                                                              {"conv.weight": CreatesMarker(marker)}),
        lambda tmp_path, path: train_command(tmp_path, "--resume_backbone", str(path))),
    "import_weights pytorch --backbone X.pth (legacy)": (  # the payload in a header part
        "X.pth", lambda path, marker: write_legacy_torch_file(path, CreatesMarker(marker), {}),
        lambda tmp_path, path: (IMPORT, "pytorch", "--net", "MobileFaceNet", "--backbone", str(path),
                                "--out", str(tmp_path / "out.npz"))),
}


@pytest.mark.parametrize("case", CRAFTED)
def test_a_file_that_would_run_code_is_refused_by_name(tmp_path, case):
    name, write, command = CRAFTED[case]
    path, marker = tmp_path / name, tmp_path / "ran"
    write(path, marker)
    result = run(*command(tmp_path, path))
    assert result.returncode != 0, result.stdout[-2000:]
    assert not marker.exists()
    assert f"error: {path}" in result.stderr or f"error: cannot import pytorch weights: {path}" in result.stderr, \
        result.stderr[-2000:]
    assert "it names io.open" in result.stderr and "refused, as loading it could run code" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_official_jittor_checkpoint_loads_exactly_and_starts_training(tmp_path):
    """`jt.save(backbone.state_dict(), path)`, as the official SFace-Jittor code saved its backbones."""
    mean, scale = OFFICIAL_JITTOR_INPUT_NORM
    backbone = build_backbone("MobileFaceNet", input_mean=mean, input_scale=scale)
    backbone.fc1.running_mean.assign(np.full(512, 1000.0, np.float32))  # recognisable after a training step
    path = tmp_path / "Backbone_MobileFaceNet_Epoch_1.pkl"
    jt.save(backbone.state_dict(), str(path))

    loaded = load_model(str(path), PKL_CONFIG)
    backbone.eval()
    images = jt.array(np.random.default_rng(0).uniform(0, 255, (2, 3, 112, 112)).astype(np.float32))
    assert np.array_equal(loaded.backbone(images).numpy(), backbone(images).numpy())

    result = run(*train_command(tmp_path, "--resume_backbone", str(path)), timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    last = load_checkpoint(str(tmp_path / "run" / "last.npz"))
    assert last["meta"]["progress"]["step"] == 1
    assert last["meta"]["config"]["input_norm"] == OFFICIAL_JITTOR_INPUT_NORM
    # One step moves a running mean by 10 % of the way to the batch's mean (Jittor's BatchNorm momentum
    # 0.1): from 1000 it stays far above anything a freshly initialised model's could be.
    assert (last["backbone"]["fc1.running_mean"] > 500).all()
