"""End to end: a tiny run logs its angles and label flips; tools/angle_report.py reads its checkpoint, in one
process and in two MPI ranks, and writes the PNG and the figures (checked against numpy)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT
from data.label_noise import NOISE_FILE

REPORT = os.path.join(REPO_ROOT, "tools", "angle_report.py")
MPI_ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")


def train(data_root, outdir, *extra):
    import train_SFace_jittor
    train_SFace_jittor.main(["--data_root", str(data_root), "--outdir", str(outdir), "--net", "MobileFaceNet",
                             "--batch_size", "4", "--lr", "0.05", "--workers_id", "cpu", "--num_workers", "2",
                             "--max_steps", "4", "--log_freq", "2", "--target", "none", *extra])
    with open(os.path.join(outdir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["kind"] == "train"]


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory):
    from conftest import copy_demo_faces
    root = tmp_path_factory.mktemp("angles")
    data_root, _ = copy_demo_faces(root / "data", classes=4, per_class=4)
    return data_root, root / "run", train(data_root, root / "run", "--label_noise", "0.25")


def test_a_run_logs_angles_per_window_and_lists_its_flips(noisy_run):
    data_root, outdir, records = noisy_run
    assert [r["step"] for r in records] == [2, 4]
    for r in records:
        angles = r["angles"]
        for key in ("theta_target", "theta_other"):
            assert angles[key]["count"] == 8 == sum(angles[key]["histogram"]) and len(angles[key]["histogram"]) == 18
            assert 0 <= angles[key]["p5"] <= angles[key]["p50"] <= angles[key]["p95"] <= np.pi
        assert 0 <= angles["unpulled"] <= 1
    lines = (outdir / NOISE_FILE).read_text().splitlines()[1:]
    assert len(lines) == 4  # round(0.25 * 16)
    assert all(line.split()[1] != line.split()[2] for line in lines)
    assert json.loads((outdir / "config.json").read_text())["label_noise"] == 0.25


def test_a_run_resumed_mid_window_logs_the_same_angles_with_the_same_flips(noisy_run, tmp_path):
    import train_SFace_jittor
    from conftest import assert_same_angles
    data_root, _, straight = noisy_run
    train(data_root, tmp_path / "stopped", "--label_noise", "0.25", "--max_steps", "3")  # step 3 waits in the window
    train_SFace_jittor.main(["--resume", str(tmp_path / "stopped"), "--max_steps", "4", "--workers_id", "cpu"])
    with open(tmp_path / "stopped" / "metrics.jsonl") as f:
        resumed = [r for r in map(json.loads, f) if r["kind"] == "train"]
    assert [r["step"] for r in resumed] == [2, 4]
    for a, b in zip(straight, resumed):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert_same_angles(a["angles"], b["angles"])


def test_an_open_set_run_trains_with_outsiders_and_the_report_counts_them_apart(tmp_path):
    """--label_noise_open: outsiders' images (other demo people) in place of a quarter of the listed ones."""
    from conftest import copy_demo_faces
    from data.label_noise import OPEN_NOISE_FILE, OPEN_SET_LIST
    data_root, _ = copy_demo_faces(tmp_path / "data", classes=4, per_class=4)
    outsiders, entries = copy_demo_faces(tmp_path / "outsiders", classes=8, per_class=1)
    os.makedirs(data_root / "open_set")
    for path, label in entries[4:]:  # classes the training list does not hold
        os.rename(outsiders / path, data_root / "open_set" / os.path.basename(path))
    (data_root / OPEN_SET_LIST).write_text("".join(f"open_set/{os.path.basename(p)}\n" for p, _ in entries[4:]))
    train(data_root, tmp_path / "run", "--label_noise_open", "0.25")
    lines = (tmp_path / "run" / OPEN_NOISE_FILE).read_text().splitlines()[1:]
    assert len(lines) == 4 and all(line.split()[2].startswith("open_set/") for line in lines)
    out = str(tmp_path / "report")
    result, printed = report_json([sys.executable, REPORT, "--checkpoint", str(tmp_path / "run"), "--out", out,
                                   "--workers_id", "cpu"], out)
    assert result["outsider_images"] == 4 and result["flipped_images"] == 0 and "theta_y_outsider" in result
    assert result["unpulled"]["outsider"] is not None and "4 outsiders' images" in printed


