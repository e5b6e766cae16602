"""Sphere Confidence Face end to end on CPU: a kappa head on a frozen model, resume, SCF scoring."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from backbone import build_backbone_from_config
from conftest import DEMO_ROOT, REPO_ROOT, small_pairs_folder
from data.image_list import read_image_list
from data.text import DataError
from model.checkpoint import load_checkpoint, module_arrays, save_checkpoint
from train.config import SFACE, configure

TRAIN = os.path.join(REPO_ROOT, "train_SFace_jittor.py")
TRAIN_SCF = os.path.join(REPO_ROOT, "train_SCF_jittor.py")
EVAL = os.path.join(REPO_ROOT, "eval_SFace_jittor.py")
QUALITY_CHECK = os.path.join(REPO_ROOT, "experiments", "scf_quality_check.py")


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
    # a resumed run keeps the checkpoint's --max_steps unless given one, as training does
    run(TRAIN_SCF, "--resume", str(resumed), "--workers_id", "cpu", "--max_steps", "0")
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


def weights_checkpoint(path, head=None):
    """An untrained MobileFaceNet (and the given head arrays) stored as weights only, as the importer does."""
    cfg = {"net": "MobileFaceNet", "input_hw": [112, 112], "input_size": "112x112", "embedding_size": 512,
           "input_norm": [127.5, 1 / 128]}
    save_checkpoint(str(path), {"config": cfg}, module_arrays(build_backbone_from_config(cfg)), head or {})
    return str(path)


def test_a_checkpoint_without_class_centres_is_refused(tmp_path, tiny_face_set):
    data_root, _ = tiny_face_set(classes=4, per_class=4)
    path = weights_checkpoint(tmp_path / "weights_only.npz")
    result = subprocess.run([sys.executable, *scf_args(path, data_root, tmp_path / "scf")], cwd=REPO_ROOT,
                            capture_output=True, text=True)
    assert result.returncode != 0 and "weights_only.npz: holds no head with class centres" in result.stderr
    result = subprocess.run([sys.executable, QUALITY_CHECK, "--checkpoint", path, "--target", "unused"],
                            cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and "weights_only.npz: not an SCF checkpoint" in result.stderr


def test_images_of_one_class_are_refused_before_training(tmp_path):
    """As for SFace runs: a confidence learnt on one identity's images, against one centre, says nothing."""
    import train_SCF_jittor
    from conftest import copy_demo_faces
    data_root, _ = copy_demo_faces(tmp_path / "data", classes=1, per_class=8)  # a batch
    path = weights_checkpoint(tmp_path / "one_centre.npz", {"weight": np.ones((1, 512), np.float32)})
    with pytest.raises(DataError, match=f"{data_root / 'imgs.txt'}: images of 1 class \\(1 declared\\)"):
        train_SCF_jittor.main(scf_args(path, data_root, tmp_path / "scf", "--max_steps", "1")[1:])
    assert not os.path.exists(tmp_path / "scf" / "last.npz")


def test_a_resumed_scf_run_takes_the_overridable_options_it_is_given(frozen_model, tmp_path):
    source, data_root = frozen_model
    outdir = tmp_path / "scf"
    run(*scf_args(source, data_root, outdir, "--max_steps", "3"))  # 4 epochs of 2 batches, logged every 2
    run(TRAIN_SCF, "--resume", str(outdir), "--workers_id", "cpu", "--epochs", "3", "--max_steps", "0",
        "--log_freq", "1")
    assert load_checkpoint(str(outdir / "last.npz"))["meta"]["progress"] == {"epoch": 3, "batch": 0, "step": 6}
    with open(outdir / "metrics.jsonl") as f:
        assert [r["step"] for r in map(json.loads, f)] == [2, 4, 5, 6]


def test_each_training_script_resumes_only_its_own_kind_of_checkpoint(frozen_model, tmp_path):
    source, data_root = frozen_model
    run(*scf_args(source, data_root, tmp_path / "scf", "--max_steps", "1"))
    for script, path, message in ((TRAIN_SCF, source, f"{source}: not an SCF checkpoint"),
                                  (TRAIN, tmp_path / "scf" / "last.npz", "an SCF checkpoint; resume it with "
                                                                          "train_SCF_jittor.py")):
        result = subprocess.run([sys.executable, script, "--resume", str(path), "--workers_id", "cpu"],
                                cwd=REPO_ROOT, capture_output=True, text=True)
        assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr, \
            result.stderr[-2000:]


def test_data_mode_demo_means_the_same_in_both_training_scripts(tmp_path):
    """The demo preset sets the data root and the run's size alike in SFace and SCF training."""
    classes = read_image_list(DEMO_ROOT).num_classes
    centres = {"weight": np.random.default_rng(0).standard_normal((classes, 512)).astype(np.float32)}
    source = weights_checkpoint(tmp_path / "demo_model.npz", centres)
    run(TRAIN_SCF, "--checkpoint", source, "--data_mode", "demo", "--max_steps", "1", "--workers_id", "cpu",
        "--outdir", str(tmp_path / "scf"))
    with open(tmp_path / "scf" / "config.json") as f:
        scf = json.load(f)
    sface = configure(SFACE, ["--data_mode", "demo"]).cfg
    shared = ("data_root", "batch_size", "num_workers", "log_freq", "save_freq")
    assert {k: scf[k] for k in shared} == {k: sface[k] for k in shared}
    assert scf["data_root"] == DEMO_ROOT and scf["batch_size"] == 32
