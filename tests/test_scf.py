"""Sphere Confidence Face end to end on CPU: a kappa head on a frozen model, resume, SCF scoring."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, small_pairs_folder
from util.checkpoint import load_checkpoint

TRAIN = os.path.join(REPO_ROOT, "train_SFace_jittor.py")
TRAIN_SCF = os.path.join(REPO_ROOT, "train_SCF_jittor.py")
EVAL = os.path.join(REPO_ROOT, "eval_SFace_jittor.py")
QUALITY_CHECK = os.path.join(REPO_ROOT, "tools", "scf_quality_check.py")


def run(*command):
    result = subprocess.run([sys.executable, *command], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def scf_args(source, data_root, outdir, *extra):
    return [TRAIN_SCF, "--checkpoint", str(source), "--data_root", str(data_root), "--outdir", str(outdir),
            "--batch_size", "8", "--epochs", "4", "--step_size", "2", "--lr", "1e-3", "--log_freq", "2",
            "--workers_id", "cpu", "--num_workers", "2", *extra]


@pytest.fixture
def frozen_model(tiny_face_set, tmp_path):
    """A briefly trained SFace checkpoint and its training set."""
    data_root, _ = tiny_face_set(classes=4, per_class=4)  # 2 batches of 8 per epoch
    run(TRAIN, "--data_root", str(data_root), "--outdir", str(tmp_path / "sface"), "--net", "MobileFaceNet",
        "--batch_size", "8", "--epochs", "2", "--lr", "0.01", "--target", "none", "--workers_id", "cpu")
    return tmp_path / "sface" / "last.npz", data_root


def test_scf_learns_kappa_and_leaves_the_model_frozen(frozen_model, tmp_path):
    source, data_root = frozen_model
    run(*scf_args(source, data_root, tmp_path / "scf"))
    scf, frozen = load_checkpoint(str(tmp_path / "scf" / "last.npz")), load_checkpoint(str(source))
    for name, value in frozen["backbone"].items():
        np.testing.assert_array_equal(scf["backbone"][name], value, err_msg=name)
    assert scf["meta"]["config"]["scf"] and scf["meta"]["progress"]["step"] == 8
    assert "mlp.4.weight" in scf["head"] and "head/mlp.4.weight/exp_avg" in scf["optimizer"]
    with open(tmp_path / "scf" / "metrics.jsonl") as f:
        losses = [r["loss"] for r in map(json.loads, f)]
    assert len(losses) == 4 and losses[-1] < losses[0]


def test_scf_resumes_exactly(frozen_model, tmp_path):
    source, data_root = frozen_model
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run(*scf_args(source, data_root, straight))
    run(*scf_args(source, data_root, resumed, "--max_steps", "3"))
    run(TRAIN_SCF, "--resume", str(resumed), "--workers_id", "cpu")
    a, b = load_checkpoint(str(straight / "last.npz")), load_checkpoint(str(resumed / "last.npz"))
    assert a["meta"]["progress"] == b["meta"]["progress"]
    for part in ("head", "optimizer"):
        for name, value in a[part].items():
            np.testing.assert_allclose(b[part][name], value, rtol=1e-5, atol=1e-7, err_msg=name)


def test_evaluation_scores_scf_pairs_and_stores_kappa(frozen_model, tmp_path):
    source, data_root = frozen_model
    run(*scf_args(source, data_root, tmp_path / "scf", "--max_steps", "2"))
    target = small_pairs_folder(str(tmp_path / "mini"), per_fold=1)
    out = run(EVAL, "--checkpoint", str(tmp_path / "scf" / "last.npz"), "--target", target, "--workers_id", "cpu",
              "--outdir", str(tmp_path / "eval"), "--save_features")
    assert "mini-scf" in out
    with open(tmp_path / "eval" / "results.json") as f:
        reports = {r["target"]: r for r in json.load(f)["results"]}
    assert set(reports) == {"mini", "mini-scf"} and reports["mini-scf"]["pairs"] == 20
    with np.load(tmp_path / "eval" / "features_mini.npz") as features:
        assert features["kappa"].shape == (len(features["embeddings"]),) and np.all(features["kappa"] > 0)
        np.testing.assert_allclose(np.linalg.norm(features["embeddings"], axis=1), 1.0, rtol=1e-5)
    table = run(QUALITY_CHECK, "--checkpoint", str(tmp_path / "scf" / "last.npz"), "--target", target)
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[1:]}
    assert set(rows) == {"original", "blurred", "occluded", "downscaled"}
    assert all(float(values[0]) > 0 for values in rows.values())


def test_a_checkpoint_without_class_centres_is_refused(tmp_path, tiny_face_set):
    from backbone import build_backbone_from_config
    from util.checkpoint import module_arrays, save_checkpoint
    data_root, _ = tiny_face_set(classes=4, per_class=4)
    cfg = {"net": "MobileFaceNet", "input_hw": [112, 112], "input_size": "112x112", "embedding_size": 512,
           "input_norm": [127.5, 1 / 128]}
    path = str(tmp_path / "weights_only.npz")
    save_checkpoint(path, {"config": cfg}, module_arrays(build_backbone_from_config(cfg)), {})
    result = subprocess.run([sys.executable, *scf_args(path, data_root, tmp_path / "scf")], cwd=REPO_ROOT,
                            capture_output=True, text=True)
    assert result.returncode != 0 and "weights_only.npz: holds no head with class centres" in result.stderr
    result = subprocess.run([sys.executable, QUALITY_CHECK, "--checkpoint", path, "--target", "unused"],
                            cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and "weights_only.npz: not an SCF checkpoint" in result.stderr