def test_other_heads_log_angles_without_an_unpulled_share(tiny_face_set, tmp_path):
    data_root, _ = tiny_face_set(classes=4, per_class=4)
    records = train(data_root, tmp_path / "arc", "--head", "ArcFace")
    assert all("theta_target" in r["angles"] and "unpulled" not in r["angles"] for r in records)


def report_json(command, out):
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, env=MPI_ENV, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert os.path.getsize(out + ".png") > 10_000
    with open(out + ".json") as f:
        return json.load(f), result.stdout


def test_angle_report_on_the_runs_checkpoint_in_one_process_and_two_ranks(noisy_run, tmp_path):
    from data.image_list import read_image_list
    from data.label_noise import flip_labels
    from evaluation.angles import percentiles
    from model.loading import load_model
    data_root, outdir, _ = noisy_run
    out = str(tmp_path / "one")
    single, printed = report_json([sys.executable, REPORT, "--checkpoint", str(outdir), "--out", out,
                                   "--workers_id", "cpu", "--batch_size", "5"], out)
    assert single["images"] == 16 and single["flipped_images"] == 4 and single["skipped_images"] == 0
    assert "suggested (a, b)" in printed and "no longer pulled (theta_y < a = 0.87)" in printed
    # Independently: embed with the checkpoint's backbone, cosines to its centres, the run's noisy labels.
    import jittor as jt

    from data.training_sets import open_training_set
    backbone, _, cfg, _ = load_model(str(outdir / "last.npz"))
    dataset = open_training_set(str(data_root))
    images = np.stack([dataset.load(i)[0] for i in range(len(dataset))])
    with jt.no_grad():
        x = backbone(jt.array(images)).numpy()
    w = np.load(str(outdir / "last.npz"))["head/weight"]
    cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
    labels, flipped = flip_labels(read_image_list(str(data_root)).labels, 4, 0.25, cfg["seed"])
    theta_y = np.arccos(np.clip(cos[np.arange(16), labels], -1, 1))
    for key, subset in (("theta_y", theta_y), ("theta_y_flipped", theta_y[flipped])):
        for p, value in percentiles(subset).items():
            assert single[key][p] == pytest.approx(value, abs=1e-4), (key, p)
    assert single["unpulled"]["flipped"] == pytest.approx(np.mean(theta_y[flipped] < 0.87))
    assert single["theta_j_pairs"] == 16 * 3
    # Two ranks split the images and gather them: the same report.
    out2 = str(tmp_path / "two")
    double, _ = report_json(["mpirun", "-np", "2", "--oversubscribe", sys.executable, REPORT, "--checkpoint",
                             str(outdir), "--out", out2, "--workers_id", "cpu", "--batch_size", "5"], out2)
    for key in ("theta_y", "theta_y_flipped", "theta_j"):
        assert double[key] == pytest.approx(single[key], abs=1e-5), key
    assert double["flipped_images"] == 4 and double["images"] == 16


def random_checkpoint(path, data_root, classes):
    """A MobileFaceNet checkpoint with random weights and `classes` SFace centres, trained (it says) on data_root."""
    from backbone import build_backbone
    from model.checkpoint import module_arrays, save_checkpoint
    config = {"net": "MobileFaceNet", "input_hw": [112, 112], "input_size": "112x112", "embedding_size": 128,
              "head": "SFaceLoss", "head_params": {"s": 64.0, "k": 80.0, "a": 0.87, "b": 1.22},
              "data_root": str(data_root), "seed": 0}
    centres = np.random.default_rng(0).normal(size=(classes, 128)).astype(np.float32)
    save_checkpoint(str(path), {"config": config}, module_arrays(build_backbone("MobileFaceNet", (112, 112), 128)),
                    {"weight": centres})
    return str(path)


