"""The evaluation script: outputs, mpirun sharding, and real published models on real LFW."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from backbone import build_backbone_from_config
from conftest import REPO_ROOT, shared_path, small_pairs_folder
from model.checkpoint import module_arrays, save_checkpoint

EVAL = os.path.join(REPO_ROOT, "eval_SFace_jittor.py")
IMPORT = os.path.join(REPO_ROOT, "tools", "import_weights.py")
MPI_ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")


def random_model_checkpoint(path, embedding_size=64):
    cfg = {"net": "MobileFaceNet", "input_hw": [112, 112], "embedding_size": embedding_size,
           "input_norm": [127.5, 1 / 128]}
    save_checkpoint(str(path), {"config": cfg}, module_arrays(build_backbone_from_config(cfg)), {})
    return str(path)


def run_eval(args, mpi_ranks=0):
    command = [sys.executable, EVAL, *args, "--workers_id", "cpu", "--num_workers", "2"]
    if mpi_ranks:
        command = ["mpirun", "-np", str(mpi_ranks), "--oversubscribe", *command]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, env=MPI_ENV)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_script_writes_table_json_and_roc(tmp_path):
    target = small_pairs_folder(str(tmp_path / "mini"), per_fold=2)
    checkpoint = random_model_checkpoint(tmp_path / "model.npz")
    out = run_eval(["--checkpoint", checkpoint, "--target", target, "--batch_size", "16",
                    "--outdir", str(tmp_path / "out")])
    assert "mini" in out and "accuracy" in out
    with open(tmp_path / "out" / "results.json") as f:
        results = json.load(f)
    report = results["results"][0]
    assert report["target"] == "mini" and report["pairs"] == 40 and len(report["fold_accuracies"]) == 10
    assert results["flip"] is True
    with open(tmp_path / "out" / "roc_mini.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("ranks", [2, 3])
def test_mpirun_evaluation_equals_single_process(tmp_path, ranks):
    # 20 pairs naming an image count that does not divide by 2 or 3 ranks evenly
    target = small_pairs_folder(str(tmp_path / "mini"), per_fold=1)
    checkpoint = random_model_checkpoint(tmp_path / "model.npz")
    for name, count in (("single", 0), ("mpi", ranks)):
        run_eval(["--checkpoint", checkpoint, "--target", target, "--batch_size", "8",
                  "--outdir", str(tmp_path / name)], mpi_ranks=count)
    single, mpi = ({k: v for k, v in json.load(open(tmp_path / n / "results.json"))["results"][0].items()}
                   for n in ("single", "mpi"))
    for key in ("accuracy", "accuracy_std", "threshold", "auc", "eer"):
        assert mpi[key] == pytest.approx(single[key], abs=1e-9), key
    assert mpi["xnorm"] == pytest.approx(single["xnorm"], rel=1e-5)


def test_bad_checkpoint_and_missing_target_are_reported(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"nonsense")
    for args, message in ((["--checkpoint", str(tmp_path / "bad.npz"), "--target", "lfw"], "bad.npz: not a readable"),
                          (["--checkpoint", random_model_checkpoint(tmp_path / "m.npz"), "--target", "lfw",
                            "--eval_root", str(tmp_path)], "verification target 'lfw' not found"),
                          (["--checkpoint", "x.pkl", "--target", "lfw"], "give --net")):
        result = subprocess.run([sys.executable, EVAL, *args, "--workers_id", "cpu"], cwd=REPO_ROOT,
                                capture_output=True, text=True)
        assert result.returncode != 0 and message in result.stderr


def test_a_run_folder_is_scored_by_its_best_checkpoint_else_its_last(tmp_path):
    target = small_pairs_folder(str(tmp_path / "mini"), per_fold=1)
    run = tmp_path / "run"
    os.makedirs(run)
    result = subprocess.run([sys.executable, EVAL, "--checkpoint", str(run), "--target", target, "--workers_id", "cpu"],
                            cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and f"{run}: a folder holding no best.npz or last.npz" in result.stderr
    for name in ("last.npz", "best.npz"):
        random_model_checkpoint(run / name)
        run_eval(["--checkpoint", str(run), "--target", target, "--outdir", str(tmp_path / "out")])
        with open(tmp_path / "out" / "results.json") as f:
            assert json.load(f)["checkpoint"] == str(run / name)


def test_a_pkl_backbone_that_cannot_exist_is_a_usage_error(tmp_path, capsys):
    import eval_SFace_jittor
    for net, size, message in (("ResNet_9000", "112x112", "unknown backbone 'ResNet_9000'"),
                               ("IR_50", "100x100", "IR_50 takes an input size whose sides are each a positive "
                                                    "multiple of 16")):
        with pytest.raises(SystemExit):
            eval_SFace_jittor.parse_args(["--checkpoint", "x.pkl", "--target", "lfw", "--net", net, "--input_size",
                                          size])
        assert message in capsys.readouterr().err


def test_a_target_list_that_names_no_target_is_a_usage_error(tmp_path, capsys):
    import eval_SFace_jittor
    with pytest.raises(SystemExit) as stopped:
        eval_SFace_jittor.main(["--checkpoint", "x.npz", "--target", ",,", "--outdir", str(tmp_path / "out")])
    assert stopped.value.code == 2
    assert "give --target, --ijb or both (--target ',,' names no target)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---- published models on the real LFW (../shared/data) ----

def import_and_evaluate(tmp_path, import_args, target, input_hw):
    model = str(tmp_path / "model.npz")
    subprocess.run([sys.executable, IMPORT, *import_args, "--out", model], cwd=REPO_ROOT, check=True,
                   capture_output=True)
    run_eval(["--checkpoint", model, "--target", target, "--batch_size", "16", "--outdir", str(tmp_path / "out")])
    with open(tmp_path / "out" / "results.json") as f:
        results = json.load(f)
    assert results["config"]["input_hw"] == input_hw
    return results["results"]


def test_lfw_bin_and_pairs_folder_hold_the_same_pairs():
    """Same image bytes in every pair slot and the same labels: any model scores both identically."""
    from data.verification_sets import load_bin, load_pairs_folder
    lfw = shared_path("lfw")
    folder, packed = load_pairs_folder(lfw), load_bin(os.path.join(lfw, "lfw.bin"))
    assert np.array_equal(folder.issame, packed.issame)
    assert all(folder.encoded[i] == packed.encoded[j] for i, j in zip(folder.pairs.ravel(), packed.pairs.ravel()))
    assert len(folder.encoded) == len(packed.encoded) == 7701


def test_insightface_mobilefacenet_scores_its_published_lfw(tmp_path):
    folder = shared_path("insightface-mobilefacenet")
    reports = import_and_evaluate(
        tmp_path, ["insightface", "--params", os.path.join(folder, "model-y1-test2_params.npz"),
                   "--symbol", os.path.join(folder, "model-symbol.json")], shared_path("lfw", "lfw.bin"), [112, 112])
    assert abs(100 * reports[0]["accuracy"] - 99.22) <= 0.15  # an independent ncnn run of these weights


def test_xiaoccer_mobilefacenet_scores_its_lfw_at_112x96(tmp_path):
    reports = import_and_evaluate(
        tmp_path, ["xiaoccer", "--checkpoint", shared_path("xiaoccer-mobilefacenet", "068.ckpt")],
        shared_path("lfw"), [112, 96])
    assert abs(100 * reports[0]["accuracy"] - 98.2) <= 0.3  # an independent run on the same crop
