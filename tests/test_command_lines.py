"""Every command line: one flag name per concept, and a GPU asked for but absent is a clear error everywhere."""
import importlib
import json
import os
import subprocess
import sys

import jittor as jt
import pytest

from conftest import REPO_ROOT
from model.checkpoint import save_checkpoint

SCRIPTS = {name: os.path.join(REPO_ROOT, *name.split("/")) for name in (
    "train_SFace_jittor.py", "train_SCF_jittor.py", "eval_SFace_jittor.py", "benchmark.py",
    "experiments/scf_quality_check.py")}
DATA_TOOLS = os.path.join(REPO_ROOT, "tools", "data_tools.py")


def help_text(*command):
    result = subprocess.run([sys.executable, *command, "--help"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return " ".join(result.stdout.split())


def test_one_flag_name_per_concept():
    """GPU ids --workers_id (default auto), image-decoding threads --num_workers, converter processes --processes."""
    for name, path in SCRIPTS.items():
        text = help_text(path)
        assert "--workers_id" in text and "default: auto" in text.split("--workers_id")[-1].split("--")[0], name
        assert "--num_workers" in text, name
    texts = [help_text(path) for path in SCRIPTS.values()]
    texts += [help_text(DATA_TOOLS, command) for command in ("rec-to-images", "check-list")]
    for text in texts:
        for other_name in ("--threads", "--workers ", "--rec_workers"):
            assert other_name not in text
    assert "--processes" in help_text(DATA_TOOLS, "rec-to-images") and "--processes" in help_text(SCRIPTS["benchmark.py"])
    assert "--num_workers" in help_text(DATA_TOOLS, "check-list")


@pytest.mark.skipif(jt.has_cuda, reason="this machine has a usable GPU")
def test_a_gpu_asked_for_but_absent_stops_every_script(tmp_path):
    model = str(tmp_path / "model.npz")
    save_checkpoint(model, {"config": {"net": "MobileFaceNet", "input_hw": [112, 112], "input_size": "112x112",
                                       "embedding_size": 512}}, {}, {"weight": []})
    arguments = {
        "train_SFace_jittor.py": ["--data_mode", "demo"],
        "train_SCF_jittor.py": ["--checkpoint", model, "--data_mode", "demo"],
        "eval_SFace_jittor.py": ["--checkpoint", model, "--target", "lfw_demo"],
        "benchmark.py": ["--net", "MobileFaceNet", "--batch_size", "2", "--steps", "1", "--warmup", "0"],
        "experiments/scf_quality_check.py": ["--checkpoint", model, "--target", "lfw_demo"],
    }
    for name, args in arguments.items():
        result = subprocess.run([sys.executable, SCRIPTS[name], *args, "--workers_id", "1"], cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode != 0, name
        assert "--workers_id 1 asks for a GPU, but Jittor found no usable CUDA here" in result.stderr, \
            (name, result.stderr[-2000:])


def test_an_output_folder_that_cannot_be_made_stops_training_and_evaluation_before_any_data(tmp_path):
    (tmp_path / "file").write_text("")
    commands = {"train_SFace_jittor.py": ["--data_root", str(tmp_path / "no_data"), "--net", "MobileFaceNet"],
                "eval_SFace_jittor.py": ["--checkpoint", str(tmp_path / "no_model.npz"), "--target", "lfw"]}
    for name, args in commands.items():
        for outdir, message in ((tmp_path / "file", "exists and is not a folder"),
                                ("/proc/sface_run", "cannot create the output folder")):
            result = subprocess.run([sys.executable, SCRIPTS[name], *args, "--outdir", str(outdir), "--workers_id",
                                     "cpu"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
            assert result.returncode == 1 and f"error: {outdir}: {message}" in result.stderr, \
                (name, result.stderr[-2000:])
            assert "Traceback" not in result.stderr


def test_the_benchmark_compares_the_training_step_with_a_plain_jittor_sgd_step_and_jittors_layers():
    result = subprocess.run([sys.executable, SCRIPTS["benchmark.py"], "--net", "MobileFaceNet", "--batch_size", "2",
                             "--num_classes", "10", "--steps", "1", "--warmup", "0", "--workers_id", "cpu",
                             "--compare_reference", "--compare_jittors_layers"], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = {line.strip().split("  ")[0]: line for line in result.stdout.splitlines() if line.startswith("  ")}
    for label in ("train step, SFace head (10 classes)", "reference: jt.optim.SGD step, same model",
                  "train step, Jittor's BatchNorm and PReLU"):
        figures = lines[label].split()
        assert float(figures[figures.index("img/s") - 1]) > 0, label
        assert float(figures[figures.index("peak") + 1]) > float(figures[figures.index("live") + 1]) > 0, label
    for label in ("train step / reference step", "train step / step with Jittor's layers"):
        ratios = lines[label].split()
        assert float(ratios[ratios.index("time") + 1].rstrip("x,")) > 0
        assert float(ratios[ratios.index("memory") + 1].rstrip("x,")) > 0
        assert float(ratios[ratios.index("live") + 2].rstrip("x")) > 0


FAKE_TRAINER = """import json, os, sys
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
with open(os.path.join(os.path.dirname(__file__), "calls.txt"), "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\\n")
os.makedirs(args["--outdir"], exist_ok=True)
accuracy = 0.5 + 0.1 * int(args["--seed"]) + (0.2 if args["--head"] == "SFaceLoss" else 0.0)
with open(os.path.join(args["--outdir"], "metrics.jsonl"), "w") as f:
    for step, value in ((10, accuracy - 0.05), (20, accuracy)):
        f.write(json.dumps({"kind": "eval", "step": step, "accuracy": value, "accuracy_std": 0.01,
                            "tar_at_far": {"0.01": value / 2}}) + "\\n")
"""


def test_the_noise_experiment_checks_its_flags_first_and_names_a_failed_run(tmp_path, capsys, monkeypatch):
    from experiments import noise_experiment
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "imgs.txt").write_text("a.jpg 0\n")
    base = ["--outdir", str(tmp_path / "never"), "--data_root", str(tmp_path / "data")]
    for args, message in ((["--noise", "closed:abc"], "argument --noise: not a number: 'abc'"),
                          (["--noise", "closed:0,open:1.5"], "argument --noise: 'open:1.5': the fraction must be in"),
                          (["--noise", "half:0.2"], "argument --noise: 'half:0.2': the kind must be closed or open"),
                          (["--noise", "closed:nan"], "argument --noise: must be a finite number, got 'nan'"),
                          (["--heads", "SFaceLoss,ArcFase"], "argument --heads: unknown head 'ArcFase'; choose "
                                                              "from SFaceLoss"),
                          (["--heads", ","], "argument --heads: no head in ','"),
                          (["--seeds", "1,x"], "argument --seeds: must be comma-separated integers"),
                          (["--seeds", "1,-2"], "argument --seeds: must be an integer from 0 to 4294967295, got -2"),
                          (["--epochs", "0"], "argument --epochs: must be positive, got 0"),
                          (["--lr=-1"], "argument --lr: must be positive, got -1"),
                          (["--stages", "5,x"], "--stages must be comma-separated integers, got '5,x'"),
                          (["--workers_id", "gpu"], "argument --workers_id: must be 'cpu', 'auto' or comma-separated "
                                                    "GPU ids, got 'gpu'"),
                          (["--data_root", str(tmp_path)], "holds no imgs.txt")):
        with pytest.raises(SystemExit) as stop:
            noise_experiment.main([*base, *args])
        assert stop.value.code == 2 and message in capsys.readouterr().err, args
    assert not (tmp_path / "never").exists()
    (tmp_path / "train_SFace_jittor.py").write_text("import sys\nsys.exit(3)\n")  # a training run that fails
    monkeypatch.setattr(noise_experiment, "REPO_ROOT", str(tmp_path))
    with pytest.raises(SystemExit) as stop:
        noise_experiment.main(["--outdir", str(tmp_path / "runs"), "--data_root", str(tmp_path / "data"),
                               "--heads", "ArcFace", "--noise", "closed:0.2", "--no_report"])
    message = str(stop.value.code)  # every run was tried, each failure named
    assert message.startswith("error: 2 run(s) failed (their messages are above; a re-run retries them):\n"
                              "this run ended with exit status 3 (its messages are above): ")
    assert "train_SFace_jittor.py --data_root" in message and "--label_noise 0.2" in message
    assert f"--outdir {tmp_path / 'runs' / 'ArcFace-closed0.2-seed1'}" in message
    assert f"--outdir {tmp_path / 'runs' / 'ArcFace-closed0.2-seed2'}" in message


def test_the_noise_experiment_runs_its_grid_priority_first_keeps_finished_runs_and_tabulates(tmp_path, monkeypatch):
    from experiments import noise_experiment
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "imgs.txt").write_text("a.jpg 0\n")
    (tmp_path / "train_SFace_jittor.py").write_text(FAKE_TRAINER)
    monkeypatch.setattr(noise_experiment, "REPO_ROOT", str(tmp_path))
    argv = ["--outdir", str(tmp_path / "runs"), "--data_root", str(tmp_path / "data"), "--heads", "CosFace,SFaceLoss",
            "--noise", "closed:0,open:0.2", "--seeds", "1,2", "--no_report"]
    noise_experiment.main(argv)
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    runs = [(c.split("--head ")[1].split()[0], "--label_noise_open" in c, c.split("--seed ")[1].split()[0])
            for c in calls]
    assert runs[:2] == [("SFaceLoss", False, "1"), ("SFaceLoss", False, "2")] and len(runs) == 8  # priority first
    order = noise_experiment.grid(noise_experiment.parse_args(
        ["--data_root", str(tmp_path / "data"), "--heads", "SFaceLoss,ArcFace", "--noise", "closed:0,closed:0.4"]))
    assert order[:4] == [("SFaceLoss", "closed", 0.0, 1), ("ArcFace", "closed", 0.0, 1),  # the heads side by side
                         ("SFaceLoss", "closed", 0.4, 1), ("ArcFace", "closed", 0.4, 1)]
    table = (tmp_path / "runs" / "results.md").read_text()
    assert "| SFaceLoss | 85.00 ± 7.07 / 42.50 ± 3.54 (n=2) | 85.00 ± 7.07 / 42.50 ± 3.54 (n=2) |" in table
    assert "| CosFace | 65.00 ± 7.07 / 32.50 ± 3.54 (n=2) |" in table
    assert (tmp_path / "runs" / "noise_experiment.png").stat().st_size > 10_000
    (tmp_path / "runs" / "SFaceLoss-open0.2-seed2" / "experiment.json").unlink()  # an interrupted run
    noise_experiment.main(argv)
    again = (tmp_path / "calls.txt").read_text().splitlines()[len(calls):]
    assert len(again) == 1 and "--seed 2" in again[0] and "--label_noise_open 0.2" in again[0]


def test_the_noise_experiment_tabulates_each_run_as_it_finishes(tmp_path, monkeypatch):
    from experiments import noise_experiment
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "imgs.txt").write_text("a.jpg 0\n")
    (tmp_path / "train_SFace_jittor.py").write_text(FAKE_TRAINER)
    monkeypatch.setattr(noise_experiment, "REPO_ROOT", str(tmp_path))
    finish_run = noise_experiment.finish_run

    def interrupted_at_seed_2(args, head, kind, fraction, seed, folder):
        if seed == 2:
            raise KeyboardInterrupt  # the grid stopped during its second run
        finish_run(args, head, kind, fraction, seed, folder)
    monkeypatch.setattr(noise_experiment, "finish_run", interrupted_at_seed_2)
    with pytest.raises(KeyboardInterrupt):
        noise_experiment.main(["--outdir", str(tmp_path / "runs"), "--data_root", str(tmp_path / "data"),
                               "--heads", "SFaceLoss", "--noise", "closed:0", "--seeds", "1,2", "--no_report"])
    table = (tmp_path / "runs" / "results.md").read_text()
    assert "| SFaceLoss | 80.00 / 40.00 (n=1) |" in table  # one seed: no spread shown
    assert (tmp_path / "runs" / "noise_experiment.png").is_file()


def test_the_benchmark_checks_its_flags_before_any_work(capsys, tmp_path):
    import benchmark
    for args, message in ((["--batch_size", "0"], "--batch_size must be positive, got 0"),
                          (["--net", "ResNet9000"], "unknown backbone 'ResNet9000'; choose from"),
                          (["--rounds", "0"], "--rounds must be positive, got 0"),
                          (["--steps", "0"], "--steps must be positive, got 0"),
                          (["--warmup", "-1"], "--warmup must be >= 0, got -1"),
                          (["--align_photos", "-1"], "--align_photos must be >= 0, got -1"),
                          (["--data_root", str(tmp_path)], f"{tmp_path / 'imgs.txt'}: no such file"),
                          (["--rec", str(tmp_path)], f"--rec {tmp_path}: holds no train.rec or train.idx")):
        with pytest.raises(SystemExit) as stop:
            benchmark.main(["--net", "MobileFaceNet", "--workers_id", "cpu", *args])
        assert stop.value.code == 2 and f"error: {message}" in capsys.readouterr().err, args


@pytest.mark.parametrize("script, argv", [
    ("train_SFace_jittor", []), ("train_SCF_jittor", ["--checkpoint", "x.npz"]), ("benchmark", []),
    ("eval_SFace_jittor", ["--checkpoint", "x.npz", "--target", "lfw"]), ("tools.angle_report", ["--checkpoint", "x"]),
    ("experiments.scf_quality_check", ["--checkpoint", "x.npz", "--target", "lfw"])])
def test_every_script_checks_workers_id_where_it_is_typed(script, argv, capsys):
    """Before any file is read: a usage error naming the flag, not a traceback once the device is chosen."""
    with pytest.raises(SystemExit) as stop:
        importlib.import_module(script).main([*argv, "--workers_id", "gpu0"])
    assert stop.value.code == 2
    assert "argument --workers_id: must be 'cpu', 'auto' or comma-separated GPU ids, got 'gpu0'" in \
        capsys.readouterr().err


def test_the_benchmark_times_aligning_photos(capsys):
    """The align data job: synthetic photos made, each face found and aligned, seconds per batch-sized share."""
    import benchmark
    benchmark.main(["--net", "MobileFaceNet", "--workers_id", "cpu", "--measure", "align", "--align_photos", "3",
                    "--processes", "1", "--batch_size", "3"])
    line = [row for row in capsys.readouterr().out.splitlines() if row.startswith(benchmark.RESULT)][-1]
    assert json.loads(line[len(benchmark.RESULT):])["seconds"] > 0