def angle_report(*args):
    from tools import angle_report as tool
    return tool.main([*map(str, args), "--workers_id", "cpu", "--num_workers", "2"])


@pytest.mark.parametrize("centres", [3, 5])
def test_data_with_another_class_count_than_the_checkpoint_has_centres_is_refused(tiny_face_set, tmp_path, centres):
    from data.text import DataError
    data_root, _ = tiny_face_set(classes=4, per_class=2)
    checkpoint = random_checkpoint(tmp_path / "run" / "last.npz", data_root, classes=centres)
    with pytest.raises(DataError, match=f"{data_root / 'imgs.txt'}: 4 classes, but {checkpoint} has {centres} class "
                                        "centres"):
        angle_report("--checkpoint", checkpoint)


def test_the_report_makes_its_folders_and_refuses_one_it_cannot_make_before_any_work(tiny_face_set, tmp_path):
    from util.files import OutputError
    data_root, _ = tiny_face_set(classes=2, per_class=2)
    checkpoint = random_checkpoint(tmp_path / "run" / "last.npz", data_root, classes=2)
    out = tmp_path / "reports" / "new" / "angles"
    assert angle_report("--checkpoint", checkpoint, "--out", out)["images"] == 4
    assert os.path.getsize(f"{out}.png") > 10_000 and json.loads(open(f"{out}.json").read())["images"] == 4
    (tmp_path / "file").write_text("")
    for out, message in ((tmp_path / "file" / "angles", f"{tmp_path / 'file'}: exists and is not a folder"),
                         ("/proc/sface/angles",
                          "/proc/sface: cannot create the output folder .*; give another --out$")):
        with pytest.raises(OutputError, match=message):  # before the checkpoint, which is not there, is read
            angle_report("--checkpoint", tmp_path / "no_run" / "last.npz", "--out", out)


def test_a_metrics_file_cut_by_a_crash_is_read_to_its_last_whole_line(tiny_face_set, tmp_path, capsys):
    from data.text import DataError
    data_root, _ = tiny_face_set(classes=2, per_class=2)
    checkpoint = random_checkpoint(tmp_path / "run" / "last.npz", data_root, classes=2)
    angles = {key: {"p5": 0.5, "p50": 1.0, "p95": 1.5} for key in ("theta_target", "theta_other")}
    whole = [json.dumps({"kind": "train", "step": step, "angles": angles}) for step in (2, 4)]
    metrics = tmp_path / "run" / "metrics.jsonl"
    metrics.write_text("\n".join(whole) + "\n" + whole[1][:25])  # the crash cut the third record
    assert angle_report("--checkpoint", checkpoint)["images"] == 4
    for middle in (whole[1][:25], "[2, 4]"):
        metrics.write_text(whole[0] + "\n" + middle + "\n" + whole[1] + "\n")
        with pytest.raises(DataError, match=f"{metrics}:2: not a JSON record"):
            angle_report("--checkpoint", checkpoint)
    with pytest.raises(SystemExit) as stop:
        angle_report("--checkpoint", checkpoint, "--metrics", tmp_path / "missing.jsonl")
    assert stop.value.code == 2 and f"--metrics {tmp_path / 'missing.jsonl'}: no such file" in capsys.readouterr().err


def test_a_data_root_without_one_readable_image_is_refused_by_name(tiny_face_set, tmp_path):
    from data.text import DataError
    data_root, entries = tiny_face_set(classes=2, per_class=2)
    for path, _ in entries:
        os.remove(data_root / path)
    checkpoint = random_checkpoint(tmp_path / "run" / "last.npz", data_root, classes=2)
    with pytest.raises(DataError, match=f"{data_root / 'imgs.txt'}: none of the 4 images could be read"):
        angle_report("--checkpoint", checkpoint)
